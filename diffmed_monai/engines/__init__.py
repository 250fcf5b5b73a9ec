"""Training engine and checkpoint handlers for DiffMedDINOv3 bundles."""

from .checkpoint import (
    AtomicDiskSaver,
    BestModelCheckpoint,
    CheckedCheckpointLoader,
    CheckpointError,
    ResumableCheckpoint,
    check_checkpoint,
    NonFiniteWeightsError,
    epoch_checkpoints,
    non_finite_tensors,
    set_aside_earlier_run,
)
from .cases import run_cases
from .nan_guard import NonFiniteLossError, StopOnNonFiniteLoss
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
    "NonFiniteLossError",
    "NonFiniteWeightsError",
    "ProgressPlot",
    "ResumableCheckpoint",
    "StopOnNonFiniteLoss",
    "check_checkpoint",
    "epoch_checkpoints",
    "loss_parts",
    "non_finite_tensors",
    "run_cases",
    "sample_modality_mask",
    "set_aside_earlier_run",
]
