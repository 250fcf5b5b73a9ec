"""Atomic label-map writer that keeps the input's affine and header."""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Hashable, Mapping

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ..utils import UnsafeNameError, case_file_name, path_inside, strip_nifti_ext, write_atomic

__all__ = [
    "PREDICTION_DESCRIPTION",
    "SaveLabelNiftid",
    "case_id_of_item",
    "is_own_prediction",
    "output_path_for",
    "write_nifti_atomic",
]

logger = logging.getLogger(__name__)


#: NIfTI ``descrip`` of every label map :class:`SaveLabelNiftid` writes (how an earlier prediction is recognised)
PREDICTION_DESCRIPTION = b"diffmed-monai label map"


def is_own_prediction(path: str) -> bool:
    """Whether ``path`` is a NIfTI label map written by :class:`SaveLabelNiftid` (its ``descrip`` header field)."""
    try:
        return nib.load(path).header["descrip"].item() == PREDICTION_DESCRIPTION
    except Exception:  # not NIfTI, unreadable: not ours
        return False


def output_path_for(output_dir: str, case_id: str, postfix: str = "seg", ext: str = ".nii.gz") -> str:
    """``<output_dir>/<case_id>_<postfix><ext>`` (no postfix part when ``postfix`` is empty).

    ``case_id`` must be a plain file name (:func:`~diffmed_monai.utils.case_file_name`, else ``UnsafeNameError``),
    and the path is checked to lie inside ``output_dir`` (links resolved), so no datalist entry writes elsewhere.
    """
    case_id = case_file_name(case_id)
    path = os.path.join(output_dir, f"{case_id}_{postfix}{ext}" if postfix else f"{case_id}{ext}")
    if not path_inside(output_dir, path):
        raise UnsafeNameError(f"Case {case_id}: output {path} would lie outside `output_dir` {output_dir!r}.")
    return path


def case_id_of_item(item: Mapping, case_id_key: str = "case_id", image_key: str = "image") -> str:
    """The case id of a transformed item: the last path component of ``item[case_id_key]`` (MONAI's datalist loader
    joins it to ``dataset_dir`` when a folder has its name), else the image file's name without ``.nii(.gz)``
    (from the ``MetaTensor``'s ``filename_or_obj``), else ``"case"``."""
    if item.get(case_id_key):
        return case_file_name(os.path.basename(os.path.normpath(str(item[case_id_key]))))
    meta = getattr(item.get(image_key), "meta", None) or {}
    return case_file_name(strip_nifti_ext(os.path.basename(str(meta.get("filename_or_obj", "")))) or "case")


def write_nifti_atomic(image: nib.Nifti1Image, path: str, key: str = "output_dir") -> None:
    """Write ``image`` to ``path`` with :func:`~diffmed_monai.utils.write_atomic` (gzip-compressed for ``.gz``, at
    nibabel's default level): no half-written outputs; a write error names ``path`` and the config ``key``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = image.to_bytes()
    write_atomic(path, lambda f: f.write(gzip.compress(data, compresslevel=1) if path.endswith(".gz") else data), key)


class SaveLabelNiftid(MapTransform):
    """Write a label map as uint8 NIfTI with the reference input's affine and header, atomically.

    Expects the item (after ``Invertd``) to hold ``key`` as a ``(1, X, Y, Z)`` or ``(X, Y, Z)`` label map in the
    original voxel grid, the reference input path under ``reference_key`` and the case id under ``case_id_key``.
    The header is copied from the reference (so sform/qform codes and units survive), the data type
    set to uint8, scaling reset and ``descrip`` set to :data:`PREDICTION_DESCRIPTION`. It refuses to write over
    any input file named in ``input_paths_key``, and over any existing file unless ``overwrite`` is true and the
    file is an earlier prediction (:func:`is_own_prediction`); it checks that the shape equals the reference's.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str,
        reference_key: str = "reference",
        case_id_key: str = "case_id",
        input_paths_key: str = "input_files",
        output_postfix: str = "seg",
        output_ext: str = ".nii.gz",
        overwrite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = output_dir
        self.reference_key = reference_key
        self.case_id_key = case_id_key
        self.input_paths_key = input_paths_key
        self.output_postfix = output_postfix
        self.output_ext = output_ext
        self.overwrite = overwrite

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            reference = str(d[self.reference_key])
            case_id = str(d[self.case_id_key])
            path = output_path_for(self.output_dir, case_id, self.output_postfix, self.output_ext)
            inputs = d.get(self.input_paths_key) or [reference]
            inputs = [inputs] if isinstance(inputs, str) else list(inputs)
            if os.path.realpath(path) in {os.path.realpath(str(p)) for p in inputs}:
                raise ValueError(f"Case {case_id}: output {path} is one of its inputs; change `output_dir`.")
            if os.path.lexists(path) and not (self.overwrite and is_own_prediction(path)):
                raise ValueError(f"Case {case_id}: output {path} already exists; not replaced (config key `overwrite`).")
            labels = np.asarray(d[key].detach().cpu() if hasattr(d[key], "detach") else d[key])
            if labels.ndim == 4 and labels.shape[0] == 1:
                labels = labels[0]
            ref = nib.load(reference)
            if labels.shape != tuple(ref.shape[:3]):
                raise ValueError(
                    f"Case {case_id}: prediction shape {labels.shape} differs from the input {reference} "
                    f"{tuple(ref.shape[:3])}; the inverse transforms did not restore the grid."
                )
            if labels.min() < 0 or labels.max() > 255:
                raise ValueError(f"Case {case_id}: label values outside uint8 range; check `label_values`.")
            header = ref.header.copy()
            header.set_data_dtype(np.uint8)
            header.set_slope_inter(1.0, 0.0)
            header["cal_min"], header["cal_max"] = 0, 0
            header["descrip"] = PREDICTION_DESCRIPTION
            out = nib.Nifti1Image(np.rint(labels).astype(np.uint8), ref.affine, header)
            _, scode = ref.header.get_sform(coded=True)
            _, qcode = ref.header.get_qform(coded=True)
            # same sform/qform codes as the input; if it had neither, store the affine as sform (code 1)
            out.set_sform(ref.affine, int(scode) if (scode or qcode) else 1)
            out.set_qform(ref.header.get_qform() if qcode else ref.affine, int(qcode))
            write_nifti_atomic(out, path)
            logger.info("Case %s: wrote %s", case_id, path)
            d[f"{key}_path"] = path
        return d
