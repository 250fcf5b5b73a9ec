"""Diffusion knowledge-distillation loss and the total DiffMedDINOv3 loss."""

from .kd import DiffusionKDLoss
from .total import KD_MODES, LOSS_PARTS, DiffMedLoss, SoftmaxDiceCELoss

__all__ = ["KD_MODES", "LOSS_PARTS", "DiffMedLoss", "DiffusionKDLoss", "SoftmaxDiceCELoss"]
