"""Total DiffMedDINOv3 loss: lambda_KD * L_KD + Dice-CE segmentation loss (Eq. 12-13)."""

from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from monai.losses.utils import compute_tp_fp_fn
from monai.networks import one_hot
from torch import nn

from .kd import DiffusionKDLoss

__all__ = ["LOSS_PARTS", "DiffMedLoss", "SoftmaxDiceCELoss"]

#: the parts of the total loss that :class:`DiffMedLoss` reports beside ``loss``
LOSS_PARTS = ("loss_seg", "loss_kd", "loss_mse", "loss_kl")


class SoftmaxDiceCELoss(DiceCELoss):
    """MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)`` (its Dice and cross-entropy, mean reduction), with the
    Dice's reduced axes taken from the input's rank in Python.

    MONAI's ``DiceLoss`` builds them with ``torch.arange(...).tolist()``, a data-dependent operation that breaks a
    ``torch.compile`` graph; everything else is MONAI's: ``one_hot``, ``compute_tp_fp_fn``, the smoothing terms and
    ``DiceCELoss.ce``, in the same order of operations (the same values and gradients, a test).

    Input: logits ``(B, C, H, W)``, ``target`` ``(B, 1, H, W)`` class indices. Output: a scalar.
    """

    def __init__(self, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__(to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() != target.dim() or target.shape[1] != 1 or input.shape[1] < 2:
            raise ValueError(f"Segmentation loss: logits (B, C>=2, ...) and labels (B, 1, ...) expected, got "
                             f"{tuple(input.shape)} and {tuple(target.shape)}.")
        dice = self.dice
        probs = torch.softmax(input, 1)
        tp, fp, fn = compute_tp_fp_fn(probs, one_hot(target, num_classes=input.shape[1]), list(range(2, input.dim())),
                                      1, dice.soft_label)
        fp *= 0.5
        fn *= 0.5
        dice_loss = torch.mean(1 - (2 * tp + dice.smooth_nr) / (2 * (tp + fp + fn) + dice.smooth_dr))
        return self.lambda_dice * dice_loss + self.lambda_ce * self.ce(input, target)


class DiffMedLoss(nn.Module):
    """Total loss ``lambda_kd * L_KD + L_seg`` (Eq. 13) with ``L_seg`` = MONAI ``DiceCELoss`` (Eq. 12, through
    :class:`SoftmaxDiceCELoss`, which ``torch.compile`` traces whole).

    L_KD is averaged over the two denoised features the network produces: ``D(u_t, t)`` at a random t (the DDPM
    objective) and ``D(u0, seg_timestep)`` (the deterministic feature the decoder consumes).

    Forward: ``outputs`` the dict of ``DiffMedDINOv3(..., return_training_outputs=True)``, ``label``
    ``(B, 1, H, W)`` class indices, ``teacher`` ``(B, M, d, h, w)``, optional ``modality_mask`` ``(B, M)``.
    Returns a dict: ``loss`` (total), ``loss_seg``, ``loss_kd``, ``loss_mse``, ``loss_kl``.
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
    ) -> None:
        super().__init__()
        self.lambda_kd = lambda_kd
        self.kd = DiffusionKDLoss(num_modalities, teacher_dim, lambda_kl, tau, standardize_teacher, ema_momentum)
        self.seg = SoftmaxDiceCELoss(lambda_dice=lambda_dice, lambda_ce=lambda_ce)

    def forward(
        self,
        outputs: dict[str, torch.Tensor],
        label: torch.Tensor,
        teacher: torch.Tensor,
        modality_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        loss_seg = self.seg(outputs["pred"].float(), label)
        kd = self.kd
        kd.check_shapes(outputs["denoised"], teacher)
        target = kd.standardize(teacher) if kd.standardize_teacher else teacher.float()  # once per batch
        parts = [kd.distance(outputs[key], target, modality_mask) for key in ("denoised_noisy", "denoised")]
        loss_kd = (parts[0]["kd"] + parts[1]["kd"]) / 2
        return {
            "loss": self.lambda_kd * loss_kd + loss_seg,
            "loss_seg": loss_seg,
            "loss_kd": loss_kd,
            "loss_mse": (parts[0]["mse"] + parts[1]["mse"]) / 2,
            "loss_kl": (parts[0]["kl"] + parts[1]["kl"]) / 2,
        }
