"""Training engine and handlers for DiffMedDINOv3 bundles."""

from .handlers import ResumableCheckpoint, channel_output_transform, latest_checkpoint
from .trainer import DiffMedTrainer, sample_modality_mask

__all__ = [
    "DiffMedTrainer",
    "ResumableCheckpoint",
    "channel_output_transform",
    "latest_checkpoint",
    "sample_modality_mask",
]
