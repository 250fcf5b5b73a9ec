"""Diffusion knowledge-distillation loss and the total DiffMedDINOv3 loss."""

from .kd import DiffMedLoss, DiffusionKDLoss

__all__ = ["DiffMedLoss", "DiffusionKDLoss"]
