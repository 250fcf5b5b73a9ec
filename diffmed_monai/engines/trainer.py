"""Knowledge-distillation training for MONAI's Ignite-based ``SupervisedTrainer``, without a second iteration.

MONAI's ``SupervisedTrainer._iteration`` runs the step (AMP, gradient accumulation, ``torch.compile``, the
iteration events); DiffMedDINOv3 plugs in through its public extension points:

* :class:`DistillationBatch` (``prepare_batch``) moves the batch to the device, runs the frozen teacher and draws
  the modality-dropout mask, and hands both to the inferer as keyword arguments;
* :class:`DistillationInferer` (``inferer``) calls the student network with ``return_training_outputs=True``;
* the loss adapter feeds those outputs to :class:`~diffmed_monai.losses.DiffMedLoss`, and a ``LOSS_COMPLETED``
  handler leaves only the logits as ``pred`` (plus the detached loss parts) in ``engine.state.output``.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Events
from monai.data import MetaTensor
from monai.engines import IterationEvents, PrepareBatch, SupervisedTrainer, default_prepare_batch
from monai.inferers import Inferer
from monai.utils import CommonKeys as Keys
from torch import nn

from ..losses import LOSS_PARTS

__all__ = [
    "DiffMedTrainer",
    "DistillationBatch",
    "DistillationInferer",
    "ModalityMaskBatch",
    "loss_parts",
    "sample_modality_mask",
]


def sample_modality_mask(batch_size: int, num_modalities: int, p_drop: float, device=None, generator=None) -> torch.Tensor:
    """Random ``(B, M)`` presence mask: each modality dropped with ``p_drop``, at least one kept per sample."""
    keep = torch.rand(batch_size, num_modalities, device=device, generator=generator) >= p_drop
    empty = ~keep.any(dim=1)
    if empty.any():
        rescue = torch.randint(num_modalities, (int(empty.sum()),), device=device, generator=generator)
        keep[empty.nonzero(as_tuple=True)[0], rescue] = True
    return keep.float()


class DistillationBatch(PrepareBatch):
    """``prepare_batch`` of the KD step: the batch on the device, the teacher tokens and the modality mask.

    Returns ``(image, label, (), {"teacher_tokens": (B, M, d, h, w), "modality_mask": (B, M)})``, plus
    ``"labelled"`` ``(B,)`` when the batch has it (semi-supervised training: 0 marks a sample with KD only). The
    teacher always sees every modality (no gradient; bf16 autocast on CUDA, and on a CPU when ``cpu_bf16``); while
    :attr:`dropout_active`, each modality of the student input is dropped with ``modality_dropout`` (zeroed, and
    marked absent in the mask); otherwise the mask is all ones. The mask is always a tensor, so a compiled or
    graph-captured step is one graph whether dropout is on or not (the network and the loss take it as data and
    never branch on its values).
    """

    def __init__(self, teacher: nn.Module, modality_dropout: float = 0.0, cpu_bf16: bool = False) -> None:
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"`train#trainer#modality_dropout` must be in [0, 1), got {modality_dropout}.")
        self.teacher = teacher
        self.modality_dropout = modality_dropout
        self.cpu_bf16 = bool(cpu_bf16)
        self.dropout_active = False

    def __call__(self, batchdata: Any, device=None, non_blocking: bool = False, **kwargs: Any):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        plain = image.as_tensor() if isinstance(image, MetaTensor) else image
        device_type = plain.device.type
        bf16 = device_type == "cuda" or (device_type == "cpu" and self.cpu_bf16)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            tokens = self.teacher(plain)
        if self.dropout_active and self.modality_dropout > 0:
            mask = sample_modality_mask(plain.shape[0], plain.shape[1], self.modality_dropout, plain.device)
            image = image * mask[:, :, None, None]
        else:  # every modality present: the same values as no mask, and the same graph as with dropout
            mask = torch.ones(plain.shape[:2], dtype=torch.float32, device=plain.device)
        kwargs = {"teacher_tokens": tokens, "modality_mask": mask}
        if isinstance(batchdata, dict) and "labelled" in batchdata:  # semi-supervised: unlabelled samples get KD only
            kwargs["labelled"] = torch.as_tensor(batchdata["labelled"]).to(device=plain.device)
        return image, label, (), kwargs


class ModalityMaskBatch(PrepareBatch):
    """``prepare_batch`` of inference and evaluation: the batch on the device, plus its modality mask.

    Returns ``(image, label or None, (), {"modality_mask": (B, M)})`` when the batch holds ``mask_key`` (set by
    :class:`~diffmed_monai.transforms.SelectPresentModalitiesd`) and it marks a modality absent, which the inferer
    (:class:`~diffmed_monai.inferers.ForegroundSliceInferer`) passes on to the network; otherwise MONAI's default.
    """

    def __init__(self, mask_key: str = "modality_mask") -> None:
        self.mask_key = mask_key

    def __call__(self, batchdata: Any, device=None, non_blocking: bool = False, **kwargs: Any):
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if not isinstance(batchdata, dict) or self.mask_key not in batchdata:
            return image, label
        mask = torch.as_tensor(batchdata[self.mask_key])
        if bool((mask > 0).all()):  # every modality present: exactly MONAI's default (any network works)
            return image, label
        return image, label, (), {"modality_mask": mask.to(device=device, non_blocking=non_blocking)}


class DistillationInferer(Inferer):
    """Training "inferer": ``network(image, modality_mask, return_training_outputs=True)`` plus the KD targets.

    Returns the network's training dict (``pred``, ``u0``, ``denoised``, ``denoised_noisy``...) with
    ``teacher_tokens`` and ``modality_mask`` added, which is what :class:`DiffMedTrainer`'s loss reads.

    ``cpu_bf16``: on a CPU, the network's forward pass runs under ``torch.autocast("cpu", torch.bfloat16)`` here,
    the region MONAI's ``SupervisedTrainer`` autocasts around its inferer for ``amp`` on CUDA (config key
    ``cpu_bf16``; inputs on another device are not touched). Backward stays outside it and the weights float32.
    """

    def __init__(self, cpu_bf16: bool = False) -> None:
        self.cpu_bf16 = bool(cpu_bf16)

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: nn.Module, teacher_tokens: torch.Tensor, modality_mask=None, labelled=None
    ) -> dict[str, Any]:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16 and inputs.device.type == "cpu"):
            outputs = network(inputs, modality_mask=modality_mask, return_training_outputs=True)
        return {**outputs, "teacher_tokens": teacher_tokens, "modality_mask": modality_mask, "labelled": labelled}


def loss_parts(output: dict | list) -> dict[str, torch.Tensor]:
    """Output transform for stats handlers: ``{loss_seg, loss_kd, loss_mse, loss_kl}`` of a trainer output."""
    first = output[0] if isinstance(output, list) else output
    return {key: first[key] for key in LOSS_PARTS}


class DiffMedTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` that distils a frozen DINOv3 teacher into the DiffMedDINOv3 students.

    Per iteration (MONAI's own): :class:`DistillationBatch` gives teacher tokens ``(B, M, d, h, w)`` and the
    modality mask; :class:`DistillationInferer` runs the students; ``loss_function`` (a
    :class:`~diffmed_monai.losses.DiffMedLoss`) returns the total and its parts; backward, optimiser step, AMP and
    gradient accumulation as in MONAI. After ``LOSS_COMPLETED``, ``engine.state.output`` holds ``image``,
    ``label``, ``pred`` (logits), ``loss`` and the detached parts ``loss_seg``, ``loss_kd``, ``loss_mse``,
    ``loss_kl``; teacher and student features are not kept, so key metrics, post-processing and handlers work
    unchanged. (Between ``FORWARD_COMPLETED`` and ``LOSS_COMPLETED``, ``pred`` is the training dict.)

    Args (beyond ``SupervisedTrainer``'s; ``prepare_batch`` is set here, ``inferer`` defaults to
    :class:`DistillationInferer`, and ``loss_function`` is the total loss returning a dict):
        teacher: the frozen :class:`~diffmed_monai.networks.DINOv3Teacher` (never passed to the optimiser,
            never wrapped in DDP, never checkpointed).
        modality_dropout: probability of dropping each modality from the student input (ShaSpec-style
            missing-modality training); the teacher always sees every modality.
        modality_dropout_warmup_epochs: full-modality epochs before dropout starts.
        cpu_bf16: on a CPU, run the teacher, the forward pass and the loss under bf16 autocast, the region MONAI's
            ``amp`` autocasts on CUDA (``amp`` itself autocasts on CUDA only): the teacher in
            :class:`DistillationBatch`, the network in :class:`DistillationInferer` (built with ``cpu_bf16`` when
            ``inferer`` is not given; a given ``DistillationInferer`` must agree), the loss in this trainer's own
            loss call. Backward and optimiser step stay outside it; every weight (the teacher's too) stays float32.
            Config key ``cpu_bf16``, on where the CPU multiplies bf16 natively
            (:func:`~diffmed_monai.inferers.cpu_has_native_bf16`). Ignored on CUDA.
    """

    def __init__(
        self,
        *args: Any,
        teacher: nn.Module,
        loss_function: nn.Module,
        modality_dropout: float = 0.0,
        modality_dropout_warmup_epochs: int = 1,
        inferer: Inferer | None = None,
        cpu_bf16: bool = False,
        **kwargs: Any,
    ) -> None:
        if any(p.requires_grad for p in teacher.parameters()):
            raise ValueError("The teacher passed to DiffMedTrainer has trainable parameters; it must be frozen.")
        if isinstance(inferer, DistillationInferer) and inferer.cpu_bf16 != bool(cpu_bf16):
            raise ValueError(
                f"`train#inferer#cpu_bf16` ({inferer.cpu_bf16}) and `train#trainer#cpu_bf16` ({bool(cpu_bf16)}) "
                "differ: set both from the config key `cpu_bf16`."
            )
        super().__init__(
            *args,
            loss_function=self._distillation_loss,
            prepare_batch=DistillationBatch(teacher, modality_dropout, cpu_bf16),
            inferer=inferer if inferer is not None else DistillationInferer(cpu_bf16),
            **kwargs,
        )
        self.teacher = teacher.to(self.state.device)
        self.total_loss = loss_function.to(self.state.device)  # its KD statistics are buffers
        self.cpu_bf16 = bool(cpu_bf16) and self.state.device.type == "cpu"
        self.modality_dropout_warmup_epochs = modality_dropout_warmup_epochs
        self.add_event_handler(Events.EPOCH_STARTED, self._update_modality_dropout)
        self.add_event_handler(IterationEvents.LOSS_COMPLETED, self._keep_logits_only)

    def _distillation_loss(self, outputs: dict[str, Any], label: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):  # as MONAI autocasts its loss for amp
            parts = self.total_loss(
                outputs, label, outputs["teacher_tokens"], outputs["modality_mask"], outputs.get("labelled")
            )
        outputs["loss_parts"] = {key: parts[key].detach() for key in LOSS_PARTS}
        return parts["loss"]

    def _update_modality_dropout(self, engine: DiffMedTrainer) -> None:
        engine.prepare_batch.dropout_active = engine.state.epoch > engine.modality_dropout_warmup_epochs

    @staticmethod
    def _keep_logits_only(engine: DiffMedTrainer) -> None:
        output = engine.state.output
        training_outputs = output[Keys.PRED]
        output[Keys.PRED] = training_outputs["pred"]
        output.update(training_outputs["loss_parts"])
