"""Inference inputs: find the cases, validate each one, and report the ones that could not be processed."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from ..transforms.io import is_own_prediction, output_path_for
from ..transforms.pictures import is_own_png
from ..utils import UnsafeNameError, case_id_of, resampled_shape
from .checks import check_case
from .datalist import datalist_entries, scan_folder

__all__ = ["CasesFailed", "InferenceCases", "require_file"]

logger = logging.getLogger(__name__)


def require_file(path: str, key: str) -> str:
    """Return ``path`` if it is a file, else raise a ``FileNotFoundError`` naming the config ``key``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist (config key `{key}`).")
    return path


class InferenceCases:
    """The cases an inference run will process, validated before any of them runs.

    Cases come from ``datalist`` (its ``datalist_key`` list, paths relative to ``dataset_dir``) or, when no
    datalist is given, from scanning ``dataset_dir`` (one folder per case with ``<case>_<modality>.nii.gz`` files,
    or one 4D NIfTI per case). Each case is checked with :func:`~diffmed_monai.data.check_case` (readable, 3D or
    one 4D file, matching shapes and affines, finite voxels).

    Nothing that exists is replaced: ``output_dir`` may not be ``dataset_dir``, lie inside it, or lie inside a
    case folder (refused before any case runs, naming the key); a case whose output file already exists is refused
    (the file is left as it is) unless ``overwrite`` is true and the file is a label map this package wrote
    (:func:`~diffmed_monai.transforms.is_own_prediction`); an output path equal to one of the case's inputs is
    always refused; with ``save_png`` the same holds for its picture ``<output_dir>/<case_id>.png``. A case whose
    volume, resampled to ``pixdim``, would exceed ``max_voxels`` (all channels) is refused from its header before
    any memory is spent on it.

    A case lacking some modality files is refused with a message naming the config key
    ``allow_missing_modalities``; with ``allow_missing_modalities`` true it is kept (at least one modality must be
    there): its ``image`` list has ``None`` for each missing modality (see
    :class:`~diffmed_monai.transforms.SelectPresentModalitiesd`), and the modalities present are logged when it
    runs and listed in :meth:`report`.

    Bad cases are logged and kept in :attr:`failures`; :attr:`valid` holds the others as dicts with ``image``
    (absolute path, or list of M paths or ``None``), ``case_id``, ``reference`` (first present input path),
    ``input_files`` (the present paths) and ``modalities_present`` (names, in ``modalities`` order).
    :func:`diffmed_monai.engines.run_cases` (the bundle's ``run``) segments them one by one, adding each to
    :attr:`segmented` or, when it fails in processing, to :attr:`failures` (the others go on); :meth:`report` (the
    bundle's ``finalize``) logs the summary last and exits with status 1 if any case failed.
    """

    def __init__(
        self,
        dataset_dir: str,
        modalities: Sequence[str],
        output_dir: str,
        datalist: str | None = None,
        datalist_key: str = "testing",
        output_postfix: str = "seg",
        check_finite: bool = True,
        overwrite: bool = False,
        pixdim: Sequence[float] | None = None,
        max_voxels: float = 200_000_000,
        allow_missing_modalities: bool = False,
        save_png: bool = False,
    ) -> None:
        self.output_dir = output_dir
        self.modalities = [str(m) for m in modalities]
        self.failures: list[tuple[str, str]] = []
        self.valid: list[dict] = []
        self.segmented: list[str] = []
        if datalist:
            cases = datalist_entries(require_file(datalist, "datalist"), datalist_key)
        else:
            if not os.path.isdir(dataset_dir):
                raise FileNotFoundError(f"Input folder {dataset_dir!r} does not exist (config key `dataset_dir`).")
            cases, skipped = scan_folder(dataset_dir, list(modalities), allow_missing=allow_missing_modalities)
            for folder, reason in skipped:
                self.fail(os.path.basename(str(folder)), reason)
        _refuse_output_dir_inside_inputs(output_dir, dataset_dir, cases)
        for i, case in enumerate(cases):
            where = f"entry {i} of `{datalist_key}` in {datalist}" if datalist else f"folder {case.get('case_id')}"
            try:
                case_id = case_id_of(case, where=where)
            except UnsafeNameError as err:
                self.fail(f"#{i}", str(err))
                continue
            try:
                info = check_case(case, dataset_dir, list(modalities), label_values=None, check_finite=check_finite,
                                  allow_missing_modalities=allow_missing_modalities, pixdim=pixdim)
                _refuse_oversized(case_id, info, len(modalities), pixdim, max_voxels)
                entries = case["image"] if isinstance(case["image"], list) else [case["image"]]
                entries = [os.path.abspath(os.path.join(dataset_dir, p)) if p else None for p in entries]
                entries = [p if p and os.path.isfile(p) else None for p in entries]  # None: a missing modality
                paths = [p for p in entries if p]
                out = output_path_for(output_dir, case_id, output_postfix)
                if os.path.realpath(out) in {os.path.realpath(p) for p in paths}:
                    raise ValueError(f"Case {case_id}: output {out} would overwrite its input; change `output_dir`.")
                if os.path.lexists(out) and not (overwrite and is_own_prediction(out)):
                    raise ValueError(
                        f"Case {case_id}: output {out} already exists and was left as it is; choose another "
                        "`output_dir`, or set `overwrite` to true to replace label maps written by an earlier run "
                        "(other files are never replaced)."
                    )
                picture = output_path_for(output_dir, case_id, postfix="", ext=".png")  # SaveCasePNGd's path
                if save_png and os.path.lexists(picture) and not (overwrite and is_own_png(picture)):
                    raise ValueError(
                        f"Case {case_id}: picture {picture} already exists and was left as it is; choose another "
                        "`output_dir`, set `save_png` to false, or `overwrite` to true to replace pictures written "
                        "by an earlier run."
                    )
            except (ValueError, OSError) as err:
                self.fail(case_id, str(err))
                continue
            self.valid.append(
                {"case_id": case_id, "image": entries if len(entries) > 1 else entries[0], "reference": paths[0],
                 "input_files": paths, "modalities_present": list(info["present"])}
            )
        logger.info("%d case(s) to segment, %d refused.", len(self.valid), len(self.failures))

    def fail(self, case_id: str, reason: str) -> None:
        """Log ``case_id`` as skipped for ``reason`` and keep it for :meth:`report`."""
        logger.error("Case %s skipped: %s", case_id, reason)
        self.failures.append((case_id, reason))

    def describe(self, present: list[str]) -> str:
        """``present`` modality names joined by ``+``, with the missing ones of :attr:`modalities`."""
        missing = [m for m in self.modalities if m not in present]
        return "+".join(present) + (f" (missing: {', '.join(missing)})" if missing else " (all)")

    def report(self) -> None:
        """Log the outcome last, one line per segmented case with the modalities it had; exit with status 1
        (``SystemExit``, no traceback) listing every failed case."""
        present = {case["case_id"]: case["modalities_present"] for case in self.valid}
        lines = "".join(f"\n  {cid}: {self.describe(present[cid])}" for cid in self.segmented)
        logger.info("Label maps written to %s for %d case(s):%s", self.output_dir, len(self.segmented), lines)
        if self.failures:
            details = "\n".join(f"  {cid}: {why}" for cid, why in self.failures)
            raise CasesFailed(f"{len(self.failures)} case(s) could not be segmented:\n{details}")


class CasesFailed(SystemExit):
    """Raised by :meth:`InferenceCases.report` when a case failed: the process exits with status 1 and this message
    as its last output (a ``SystemExit``, so no traceback buries it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _refuse_oversized(case_id: str, info: dict, channels: int, pixdim: Sequence[float] | None, budget: float) -> None:
    """Raise ``ValueError`` if resampling the case to ``pixdim`` gives more than ``budget`` voxels (all channels)."""
    shape, spacing = info["shape"], info["spacing"]
    target = pixdim or spacing
    resampled = resampled_shape(shape, spacing, pixdim)
    voxels = channels * float(np.prod(resampled))
    if voxels > budget:
        raise ValueError(
            f"Case {case_id}: shape {list(shape)} at spacing {[round(s, 3) for s in spacing]} mm resampled to "
            f"`pixdim` {list(target)} gives {resampled} x {channels} channels = {voxels:.3g} voxels, over the "
            f"budget `max_voxels`={budget:.3g} (check the file's header, or raise `max_voxels`)."
        )


def _refuse_output_dir_inside_inputs(output_dir: str, dataset_dir: str, cases: Sequence[dict]) -> None:
    """Raise ``ValueError`` if ``output_dir`` is ``dataset_dir``, inside it, or inside a case's folder."""
    out = os.path.realpath(output_dir)
    folders = {os.path.realpath(dataset_dir)} if dataset_dir else set()
    for case in cases:
        image = case.get("image") if isinstance(case, dict) else None
        for path in image if isinstance(image, list) else [image] if image else []:
            folders.add(os.path.realpath(os.path.dirname(os.path.join(dataset_dir or "", str(path)))))
    for folder in sorted(folders):
        if out == folder or out.startswith(folder + os.sep):
            raise ValueError(
                f"`output_dir` {output_dir!r} is, or is inside, the input folder {folder!r}; label maps would be "
                "mixed with (and could replace) the inputs. Set `output_dir` to a folder outside `dataset_dir`."
            )
