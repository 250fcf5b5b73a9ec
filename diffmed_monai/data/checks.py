"""Validation of cases before training or inference: every failure names the case, the file and the config key."""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence

import nibabel as nib
import numpy as np

__all__ = ["CaseError", "check_case", "check_datalist"]

logger = logging.getLogger("diffmed_monai.data")


class CaseError(ValueError):
    """A case that cannot be used; the message names the case, the file and the config key to change."""


def _resolve(path: str, base_dir: str | None) -> str:
    path = os.fspath(path)
    return path if os.path.isabs(path) or not base_dir else os.path.join(base_dir, path)


def _load(case_id: str, path: str, role: str) -> tuple[nib.Nifti1Image, np.ndarray]:
    if not os.path.isfile(path):
        raise CaseError(f"Case {case_id}: {role} file {path} does not exist (check `dataset_dir` and `datalist`).")
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as err:
        raise CaseError(f"Case {case_id}: {role} file {path} is unreadable or truncated ({err}).") from err
    if not np.all(np.isfinite(image.affine)) or abs(np.linalg.det(image.affine[:3, :3])) < 1e-12:
        raise CaseError(f"Case {case_id}: {role} file {path} has an invalid affine {image.affine.tolist()}.")
    return image, data


def check_case(
    case: dict,
    base_dir: str | None,
    modalities: Sequence[str],
    label_values: Sequence[int] | None = None,
    check_finite: bool = True,
    image_key: str = "image",
    label_key: str = "label",
) -> dict:
    """Check one datalist entry; return ``{"case_id", "shape", "affine"}`` or raise :class:`CaseError`.

    ``case[image_key]`` is a list with one 3D file per modality (in ``modalities`` order) or a single 4D file
    with the modalities on the last axis. All images (and the label, if ``label_key`` is present) must share
    shape and affine; voxels must be finite; label values must be within ``label_values`` when given.
    """
    entry = case.get(image_key)
    case_id = str(case.get("case_id") or (entry[0] if isinstance(entry, list) and entry else entry))
    m = len(modalities)
    if not entry:
        raise CaseError(f"Case {case_id}: no `{image_key}` entry in the datalist.")
    if isinstance(entry, (list, tuple)):
        if len(entry) != m:
            raise CaseError(
                f"Case {case_id}: {len(entry)} image files for {m} modalities {list(modalities)} "
                f"(config key `modalities`)."
            )
        files = [(_resolve(p, base_dir), f"{modality} image") for p, modality in zip(entry, modalities)]
    else:
        files = [(_resolve(entry, base_dir), "4D image")]
    if label_key in case and case[label_key]:
        files.append((_resolve(case[label_key], base_dir), "label"))

    ref_shape, ref_affine, ref_path = None, None, None
    for path, role in files:
        image, data = _load(case_id, path, role)
        shape = data.shape
        if role == "4D image":
            if data.ndim == 3 and m == 1:
                pass
            elif data.ndim != 4 or shape[-1] != m:
                raise CaseError(
                    f"Case {case_id}: {path} has shape {shape}; a single-file case must be 4D with {m} volumes "
                    f"on the last axis (config key `modalities`)."
                )
            else:
                shape = shape[:3]
        elif data.ndim == 4 and shape[-1] == 1:
            shape = shape[:3]
        elif data.ndim != 3:
            raise CaseError(f"Case {case_id}: {role} file {path} is {data.ndim}D {shape}; 3D volumes are required.")
        if ref_shape is None:
            ref_shape, ref_affine, ref_path = shape, image.affine, path
        else:
            if shape != ref_shape:
                raise CaseError(f"Case {case_id}: {path} has shape {shape} but {ref_path} has {ref_shape}.")
            if not np.allclose(image.affine, ref_affine, atol=1e-3):
                raise CaseError(
                    f"Case {case_id}: {path} and {ref_path} have different affines; the modalities must be "
                    f"co-registered on one grid."
                )
        if check_finite and np.issubdtype(data.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(data)))
            if bad:
                raise CaseError(f"Case {case_id}: {role} file {path} contains {bad} NaN/inf voxel(s).")
        if role == "label" and label_values is not None:
            values = set(np.unique(data).tolist())
            extra = sorted(values - {float(v) for v in label_values})
            if extra:
                raise CaseError(
                    f"Case {case_id}: label file {path} has values {extra} outside `label_values`={list(label_values)}."
                )
    return {"case_id": case_id, "shape": ref_shape, "affine": ref_affine}


def check_datalist(
    cases: Sequence[dict],
    base_dir: str | None,
    modalities: Sequence[str],
    label_values: Sequence[int] | None = None,
    check_finite: bool = True,
    strict: bool = True,
) -> tuple[list[dict], list[str]]:
    """Check every case. ``strict``: raise one ``ValueError`` listing all bad cases (training stops before it
    starts). Otherwise return ``(good_cases, error_messages)``."""
    good, errors = [], []
    total = len(cases)
    for i, case in enumerate(cases, 1):
        try:
            check_case(case, base_dir, modalities, label_values, check_finite)
            good.append(case)
        except CaseError as err:
            errors.append(str(err))
            logger.error("%s", err)
        if i % 50 == 0 or i == total:
            logger.info("Checked %d/%d cases (%d refused)", i, total, len(errors))
    if strict and errors:
        raise ValueError(f"{len(errors)} of {total} case(s) cannot be used:\n" + "\n".join(errors))
    return good, errors
