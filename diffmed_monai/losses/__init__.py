"""Diffusion knowledge-distillation loss and the total DiffMedDINOv3 loss."""

from .kd import DiffusionKDLoss
from .total import LOSS_PARTS, DiffMedLoss, SoftmaxDiceCELoss

__all__ = ["LOSS_PARTS", "DiffMedLoss", "DiffusionKDLoss", "SoftmaxDiceCELoss"]
