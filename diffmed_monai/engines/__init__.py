"""Training engine and handlers for DiffMedDINOv3 bundles."""

from .checkpoint import ResumableCheckpoint, latest_checkpoint
from .trainer import DiffMedTrainer, DistillationBatch, DistillationInferer, loss_parts, sample_modality_mask

__all__ = [
    "DiffMedTrainer",
    "DistillationBatch",
    "DistillationInferer",
    "ResumableCheckpoint",
    "latest_checkpoint",
    "loss_parts",
    "sample_modality_mask",
]
