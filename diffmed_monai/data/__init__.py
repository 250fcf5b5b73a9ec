"""Demo data, dataset scanners and datalists, inference cases, and the case checks that refuse bad input."""

from .cases import CasesFailed, InferenceCases, require_file
from .checks import CaseError, check_case, check_datalist
from .datalist import (
    BRATS2023_MODALITIES,
    BRATS_MODALITIES,
    DATASET_MODALITIES,
    ISLES22_MODALITIES,
    prepare_datalist,
    scan_amos,
    scan_brats,
    scan_folder,
    scan_isles22,
    split_cases,
    write_datalist,
)
from .demo import (
    DEMO_LABELS,
    DEMO_LAYOUTS,
    DEMO_MODALITIES,
    DEMO_TISSUES,
    demo_affine,
    make_demo_case,
    make_demo_data,
    make_demo_dataset,
)

__all__ = [
    "BRATS2023_MODALITIES",
    "BRATS_MODALITIES",
    "CaseError",
    "CasesFailed",
    "DATASET_MODALITIES",
    "DEMO_LABELS",
    "DEMO_LAYOUTS",
    "DEMO_MODALITIES",
    "DEMO_TISSUES",
    "ISLES22_MODALITIES",
    "InferenceCases",
    "check_case",
    "check_datalist",
    "demo_affine",
    "make_demo_case",
    "make_demo_data",
    "make_demo_dataset",
    "prepare_datalist",
    "require_file",
    "scan_amos",
    "scan_brats",
    "scan_folder",
    "scan_isles22",
    "split_cases",
    "write_datalist",
]
