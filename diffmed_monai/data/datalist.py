"""Scan each dataset's official folder layout into MONAI datalists (paths relative to the dataset root)."""

from __future__ import annotations

import glob
import json
import os
import random
import re
from collections.abc import Sequence

__all__ = ["scan_amos", "scan_brats", "scan_folder", "scan_isles22", "split_cases", "write_datalist"]

NIFTI_EXTS = (".nii.gz", ".nii")
Skipped = list[tuple[str, str]]


def _find(folder: str, stem: str) -> str | None:
    for ext in NIFTI_EXTS:
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    return None


def _strip_ext(name: str) -> str:
    for ext in NIFTI_EXTS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def scan_brats(
    root: str, modalities: Sequence[str] = ("t1", "t1ce", "t2", "flair"), require_label: bool = True
) -> tuple[list[dict], Skipped]:
    """BraTS 2018-2021 and FeTS 2021/22: ``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii(.gz)``, also nested in
    ``HGG/`` and ``LGG/`` (2018/2019).

    Returns ``(cases, skipped)``: cases ``{"case_id", "image": [path per modality], "label"}`` with paths relative
    to ``root``, and ``(case_folder, reason)`` for every folder that was skipped.
    """
    cases, skipped = [], []
    folders = sorted(
        {os.path.dirname(p) for p in glob.glob(os.path.join(root, "**", "*_*.nii*"), recursive=True)}
    )
    for folder in folders:
        case_id = os.path.basename(folder)
        images, missing = [], []
        for modality in modalities:
            path = _find(folder, f"{case_id}_{modality}")
            (images.append(path) if path else missing.append(f"{case_id}_{modality}.nii.gz"))
        if missing:
            skipped.append((folder, f"missing modality file(s): {', '.join(missing)}"))
            continue
        label = _find(folder, f"{case_id}_seg")
        if label is None and require_label:
            skipped.append((folder, f"missing label file {case_id}_seg.nii.gz"))
            continue
        case = {"case_id": case_id, "image": [os.path.relpath(p, root) for p in images]}
        if label is not None:
            case["label"] = os.path.relpath(label, root)
        cases.append(case)
    return cases, skipped


def scan_isles22(
    root: str, modalities: Sequence[str] = ("dwi", "adc", "flair"), require_label: bool = True
) -> tuple[list[dict], Skipped]:
    """ISLES 2022 BIDS layout: ``rawdata/sub-strokecaseXXXX/ses-0001/{dwi,anat}/...`` and
    ``derivatives/sub-strokecaseXXXX/ses-0001/..._msk.nii.gz``.

    The released FLAIR is not co-registered with DWI/ADC: register it first, or leave ``flair`` out of
    ``modalities``.
    """
    where = {"dwi": ("dwi", "dwi"), "adc": ("dwi", "adc"), "flair": ("anat", "FLAIR")}
    unknown = [m for m in modalities if m not in where]
    if unknown:
        raise ValueError(f"ISLES 2022 has no modality {unknown} (config key `modalities`); use {sorted(where)}.")
    cases, skipped = [], []
    for subject_dir in sorted(glob.glob(os.path.join(root, "rawdata", "sub-*"))):
        subject = os.path.basename(subject_dir)
        for session_dir in sorted(glob.glob(os.path.join(subject_dir, "ses-*"))):
            session = os.path.basename(session_dir)
            stem = f"{subject}_{session}"
            images, missing = [], []
            for modality in modalities:
                sub, suffix = where[modality]
                path = _find(os.path.join(session_dir, sub), f"{stem}_{suffix}")
                (images.append(path) if path else missing.append(f"{sub}/{stem}_{suffix}.nii.gz"))
            if missing:
                skipped.append((session_dir, f"missing modality file(s): {', '.join(missing)}"))
                continue
            label = _find(os.path.join(root, "derivatives", subject, session), f"{stem}_msk")
            if label is None and require_label:
                skipped.append((session_dir, f"missing label derivatives/{subject}/{session}/{stem}_msk.nii.gz"))
                continue
            case = {"case_id": stem, "image": [os.path.relpath(p, root) for p in images]}
            if label is not None:
                case["label"] = os.path.relpath(label, root)
            cases.append(case)
    return cases, skipped


def scan_amos(root: str, modality: str = "ct", require_label: bool = True) -> tuple[list[dict], Skipped]:
    """AMOS22 ``imagesTr``/``labelsTr`` (and ``imagesVa``/``labelsVa``): ids below 500 are CT, 500 and above MRI."""
    if modality not in ("ct", "mri"):
        raise ValueError(f"AMOS modality must be 'ct' or 'mri' (config key `modalities`), got {modality!r}.")
    cases, skipped = [], []
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesVa", "labelsVa")):
        for path in sorted(glob.glob(os.path.join(root, images_dir, "amos_*.nii*"))):
            case_id = _strip_ext(os.path.basename(path))
            match = re.search(r"(\d+)$", case_id)
            if match is None:
                skipped.append((path, "file name is not amos_<number>"))
                continue
            if (int(match.group(1)) < 500) != (modality == "ct"):
                continue
            label = _find(os.path.join(root, labels_dir), case_id)
            if label is None and require_label:
                skipped.append((path, f"missing label {labels_dir}/{case_id}.nii.gz"))
                continue
            case = {"case_id": case_id, "image": [os.path.relpath(path, root)]}
            if label is not None:
                case["label"] = os.path.relpath(label, root)
            cases.append(case)
    return cases, skipped


def scan_folder(root: str, modalities: Sequence[str]) -> tuple[list[dict], Skipped]:
    """Inference input: one sub-folder per case with ``<anything>_<modality>.nii(.gz)`` files (BraTS naming), and/or
    4D NIfTI files directly in ``root`` (one per case, modalities on the last axis). Labels are not needed."""
    cases, skipped = [], []
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if os.path.isdir(path):
            files = sorted(f for f in os.listdir(path) if f.endswith(NIFTI_EXTS))
            images, missing = [], []
            for modality in modalities:
                hits = [f for f in files if _strip_ext(f).endswith(f"_{modality}")]
                if len(hits) == 1:
                    images.append(os.path.join(entry, hits[0]))
                else:
                    missing.append(f"*_{modality}.nii.gz" + (" (several files)" if hits else ""))
            if missing:
                skipped.append((path, f"case {entry}: missing or ambiguous modality file(s): {', '.join(missing)}"))
                continue
            cases.append({"case_id": entry, "image": images})
        elif entry.endswith(NIFTI_EXTS):
            cases.append({"case_id": _strip_ext(entry), "image": entry})
    return cases, skipped


def split_cases(cases: Sequence[dict], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic shuffled split into ``(train, val)``; at least one validation case when there are two or more."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    order = list(cases)
    random.Random(seed).shuffle(order)
    n_val = int(round(len(order) * val_fraction))
    if val_fraction > 0 and len(order) >= 2:
        n_val = max(n_val, 1)
    return order[n_val:], order[:n_val]


def write_datalist(path: str, train: Sequence[dict], val: Sequence[dict], test: Sequence[dict] | None = None) -> str:
    """Write ``{"training", "validation", "testing"}`` JSON (4-space indent) for ``load_decathlon_datalist``."""
    content = {"training": list(train), "validation": list(val), "testing": list(test or [])}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f, indent=4)
        f.write("\n")
    return path
