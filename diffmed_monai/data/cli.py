"""Command-line data tools, importable (``scripts/make_demo_data.py``, ``scripts/prepare_datalist.py`` and the
``diffmed-monai`` console script only wrap them with ``fire``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .datalist import (
    BRATS_MODALITIES,
    ISLES22_MODALITIES,
    _as_modalities,
    scan_amos,
    scan_brats,
    scan_folder,
    scan_isles22,
    split_cases,
    write_datalist,
)
from .demo import make_demo_dataset

__all__ = ["DATASETS", "make_demo_data", "prepare_datalist"]

DEFAULT_MODALITIES = {
    "brats": BRATS_MODALITIES,
    "fets": BRATS_MODALITIES,
    "isles22": ISLES22_MODALITIES,
    "amos": ("ct",),
    "folder": None,
}
DATASETS = tuple(DEFAULT_MODALITIES)


def make_demo_data(
    output_dir: str = "demo_data",
    num_cases: int = 8,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    overwrite: bool = False,
    val_fraction: float = 0.25,
) -> str:
    """Write synthetic BraTS-layout cases into ``output_dir`` and their datalist ``output_dir/datalist.json``.

    ``val_fraction`` of the cases go to ``validation`` (and ``testing``). Returns the datalist path.
    Example: ``python scripts/make_demo_data.py --output_dir demo_data --num_cases 8``.
    """
    make_demo_dataset(output_dir, num_cases=num_cases, shape=shape, spacing=spacing, seed=seed, overwrite=overwrite)
    print(f"Wrote {num_cases} synthetic case(s) to {output_dir}")
    return prepare_datalist(
        "brats", output_dir, output=os.path.join(output_dir, "datalist.json"), val_fraction=val_fraction, seed=seed
    )


def prepare_datalist(
    dataset: str,
    root: str,
    output: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    modalities: Sequence[str] | str | None = None,
    require_label: bool = True,
) -> str:
    """Scan ``root`` in the official layout of ``dataset`` and write a datalist JSON; return its path.

    Args:
        dataset: ``brats`` (BraTS 2018-2021, also HGG/LGG), ``fets`` (same layout), ``isles22``, ``amos`` or
            ``folder`` (inference inputs: one folder per case or one 4D file per case, no labels).
        root: the dataset root; the datalist paths are relative to it (use it as the bundle's ``dataset_dir``).
        output: datalist path (default ``<root>/datalist.json``).
        val_fraction, seed: deterministic train/validation split (:func:`split_cases`); the validation cases are
            also written as ``testing`` so inference and evaluation can run on them. ``folder`` writes every case
            to ``testing`` only.
        modalities: list or comma-separated string; defaults per dataset (BraTS ``t1,t1ce,t2,flair``, ISLES
            ``dwi,adc,flair``); ``amos`` takes ``ct`` or ``mri``; ``folder`` requires it.
        require_label: skip cases without a label (otherwise keep them without ``label``).

    Prints the number of cases, the split, and every skipped case with its reason.
    """
    dataset = str(dataset).lower()
    if dataset not in DEFAULT_MODALITIES:
        raise ValueError(f"Unknown dataset {dataset!r}; use one of {', '.join(DATASETS)}.")
    mods = _as_modalities(modalities) if modalities else DEFAULT_MODALITIES[dataset]
    if dataset in ("brats", "fets"):
        cases, skipped = scan_brats(root, mods, require_label=require_label)
    elif dataset == "isles22":
        cases, skipped = scan_isles22(root, mods, require_label=require_label)
    elif dataset == "amos":
        if len(mods) != 1:
            raise ValueError(f"AMOS takes one modality, 'ct' or 'mri' (--modalities), got {list(mods)}.")
        cases, skipped = scan_amos(root, mods[0], require_label=require_label)
    else:
        if not mods:
            raise ValueError("dataset 'folder' needs --modalities, e.g. --modalities t1,t1ce,t2,flair")
        cases, skipped = scan_folder(root, mods)
    for folder, reason in skipped:
        print(f"skipped {folder}: {reason}")
    if not cases:
        raise ValueError(
            f"No usable case found under {root} for dataset {dataset!r} (modalities {list(mods)}); "
            f"{len(skipped)} skipped."
        )
    output = output or os.path.join(root, "datalist.json")
    if dataset == "folder":
        train, val, test = [], [], cases
        split = f"{len(test)} testing"
    else:
        train, val = split_cases(cases, val_fraction=val_fraction, seed=seed)
        test = val
        split = f"{len(train)} training, {len(val)} validation (also testing)"
    path = write_datalist(output, train, val, test=test)
    print(
        f"{dataset}: {len(cases)} case(s) with modalities {list(mods)}: {split}; {len(skipped)} skipped -> {path} "
        f"(paths relative to {root}: use it as `dataset_dir`)"
    )
    return path
