"""Training engine and checkpoint handlers for DiffMedDINOv3 bundles."""

from .allocator import reuse_freed_memory
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
from .cpu_autocast import autocast_on_cpu, store_frozen_linears_in
from .progress import KDAgreement, ProgressPlot
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
    "KDAgreement",
    "ProgressPlot",
    "ResumableCheckpoint",
    "autocast_on_cpu",
    "check_checkpoint",
    "epoch_checkpoints",
    "loss_parts",
    "reuse_freed_memory",
    "sample_modality_mask",
    "store_frozen_linears_in",
    "write_atomic",
]
