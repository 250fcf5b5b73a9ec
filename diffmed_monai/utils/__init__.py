"""Small rules every layer of the package shares: parsing user flags, naming and writing files safely."""

from .files import (
    NIFTI_EXTS,
    UnsafeNameError,
    case_file_name,
    case_id_of,
    fsync_dir,
    path_inside,
    strip_nifti_ext,
    write_atomic,
)
from .grid import MIN_AXIAL_SLICES, TOKEN_STRIDE, grid_problems, resampled_shape
from .flags import as_bool, parse_flags

__all__ = [
    "MIN_AXIAL_SLICES",
    "TOKEN_STRIDE",
    "NIFTI_EXTS",
    "UnsafeNameError",
    "as_bool",
    "case_file_name",
    "case_id_of",
    "fsync_dir",
    "grid_problems",
    "parse_flags",
    "path_inside",
    "resampled_shape",
    "strip_nifti_ext",
    "write_atomic",
]
