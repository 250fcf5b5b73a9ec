"""Validation of cases before training or inference.

Every failure is a :class:`CaseError` whose message names the case id, the offending file and the config key
to change (``dataset_dir``, ``datalist``, ``modalities``, ``label_values``, ``check_finite``,
``allow_missing_modalities``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import nibabel as nib
import numpy as np

from ..utils import UnsafeNameError, case_id_of, grid_problems, missing_modality_hint, resampled_shape

__all__ = ["CaseError", "check_case", "check_datalist"]

logger = logging.getLogger(__name__)

AFFINE_ATOL = 1e-3  # mm; modalities and label of one case must share the affine to this tolerance


class CaseError(ValueError):
    """A case that cannot be used; the message names the case, the file and the config key to change."""


def _resolve(path: str, base_dir: str | None) -> str:
    path = os.fspath(path)
    return path if os.path.isabs(path) or not base_dir else os.path.join(os.fspath(base_dir), path)


def _load(case_id: str, path: str, role: str) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """Load header AND voxels (so a truncated ``.nii.gz`` fails here), check the affine; raise ``CaseError``."""
    if not os.path.isfile(path):
        raise CaseError(
            f"Case {case_id}: {role} file {path} does not exist (check `dataset_dir` and the paths in `datalist`)."
        )
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel ImageFileError, zlib.error, EOFError, gzip.BadGzipFile, struct.error ...
        raise CaseError(
            f"Case {case_id}: {role} file {path} is unreadable or truncated ({type(err).__name__}: {err}); "
            f"re-export or re-download it, or remove the case from `datalist`."
        ) from err
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise CaseError(
            f"Case {case_id}: {role} file {path} has an invalid (non-finite or singular) affine {affine.tolist()}; "
            f"fix its header or remove the case from `datalist`."
        )
    return image, data


def check_case(
    case: dict,
    base_dir: str | None,
    modalities: Sequence[str],
    label_values: Sequence[int] | None = None,
    check_finite: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    require_label: bool = False,
    list_name: str | None = None,
    allow_missing_modalities: bool = False,
    pixdim: Sequence[float] | None = None,
) -> dict:
    """Check one datalist entry before it is used; raise :class:`CaseError` on the first problem.

    Args:
        case: ``{image_key: [one 3D file per modality, in ``modalities`` order] or one 4D file (X, Y, Z, M),
            label_key: optional 3D label file, "case_id": optional}``; relative paths are joined to ``base_dir``.
        base_dir: the dataset root (config key ``dataset_dir``), or ``None`` for absolute paths.
        modalities: modality names; M = ``len(modalities)``.
        label_values: allowed label values (e.g. BraTS ``[0, 1, 2, 4]``), ``None`` to skip the check.
        check_finite: refuse NaN/inf voxels in float images and labels.
        require_label: refuse a case without ``label_key`` (validation and evaluation lists).
        list_name: the datalist list the case comes from, named in the messages (e.g. ``"validation"``).
        allow_missing_modalities: a per-modality image entry that is ``None`` or names a file that does not exist
            is a missing modality, not an error (at least one must be present; a 4D file cannot lack one). Without
            it, a missing file is refused with a message naming the config key ``allow_missing_modalities``.
        pixdim: the network's voxel size (config key ``pixdim``): a case smaller in-plane than one token once
            resampled to it is refused, one with fewer than 3 axial slices warned
            (:func:`~diffmed_monai.utils.grid_problems`). ``None``: not checked.

    Checks: every file exists and reads completely; images are 3D (X, Y, Z) (a trailing axis of size 1 is
    accepted), or one 4D file with exactly M volumes on the last axis (2D and 5D refused); M image files;
    images and label share shape and affine (``np.allclose``, atol 1e-3); finite voxels; label values within
    ``label_values``.

    Returns:
        ``{"case_id", "shape": (X, Y, Z), "affine": 4x4 ndarray, "spacing": (sx, sy, sz), "present": [names of the
        modalities whose file is there, in ``modalities`` order]}``.
    """
    if not isinstance(case, dict):
        raise CaseError(f"Datalist entry {case!r} is not a dict (check `datalist`).")
    try:
        case_id = case_id_of(case, base_dir, where=f"`datalist` entry {dict(case)!r}")
    except UnsafeNameError as err:
        raise CaseError(str(err)) from None
    mods = list(modalities)
    m = len(mods)
    entry = case.get(image_key)
    if not entry:
        raise CaseError(f"Case {case_id}: no {image_key!r} entry (check `datalist`).")
    if isinstance(entry, (list, tuple)) and len(entry) == 1 and m > 1:
        entry = entry[0]  # a one-element list holding a single 4D file
    if isinstance(entry, (list, tuple)):
        if len(entry) != m:
            raise CaseError(
                f"Case {case_id}: {len(entry)} image files {list(entry)} for {m} modalities {mods}; "
                f"fix the case in `datalist` or the `modalities` list."
            )
        files, present = [], []
        for p, mod in zip(entry, mods):
            path = _resolve(p, base_dir) if p else None
            if path is not None and os.path.isfile(path):
                files.append((path, f"{mod} image"))
                present.append(mod)
            elif not allow_missing_modalities:
                what = f"{mod} image file {path} does not exist" if path else f"no {mod} image file is given"
                raise CaseError(f"Case {case_id}: {what}; {missing_modality_hint()}.")
        if not present:
            raise CaseError(
                f"Case {case_id}: none of the image files {list(entry)} exists; at least one modality of {mods} is "
                "needed (check `dataset_dir` and the paths in `datalist`)."
            )
        four_d = False
    else:
        files = [(_resolve(entry, base_dir), "4D image" if m > 1 else f"{mods[0]} image")]
        four_d = m > 1
        present = list(mods)
    label = case.get(label_key)
    if require_label and not label:
        where = f"the {list_name!r} list of `datalist`" if list_name else "`datalist`"
        raise CaseError(
            f"Case {case_id}: no {label_key!r} entry in {where}; validation and evaluation cases need a label "
            "(add it, or move the case to the 'testing' list)."
        )
    if label:
        files.append((_resolve(label, base_dir), "label"))

    ref_shape = ref_affine = ref_path = ref_zooms = None
    for path, role in files:
        image, data = _load(case_id, path, role)
        shape = tuple(int(s) for s in data.shape)
        if four_d and role == "4D image":
            if data.ndim != 4 or shape[-1] != m:
                raise CaseError(
                    f"Case {case_id}: 4D image file {path} has shape {shape}, but a single-file case must be 4D "
                    f"(X, Y, Z, {m}) with one volume per modality {mods} on the last axis (config key `modalities`)."
                )
            shape = shape[:3]
        elif data.ndim == 4 and shape[-1] == 1:
            shape = shape[:3]
        elif data.ndim != 3:
            raise CaseError(
                f"Case {case_id}: {role} file {path} is {data.ndim}D with shape {shape}; each modality and the label "
                f"must be one 3D volume (fix the file, or the case in `datalist`, or `modalities`)."
            )
        if ref_shape is None:
            ref_shape, ref_affine, ref_path = shape, image.affine, path
            ref_zooms = tuple(float(z) for z in image.header.get_zooms()[:3])
        elif shape != ref_shape:
            raise CaseError(
                f"Case {case_id}: {role} file {path} has shape {shape} but {ref_path} has {ref_shape}; all modalities "
                f"and the label must be on one grid (resample them, or fix the case in `datalist`)."
            )
        elif not np.allclose(image.affine, ref_affine, atol=AFFINE_ATOL):
            diff = float(np.max(np.abs(np.asarray(image.affine) - np.asarray(ref_affine))))
            raise CaseError(
                f"Case {case_id}: {role} file {path} and {ref_path} have different affines (max difference "
                f"{diff:.4g}); the modalities must be co-registered on one grid (register them, or fix `datalist`)."
            )
        if check_finite and np.issubdtype(data.dtype, np.floating):
            bad = int(data.size - np.count_nonzero(np.isfinite(data)))
            if bad:
                raise CaseError(
                    f"Case {case_id}: {role} file {path} contains {bad} NaN/inf voxel(s) of {data.size}; fix the file, "
                    f"remove the case from `datalist` (`check_finite` false skips this check, but NaN voxels make "
                    f"the whole normalised channel NaN)."
                )
        if role != "label":
            volumes = np.moveaxis(data, -1, 0) if four_d and role == "4D image" else [data]
            empty = [mods[i] if four_d else role for i, v in enumerate(volumes) if not np.any(v)]
            for name in empty:
                logger.warning("Case %s: %s in %s is all zero; it is used as it is.", case_id, name, path)
        if role == "label" and label_values is not None:
            allowed = {float(v) for v in label_values}
            values = np.unique(data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data)
            extra = [v for v in values.tolist() if float(v) not in allowed]
            if extra:
                shown = ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in extra[:10])
                raise CaseError(
                    f"Case {case_id}: label file {path} has value(s) [{shown}] outside `label_values`="
                    f"{list(label_values)}; change `label_values` (dataset preset) or fix the label file."
                )
    if pixdim is not None:
        refusal, warning = grid_problems(resampled_shape(ref_shape, ref_zooms, pixdim), f"Case {case_id} ({ref_path})")
        if refusal:
            raise CaseError(refusal)
        if warning:
            logger.warning("%s", warning)
    return {"case_id": case_id, "shape": ref_shape, "affine": np.asarray(ref_affine), "spacing": ref_zooms,
            "present": present}


def check_datalist(
    cases: Sequence[dict] | Mapping[str, Sequence[dict]],
    base_dir: str | None,
    modalities: Sequence[str],
    label_values: Sequence[int] | None = None,
    check_finite: bool = True,
    strict: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    require_label: bool = False,
    allow_missing_modalities: bool = False,
    pixdim: Sequence[float] | None = None,
) -> tuple[list[dict], list[str]]:
    """Run :func:`check_case` on every case, logging progress to this module's logger.

    ``cases`` is one list, or ``{list name: list}`` (e.g. ``{"training": [...], "validation": [...]}``) so that
    messages name the list. ``require_label``: every case needs a label (training, validation, evaluation).
    ``strict=True`` (training): raise one ``ValueError`` listing every bad case, so nothing starts on bad data.
    ``strict=False`` (inference): return ``(good_cases, error_messages)`` for the caller to report and go on.
    ``allow_missing_modalities``, ``pixdim``: see :func:`check_case`.
    """
    lists = dict(cases) if isinstance(cases, Mapping) else {None: cases}
    flat = [(name, case) for name, items in lists.items() for case in items]
    good, errors = [], []
    total = len(flat)
    logger.info("Checking %d case(s) under %s (modalities %s)", total, base_dir, list(modalities))
    for i, (name, case) in enumerate(flat, 1):
        try:
            check_case(case, base_dir, modalities, label_values, check_finite, image_key, label_key, require_label,
                       name, allow_missing_modalities, pixdim)
            good.append(case)
        except CaseError as err:
            errors.append(str(err))
            logger.error("%s", err)
        if i % 25 == 0 or i == total:
            logger.info("Checked %d/%d case(s), %d refused", i, total, len(errors))
    if strict and errors:
        raise ValueError(
            f"{len(errors)} of {total} case(s) cannot be used; fix or remove them before training:\n"
            + "\n".join(errors)
        )
    return good, errors
