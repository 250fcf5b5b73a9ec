"""Knowledge-distillation training iteration for MONAI's Ignite-based SupervisedTrainer."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn

__all__ = ["DiffMedTrainer", "sample_modality_mask"]

LOSS_PARTS = ("loss_seg", "loss_kd", "loss_mse", "loss_kl")


def sample_modality_mask(batch_size: int, num_modalities: int, p_drop: float, device=None, generator=None) -> torch.Tensor:
    """Random ``(B, M)`` presence mask: each modality dropped with ``p_drop``, at least one kept per sample."""
    keep = torch.rand(batch_size, num_modalities, device=device, generator=generator) >= p_drop
    empty = ~keep.any(dim=1)
    if empty.any():
        rescue = torch.randint(num_modalities, (int(empty.sum()),), device=device, generator=generator)
        keep[empty.nonzero(as_tuple=True)[0], rescue] = True
    return keep.float()


def _plain(x: Any) -> Any:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class DiffMedTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration distils a frozen DINOv3 teacher into the DiffMedDINOv3 students.

    Per iteration: teacher tokens ``(B, M, d, h, w)`` under ``no_grad`` (bf16 autocast on CUDA); the student
    network with ``return_training_outputs=True`` (autocast when ``amp``); ``loss_function`` a
    :class:`~diffmed_monai.losses.DiffMedLoss`; backward with MONAI's grad scaler when ``amp``; gradient
    accumulation as in MONAI. It fires ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED`` and
    ``MODEL_COMPLETED``, so key metrics, post-processing and handlers work unchanged. ``engine.state.output``
    keeps ``image``, ``label``, ``pred`` (logits), ``loss`` and the detached parts ``loss_seg``, ``loss_kd``,
    ``loss_mse``, ``loss_kl``; teacher and student features are not kept.

    Args (beyond ``SupervisedTrainer``'s):
        teacher: the frozen :class:`~diffmed_monai.networks.DINOv3Teacher` (never passed to the optimiser,
            never wrapped in DDP, never checkpointed).
        modality_dropout: probability of dropping each modality from the student input (ShaSpec-style
            missing-modality training); the teacher always sees every modality.
        modality_dropout_warmup_epochs: full-modality epochs before dropout starts.
    """

    def __init__(
        self,
        *args: Any,
        teacher: nn.Module,
        modality_dropout: float = 0.0,
        modality_dropout_warmup_epochs: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= modality_dropout < 1.0:
            raise ValueError(f"`train#trainer#modality_dropout` must be in [0, 1), got {modality_dropout}.")
        if any(p.requires_grad for p in teacher.parameters()):
            raise ValueError("The teacher passed to DiffMedTrainer has trainable parameters; it must be frozen.")
        student = getattr(self.network, "module", self.network)  # unwrap DDP
        teacher_dim, student_dim = getattr(teacher, "hidden_size", None), getattr(student, "teacher_dim", None)
        if teacher_dim is not None and student_dim is not None and teacher_dim != student_dim:
            raise ValueError(
                f"The teacher ({getattr(teacher, 'arch_name', '?')}) has width {teacher_dim} but the student projects "
                f"to {student_dim}: set `teacher_dim` (network_def#teacher_dim) to {teacher_dim} or change `teacher_arch`."
            )
        self.teacher = teacher.to(self.state.device)
        self.modality_dropout = modality_dropout
        self.modality_dropout_warmup_epochs = modality_dropout_warmup_epochs

    def _iteration(self, engine: DiffMedTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        image, label = _plain(inputs), _plain(targets)
        device_type = image.device.type

        with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
            teacher_tokens = engine.teacher(image)

        mask = None
        if engine.modality_dropout > 0 and engine.state.epoch > engine.modality_dropout_warmup_epochs:
            mask = sample_modality_mask(image.shape[0], image.shape[1], engine.modality_dropout, image.device)
            image = image * mask[:, :, None, None]

        acc = engine.accumulation_steps
        local_iter = engine.state.iteration - 1
        epoch_length = engine.state.epoch_length
        if epoch_length is not None:
            local_iter %= epoch_length
        should_zero_grad = acc <= 1 or local_iter % acc == 0
        should_step = acc <= 1 or (local_iter + 1) % acc == 0 or (local_iter + 1) == epoch_length

        engine.network.train()
        if should_zero_grad:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        use_amp = engine.amp and engine.scaler is not None
        with torch.autocast(device_type, enabled=use_amp, **engine.amp_kwargs):
            outputs = engine.network(image, modality_mask=mask, return_training_outputs=True)
            engine.state.output[Keys.PRED] = outputs["pred"]
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            parts = engine.loss_function(outputs, label, teacher_tokens, mask)
        loss = parts["loss"]
        engine.state.output[Keys.LOSS] = loss
        for key in LOSS_PARTS:
            engine.state.output[key] = parts[key].detach()
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        scaled = loss / acc if acc > 1 else loss
        if use_amp:
            engine.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if should_step:
            if use_amp:
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
