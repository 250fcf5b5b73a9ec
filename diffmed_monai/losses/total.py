"""Total DiffMedDINOv3 loss: lambda_KD * L_KD + Dice-CE segmentation loss (Eq. 12-13)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.losses.utils import compute_tp_fp_fn
from monai.networks import one_hot
from torch import nn

from .kd import DiffusionKDLoss

__all__ = ["KD_MODES", "LOSS_PARTS", "DiffMedLoss", "SoftmaxDiceCELoss"]

#: the parts of the total loss that :class:`DiffMedLoss` reports beside ``loss``
LOSS_PARTS = ("loss_seg", "loss_kd", "loss_mse", "loss_kl")

#: ``kd_mode`` values: the paper's diffusion distillation, or plain token regression of u0 (UNIC / DINO-MX baseline)
KD_MODES = ("diffusion", "regression")


class SoftmaxDiceCELoss(DiceCELoss):
    """MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` (its Dice and cross-entropy, mean reduction), with the
    Dice's reduced axes taken from the input's rank in Python.

    MONAI's ``DiceLoss`` builds them with ``torch.arange(...).tolist()``, a data-dependent operation that breaks a
    ``torch.compile`` graph; everything else is MONAI's: ``one_hot``, ``compute_tp_fp_fn``, the smoothing terms and
    ``DiceCELoss.ce``, in the same order of operations (the same values and gradients, a test).

    Input: logits ``(B, C, H, W)``, ``target`` ``(B, 1, H, W)`` class indices, optional ``weight`` ``(B,)``: the
    weighted mean of each sample's Dice and cross-entropy (semi-supervised training weighs unlabelled samples 0).
    Output: a scalar.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)

    def forward(self, input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if input.dim() != target.dim() or target.shape[1] != 1 or input.shape[1] < 2:
            raise ValueError(f"Segmentation loss: logits (B, C>=2, ...) and labels (B, 1, ...) expected, got "
                             f"{tuple(input.shape)} and {tuple(target.shape)}.")
        dice = self.dice
        probs = torch.softmax(input, 1)
        tp, fp, fn = compute_tp_fp_fn(probs, one_hot(target, num_classes=input.shape[1]), list(range(2, input.dim())),
                                      1, dice.soft_label)
        fp *= 0.5
        fn *= 0.5
        dice_bc = 1 - (2 * tp + dice.smooth_nr) / (2 * (tp + fp + fn) + dice.smooth_dr)  # (B, C)
        if weight is None:
            return self.lambda_dice * torch.mean(dice_bc) + self.lambda_ce * self.ce(input, target)
        ce = self.cross_entropy
        ce_b = F.cross_entropy(input, target[:, 0].long(), weight=ce.weight, reduction="none",
                               label_smoothing=ce.label_smoothing).flatten(1).mean(1)  # (B,)
        per_sample = self.lambda_dice * dice_bc.mean(1) + self.lambda_ce * ce_b
        return (weight * per_sample).sum() / weight.sum().clamp(min=1.0)


class DiffMedLoss(nn.Module):
    """Total loss ``lambda_kd * L_KD + L_seg`` (Eq. 13) with ``L_seg`` = MONAI ``DiceCELoss`` (Eq. 12, through
    :class:`SoftmaxDiceCELoss`, which ``torch.compile`` traces whole).

    ``kd_mode="diffusion"`` (the paper): L_KD is averaged over the two denoised features the network produces,
    ``D(u_t, t)`` at a random t (the DDPM objective) and ``D(u0, seg_timestep)`` (the deterministic feature the
    decoder consumes); ``lambda_feature`` > 0 adds ``lambda_feature * KD(u0, Z)``, a direct regression of the
    projected student feature u0 on the standardised teacher tokens Z, so that the students, not only the
    denoisers, must carry the teacher's information (see ``docs/distillation.md``, "Diagnosis of the KD path").
    ``kd_mode="regression"``: L_KD = KD(u0, Z) only (plain feature distillation, no denoiser in the KD loss; the
    denoiser still maps u0 to the decoder's input, trained by the segmentation loss).

    Semi-supervised training: samples marked unlabelled (``labelled`` 0) contribute the KD loss only; Dice-CE is
    the mean over the labelled samples of the batch (0, still attached to the graph, when there are none).

    Agreement signal: in training mode every call adds, per modality, the mean cosine similarity (over tokens and
    the samples where the modality is present) between the feature KD trains on the decoder's path
    (``D(u0, seg_timestep)``, or u0 in regression mode) and Z; :meth:`agreement` returns and resets the running
    means (read once per validation by :class:`~diffmed_monai.engines.KDAgreement`).

    Forward: ``outputs`` the dict of ``DiffMedDINOv3(..., return_training_outputs=True)`` (optionally with
    ``labelled`` ``(B,)``), ``label`` ``(B, 1, H, W)`` class indices, ``teacher`` ``(B, M, d, h, w)``, optional
    ``modality_mask`` ``(B, M)`` and ``labelled`` ``(B,)`` (1 labelled, 0 unlabelled; overrides
    ``outputs["labelled"]``). Returns a dict: ``loss`` (total), ``loss_seg``, ``loss_kd``, ``loss_mse``,
    ``loss_kl``.
    """

    def __init__(
        self,
        num_modalities: int,
        teacher_dim: int,
        lambda_kd: float = 1.0,
        lambda_kl: float = 1.0,
        tau: float = 1.0,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        standardize_teacher: bool = True,
        ema_momentum: float = 0.01,
        kd_mode: str = "diffusion",
        lambda_feature: float = 0.0,
        modalities: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if kd_mode not in KD_MODES:
            raise ValueError(f"`loss#kd_mode` must be one of {KD_MODES}, got {kd_mode!r}.")
        if lambda_feature < 0 or lambda_kd < 0:
            raise ValueError(f"`lambda_kd` ({lambda_kd}) and `lambda_feature` ({lambda_feature}) must be >= 0.")
        if modalities is not None and len(modalities) != num_modalities:
            raise ValueError(f"`loss#modalities` {list(modalities)} must name the {num_modalities} modalities.")
        self.lambda_kd = lambda_kd
        self.kd_mode = kd_mode
        self.lambda_feature = float(lambda_feature)
        names = modalities if modalities is not None else range(num_modalities)
        self.modalities = [str(m) for m in names]
        self.kd = DiffusionKDLoss(num_modalities, teacher_dim, lambda_kl, tau, standardize_teacher, ema_momentum)
        self.seg = SoftmaxDiceCELoss(lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        # running agreement sums on the loss's device (no host synchronisation in the step), not checkpointed
        self.register_buffer("_cos_sum", torch.zeros(num_modalities, dtype=torch.float64), persistent=False)
        self.register_buffer("_cos_count", torch.zeros(num_modalities, dtype=torch.float64), persistent=False)

    def segmentation(self, pred: torch.Tensor, label: torch.Tensor, labelled: torch.Tensor | None) -> torch.Tensor:
        """Dice-CE over the labelled samples; ``pred`` ``(B, C, H, W)``, ``labelled`` ``(B,)`` or ``None`` (all).

        Unlabelled samples get weight 0 rather than being indexed out, so the shapes stay static (no host
        synchronisation; the step can be captured whole); with no labelled sample the loss is 0, graph kept (DDP).
        """
        if labelled is None:
            return self.seg(pred.float(), label)
        weight = torch.as_tensor(labelled, device=pred.device).reshape(-1).float()
        if weight.numel() != pred.shape[0]:
            raise ValueError(f"`labelled` has {weight.numel()} entries for a batch of {pred.shape[0]} samples.")
        return self.seg(pred.float(), label, weight)

    def forward(
        self,
        outputs: dict[str, torch.Tensor],
        label: torch.Tensor,
        teacher: torch.Tensor,
        modality_mask: torch.Tensor | None = None,
        labelled: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if labelled is None:
            labelled = outputs.get("labelled")
        loss_seg = self.segmentation(outputs["pred"], label, labelled)
        kd = self.kd
        kd.check_shapes(outputs["u0"], teacher)
        target = kd.standardize(teacher) if kd.standardize_teacher else teacher.float()  # once per batch
        if self.kd_mode == "regression":
            parts = [kd.distance(outputs["u0"], target, modality_mask)]
            tracked = outputs["u0"]
        else:
            parts = [kd.distance(outputs[key], target, modality_mask) for key in ("denoised_noisy", "denoised")]
            tracked = outputs["denoised"]
        loss_kd = sum(p["kd"] for p in parts) / len(parts)
        mse = sum(p["mse"] for p in parts) / len(parts)
        kl = sum(p["kl"] for p in parts) / len(parts)
        if self.kd_mode == "diffusion" and self.lambda_feature > 0:
            feature = kd.distance(outputs["u0"], target, modality_mask)
            loss_kd = loss_kd + self.lambda_feature * feature["kd"]
        if self.training:
            self._track_agreement(tracked, target, modality_mask)
        return {
            "loss": self.lambda_kd * loss_kd + loss_seg,
            "loss_seg": loss_seg,
            "loss_kd": loss_kd,
            "loss_mse": mse,
            "loss_kl": kl,
        }

    @torch.no_grad()
    def _track_agreement(self, feature: torch.Tensor, target: torch.Tensor, modality_mask: torch.Tensor | None) -> None:
        cos = F.cosine_similarity(feature.float(), target, dim=2).mean(dim=(2, 3))  # (B, M)
        weight = torch.ones_like(cos) if modality_mask is None else modality_mask.to(cos.dtype)
        self._cos_sum += (cos * weight).sum(0).double()
        self._cos_count += weight.sum(0).double()

    def agreement(self, reset: bool = True) -> dict[str, float]:
        """``{modality: mean cosine}`` between the KD-trained feature and the standardised teacher tokens since
        the last reset (training batches only); modalities never present are left out."""
        sums, counts = self._cos_sum.cpu().tolist(), self._cos_count.cpu().tolist()
        result = {name: s / c for name, s, c in zip(self.modalities, sums, counts) if c > 0}
        if reset:
            self._cos_sum.zero_()
            self._cos_count.zero_()
        return result
