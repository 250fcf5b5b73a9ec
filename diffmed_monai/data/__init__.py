"""Demo data, dataset scanners and datalists, and the case checks that refuse bad input."""

from .checks import CaseError, check_case, check_datalist
from .datalist import (
    BRATS_MODALITIES,
    ISLES22_MODALITIES,
    scan_amos,
    scan_brats,
    scan_folder,
    scan_isles22,
    split_cases,
    write_datalist,
)
from .demo import DEMO_LABELS, DEMO_MODALITIES, DEMO_TISSUES, demo_affine, make_demo_case, make_demo_dataset

__all__ = [
    "BRATS_MODALITIES",
    "CaseError",
    "DEMO_LABELS",
    "DEMO_MODALITIES",
    "DEMO_TISSUES",
    "ISLES22_MODALITIES",
    "check_case",
    "check_datalist",
    "demo_affine",
    "make_demo_case",
    "make_demo_dataset",
    "scan_amos",
    "scan_brats",
    "scan_folder",
    "scan_isles22",
    "split_cases",
    "write_datalist",
]
