"""Training engine and checkpoint handlers for DiffMedDINOv3 bundles."""

from .checkpoint import (
    AtomicDiskSaver,
    BestModelCheckpoint,
    CheckedCheckpointLoader,
    CheckpointError,
    ResumableCheckpoint,
    check_checkpoint,
    epoch_checkpoints,
    write_atomic,
)
from .progress import ProgressPlot
from .trainer import (
    DiffMedTrainer,
    DistillationBatch,
    DistillationInferer,
    ModalityMaskBatch,
    loss_parts,
    sample_modality_mask,
)

__all__ = [
    "AtomicDiskSaver",
    "BestModelCheckpoint",
    "CheckedCheckpointLoader",
    "CheckpointError",
    "DiffMedTrainer",
    "DistillationBatch",
    "DistillationInferer",
    "ModalityMaskBatch",
    "ProgressPlot",
    "ResumableCheckpoint",
    "check_checkpoint",
    "epoch_checkpoints",
    "loss_parts",
    "sample_modality_mask",
    "write_atomic",
]
