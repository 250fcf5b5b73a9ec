"""Demo data, dataset scanners and datalists, inference cases, the case checks that refuse bad input, and the
preprocessed slice store training reads from."""

from .cases import CasesFailed, InferenceCases, require_file
from .checks import CaseError, check_case, check_datalist
from .datalist import (
    BRATS2023_MODALITIES,
    BRATS_MODALITIES,
    DATASET_MODALITIES,
    ISLES22_MODALITIES,
    datalist_entries,
    prepare_datalist,
    read_datalist,
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
from .slices import StoreSliceDataset, StoreSlices, StoreVolumeDataset, StoreVolumes, untracked_worker_init
from .store import (
    STORE_FORMAT_VERSION,
    CaseRecord,
    PreprocessSummary,
    SliceStore,
    StoreError,
    default_store_dir,
    describe_transform,
)
from ..utils import case_id_of

__all__ = [
    "BRATS2023_MODALITIES",
    "BRATS_MODALITIES",
    "CaseError",
    "CaseRecord",
    "CasesFailed",
    "DATASET_MODALITIES",
    "DEMO_LABELS",
    "DEMO_LAYOUTS",
    "DEMO_MODALITIES",
    "DEMO_TISSUES",
    "ISLES22_MODALITIES",
    "InferenceCases",
    "PreprocessSummary",
    "STORE_FORMAT_VERSION",
    "SliceStore",
    "StoreError",
    "StoreSliceDataset",
    "StoreSlices",
    "StoreVolumeDataset",
    "StoreVolumes",
    "case_id_of",
    "datalist_entries",
    "read_datalist",
    "check_case",
    "check_datalist",
    "default_store_dir",
    "demo_affine",
    "describe_transform",
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
    "untracked_worker_init",
    "write_datalist",
]
