"""Demo data, dataset scanners / datalists and input checks."""

from .checks import CaseError, check_case, check_datalist
from .datalist import scan_amos, scan_brats, scan_folder, scan_isles22, split_cases, write_datalist
from .demo import DEMO_MODALITIES, make_demo_case, make_demo_dataset

__all__ = [
    "CaseError",
    "DEMO_MODALITIES",
    "check_case",
    "check_datalist",
    "make_demo_case",
    "make_demo_dataset",
    "scan_amos",
    "scan_brats",
    "scan_folder",
    "scan_isles22",
    "split_cases",
    "write_datalist",
]
