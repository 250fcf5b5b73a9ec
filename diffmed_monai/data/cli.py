"""Command-line data tools (wrapped by ``scripts/`` and the ``diffmed-monai`` console script)."""

from __future__ import annotations

from collections.abc import Sequence

from .datalist import scan_amos, scan_brats, scan_folder, scan_isles22, split_cases, write_datalist
from .demo import make_demo_dataset

__all__ = ["make_demo_data", "prepare_datalist"]

DEFAULT_MODALITIES = {
    "brats": ("t1", "t1ce", "t2", "flair"),
    "fets": ("t1", "t1ce", "t2", "flair"),
    "isles22": ("dwi", "adc", "flair"),
    "amos": ("ct",),
}


def make_demo_data(output_dir: str = "demo_data", num_cases: int = 8, seed: int = 0, overwrite: bool = False) -> str:
    """Write synthetic BraTS-layout cases and a datalist (``datalist.json``, 25 % validation) into ``output_dir``."""
    make_demo_dataset(output_dir, num_cases=num_cases, seed=seed, overwrite=overwrite)
    return prepare_datalist("brats", output_dir, output=f"{output_dir}/datalist.json", val_fraction=0.25, seed=seed)


def prepare_datalist(
    dataset: str,
    root: str,
    output: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    modalities: Sequence[str] | None = None,
    require_label: bool = True,
) -> str:
    """Scan ``root`` in the official layout of ``dataset`` (brats, fets, isles22, amos, folder) and write a datalist.

    Prints how many cases were found and every skipped case with its reason. ``amos`` takes ``modalities`` ['ct']
    or ['mri']; ``folder`` (inference inputs) needs ``modalities``. The validation cases are also written as
    ``testing`` so that inference can run on them. Returns the datalist path.
    """
    dataset = dataset.lower()
    mods = tuple(modalities) if modalities else DEFAULT_MODALITIES.get(dataset)
    if dataset in ("brats", "fets"):
        cases, skipped = scan_brats(root, mods, require_label=require_label)
    elif dataset == "isles22":
        cases, skipped = scan_isles22(root, mods, require_label=require_label)
    elif dataset == "amos":
        cases, skipped = scan_amos(root, mods[0], require_label=require_label)
    elif dataset == "folder":
        if not mods:
            raise ValueError("dataset 'folder' needs --modalities, e.g. \"['t1','t1ce','t2','flair']\".")
        cases, skipped = scan_folder(root, mods)
    else:
        raise ValueError(f"Unknown dataset {dataset!r}; use brats, fets, isles22, amos or folder.")
    for folder, reason in skipped:
        print(f"skipped {folder}: {reason}")
    if not cases:
        raise ValueError(f"No usable case found under {root} for dataset {dataset!r} (modalities {list(mods)}).")
    train, val = split_cases(cases, val_fraction=val_fraction, seed=seed)
    path = write_datalist(output or f"{root}/datalist.json", train, val, test=val)
    print(f"{len(cases)} case(s): {len(train)} training, {len(val)} validation; {len(skipped)} skipped -> {path}")
    return path
