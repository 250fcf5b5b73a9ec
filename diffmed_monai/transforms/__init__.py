"""MONAI transforms of diffmed-monai."""

from .foreground import (
    NETWORK_GRID,
    CropForegroundOnGrid,
    CropForegroundOnGridd,
    is_nonzero,
    pad_to_network,
)
from .io import (
    PREDICTION_DESCRIPTION,
    SaveLabelNiftid,
    case_id_of_item,
    is_own_prediction,
    output_path_for,
    write_nifti_atomic,
)
from .modalities import FillMissingModalitiesd, SelectPresentModalitiesd
from .pictures import PNG_SOFTWARE, SaveCasePNGd, default_png_modalities, is_own_png, lesion_centre
from .postprocess import RelabelSmallComponentsd, relabel_small_components

__all__ = [
    "CropForegroundOnGrid",
    "CropForegroundOnGridd",
    "FillMissingModalitiesd",
    "NETWORK_GRID",
    "PNG_SOFTWARE",
    "PREDICTION_DESCRIPTION",
    "RelabelSmallComponentsd",
    "SaveCasePNGd",
    "SaveLabelNiftid",
    "SelectPresentModalitiesd",
    "case_id_of_item",
    "default_png_modalities",
    "is_nonzero",
    "is_own_png",
    "is_own_prediction",
    "lesion_centre",
    "output_path_for",
    "pad_to_network",
    "relabel_small_components",
    "write_nifti_atomic",
]
