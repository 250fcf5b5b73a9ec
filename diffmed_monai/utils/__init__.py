"""Small rules every layer of the package shares: parsing user flags, naming and writing files safely, the token
grid, shared refusal hints."""

from .files import (
    NIFTI_EXTS,
    UnsafeNameError,
    case_file_name,
    case_id_of,
    fsync_dir,
    path_inside,
    sha256_file,
    strip_nifti_ext,
    write_atomic,
)
from .grid import MIN_AXIAL_SLICES, TOKEN_STRIDE, grid_problems, resampled_shape
from .flags import as_bool, parse_flags
from .messages import ALLOW_MISSING_KEY, missing_modality_hint

__all__ = [
    "ALLOW_MISSING_KEY",
    "MIN_AXIAL_SLICES",
    "TOKEN_STRIDE",
    "NIFTI_EXTS",
    "UnsafeNameError",
    "as_bool",
    "case_file_name",
    "case_id_of",
    "fsync_dir",
    "grid_problems",
    "missing_modality_hint",
    "parse_flags",
    "path_inside",
    "resampled_shape",
    "sha256_file",
    "strip_nifti_ext",
    "write_atomic",
]
