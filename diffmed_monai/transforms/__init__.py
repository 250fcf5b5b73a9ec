"""MONAI transforms of diffmed-monai."""

from .foreground import (
    NETWORK_GRID,
    CropForegroundOnGrid,
    CropForegroundOnGridd,
    is_nonzero,
    pad_to_network,
)
from .io import PREDICTION_DESCRIPTION, SaveLabelNiftid, is_own_prediction, output_path_for, write_nifti_atomic

__all__ = [
    "CropForegroundOnGrid",
    "CropForegroundOnGridd",
    "NETWORK_GRID",
    "PREDICTION_DESCRIPTION",
    "SaveLabelNiftid",
    "is_nonzero",
    "is_own_prediction",
    "output_path_for",
    "pad_to_network",
    "write_nifti_atomic",
]
