"""On-disk store of preprocessed cases: written once by parallel workers, read one axial slice at a time.

Every case of the datalist goes once through the bundle's deterministic transforms (``train#load_transforms``:
load, orientation, spacing, label mapping; ``crop_transforms``; ``intensity_transforms``) and is written as

.. code-block:: text

    <store_dir>/store.json                   the settings the store was written with (see below)
    <store_dir>/.lock                        flock'ed while a preprocessing run writes
    <store_dir>/cases/<case_id>/image.npy    (Z, M, X, Y) float16: axial slices first, one slice is contiguous
    <store_dir>/cases/<case_id>/label.npy    (Z, X, Y) uint8 class indices 0..C-1
    <store_dir>/cases/<case_id>/case.json    completion marker, written last: shape, per-slice voxel counts
                                             per class (Z, C), settings digest, file sizes, source files

``(X, Y, Z)`` is the volume after the transforms (RAS: Z is axial); ``M`` modalities, ``C`` classes. A slice is read
with ``np.load(..., mmap_mode="r")[z]`` without reading the rest of its case.

**Atomic and resumable.** A case is written into ``cases/.tmp-<case_id>-...``; each file is fsync'ed, ``case.json``
last; the folder is fsync'ed and renamed to ``cases/<case_id>``, and ``cases/`` fsync'ed. A kill leaves at most a
``.tmp-`` folder, which is never read and is removed by the next run; a case folder exists only complete. A case is
valid when its ``case.json`` parses, holds this store's settings digest and the recorded sizes of ``image.npy`` and
``label.npy``. A rerun skips the valid cases whose source files (name, size, modification time) are unchanged.

**Keyed by its settings.** ``store.json`` holds the format version, modalities, label values, pixdim and a
description of every preprocessing transform (type and public attributes, read from the instantiated transforms of
the config). Opening a store with other settings raises :class:`StoreError` naming the first setting that
differs; nothing is reused or deleted silently. (A MONAI upgrade that changes a transform's attributes counts as a
change too: preprocess again into a new folder.)
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import functools
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import threading
import time
import types
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..utils import UnsafeNameError, case_id_of, fsync_dir, grid_problems
from .checks import check_case

__all__ = [
    "STORE_FORMAT_VERSION",
    "CaseRecord",
    "PreprocessSummary",
    "SliceStore",
    "StoreError",
    "default_store_dir",
    "describe_transform",
]

logger = logging.getLogger(__name__)

#: Bump when the layout or the meaning of the stored arrays changes; a store of another version is refused.
STORE_FORMAT_VERSION = 1
IMAGE_DTYPE = np.float16
LABEL_DTYPE = np.uint8
STORE_FILE = "store.json"
CASES_DIR = "cases"
IMAGE_FILE, LABEL_FILE, CASE_FILE = "image.npy", "label.npy", "case.json"
_TMP_PREFIX, _OLD_PREFIX = ".tmp-", ".old-"
_EXPLICIT_SETTINGS = ("format_version", "modalities", "label_values", "pixdim", "image_dtype", "label_dtype")


class StoreError(RuntimeError):
    """The store cannot be used as asked; the message names the store folder, the case or setting, and the fix."""


# --------------------------------------------------------------------------------------------------------------
# settings


def describe_transform(obj: Any, depth: int = 0) -> Any:
    """JSON description of a transform: its type and public attributes, recursively (4 levels).

    Enums give their value, types and functions their qualified name, numpy arrays their values (or a digest when
    large), other objects without attributes their type. Two transforms built with the same arguments give the same
    description; a changed argument (``pixdim``, ``nonzero``, ``a_min`` ...) changes it.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else str(obj)
    if isinstance(obj, enum.Enum):
        return describe_transform(obj.value, depth)
    if isinstance(obj, functools.partial):
        return {"partial": describe_transform(obj.func, depth + 1), "args": describe_transform(obj.args, depth + 1),
                "keywords": describe_transform(obj.keywords, depth + 1)}
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
    if isinstance(obj, np.generic):
        return describe_transform(obj.item(), depth)
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        array = np.asarray(obj.detach().cpu()) if isinstance(obj, torch.Tensor) else obj
        if array.dtype == object:
            return [describe_transform(v, depth + 1) for v in array.ravel().tolist()]
        if array.size <= 64:
            return describe_transform(array.tolist(), depth)
        return {"array": list(array.shape), "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()}
    if isinstance(obj, Mapping):
        return {str(k): describe_transform(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [describe_transform(v, depth + 1) for v in obj]
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    attributes = getattr(obj, "__dict__", None)
    if attributes is None or depth >= 4:
        return name
    public = {k: v for k, v in attributes.items() if not k.startswith("_") and k != "R"}  # R: a random state
    return {"type": name, **{k: describe_transform(v, depth + 1) for k, v in sorted(public.items())}}


def _digest(settings: Mapping) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _first_difference(stored: Any, wanted: Any, path: str) -> tuple[str, Any, Any] | None:
    """``(path, stored value, wanted value)`` of the first place where the two JSON values differ."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        if stored.get("type") != wanted.get("type"):
            if "type" in stored or "type" in wanted:
                return (path, stored.get("type"), wanted.get("type"))
        for key in list(stored) + [k for k in wanted if k not in stored]:
            if key not in stored or key not in wanted:
                return (f"{path}.{key}", stored.get(key, "<absent>"), wanted.get(key, "<absent>"))
            found = _first_difference(stored[key], wanted[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(stored, list) and isinstance(wanted, list) and len(stored) == len(wanted):
        for i, (a, b) in enumerate(zip(stored, wanted)):
            found = _first_difference(a, b, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if stored == wanted else (path, stored, wanted)


def _short(value: Any) -> str:
    if isinstance(value, dict) and "type" in value:
        return str(value["type"]).rsplit(".", 1)[-1]
    if isinstance(value, list) and value and all(isinstance(v, dict) and "type" in v for v in value):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


_REPAIR_HINT = ("run the preprocessing again with `verify_store` true (diffmed-monai preprocess --verify_store true): "
                "it rewrites damaged cases from their source files")


def _checksums(meta: Mapping) -> np.ndarray:
    """``(Z, 2)`` uint32 recorded CRC-32 of each slice's image and label (``case.json``'s ``slice_crc32``)."""
    return np.asarray(meta["slice_crc32"], dtype=np.uint32).reshape(-1, 2)


# --------------------------------------------------------------------------------------------------------------
# records and summaries


@dataclass(frozen=True)
class CaseRecord:
    """One complete case of the store.

    Attributes:
        case_id: the case's folder name under ``cases/``.
        shape: ``(Z, M, X, Y)`` of ``image.npy`` (``label.npy`` is ``(Z, X, Y)``).
        label_counts: ``(Z, C)`` int64, voxels of each class in each axial slice.
        checksums: ``(Z, 2)`` uint32, CRC-32 of each axial slice of ``image.npy`` and of ``label.npy``, checked
            whenever a slice is read (:meth:`SliceStore.read_slice`).
        has_label: False for an unlabelled case (datalist entry with ``unlabelled`` true and no ``label``: its
            ``label.npy`` is all 0 and it only serves distillation).
    """

    case_id: str
    shape: tuple[int, int, int, int]
    label_counts: np.ndarray
    checksums: np.ndarray
    has_label: bool = True

    @property
    def num_slices(self) -> int:
        return self.shape[0]

    @property
    def labelled(self) -> np.ndarray:
        """``(Z,)`` bool: the slice holds at least one voxel of a class other than 0 (background)."""
        return self.label_counts[:, 1:].sum(axis=1) > 0


@dataclass
class PreprocessSummary:
    """Outcome of :meth:`SliceStore.preprocess`.

    ``written``: cases preprocessed by this run; ``present``: already complete and up to date; ``failed``:
    ``(case_id, reason)`` of the cases that could not be written (the reason names the file); ``seconds``: wall
    time of the run; ``case_seconds``: worker seconds per written case; ``bytes``: store bytes of the cases written.
    """

    store_dir: str
    total: int = 0
    written: int = 0
    present: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    case_seconds: list[float] = field(default_factory=list)
    bytes: int = 0

    def __str__(self) -> str:
        per_case = f", {np.mean(self.case_seconds):.2f} s per case per worker" if self.case_seconds else ""
        size = f", {self.bytes / max(self.written, 1) / 1e6:.1f} MB per case" if self.written else ""
        text = (
            f"Store {self.store_dir}: {self.total} case(s): {self.written} written, {self.present} already there, "
            f"{len(self.failed)} failed ({self.seconds:.1f} s{per_case}{size})."
        )
        if self.failed:
            text += "\n" + "\n".join(f"  {cid}: {why}" for cid, why in self.failed)
        return text


def _source_files(case: Mapping, base_dir: str | None) -> list[str]:
    image = case.get("image")
    paths = list(image) if isinstance(image, (list, tuple)) else [image]
    if case.get("label"):
        paths.append(case["label"])
    return [p if os.path.isabs(str(p)) or not base_dir else os.path.join(base_dir, str(p)) for p in map(str, paths)]


def _fingerprint(paths: Sequence[str]) -> list[list]:
    """``[[file name, size, mtime seconds], ...]``; a missing file gives ``[name, None, None]``."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append([os.path.basename(p), st.st_size, int(st.st_mtime)])
        except OSError:
            out.append([os.path.basename(p), None, None])
    return out


def _write_synced(path: str, write: Callable) -> int:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


# --------------------------------------------------------------------------------------------------------------
# the store


class SliceStore:
    """A folder of preprocessed cases, keyed by the settings that produced them.

    Args:
        store_dir: the folder (config key ``store_dir``); created by the first :meth:`preprocess`.
        modalities: ``M`` modality names, in channel order (config key ``modalities``).
        label_values: the label file values mapped to classes ``0..C-1`` (config key ``label_values``, C <= 256).
        pixdim: target voxel size in mm (config key ``pixdim``).
        transforms: the deterministic transforms by config key, applied in this order to a datalist entry
            ``{"image": [M files] or one 4D file, "label": file}``; they must give ``image`` ``(M, X, Y, Z)`` and
            ``label`` ``(1, X, Y, Z)`` with Z the axial axis. In the bundle: ``{"load_transforms":
            @train#load_transforms, "crop_transforms": @crop_transforms, "intensity_transforms":
            @intensity_transforms}``.

    :attr:`settings` (what ``store.json`` records) is built from these arguments; :meth:`preprocess` writes cases,
    :meth:`records` returns the complete ones, :meth:`read_slice` / :meth:`read_volume` read them.
    """

    def __init__(
        self,
        store_dir: str,
        modalities: Sequence[str],
        label_values: Sequence[int],
        pixdim: Sequence[float],
        transforms: Mapping[str, Sequence[Callable]],
    ) -> None:
        if not store_dir:
            raise StoreError("No store folder given (config key `store_dir`).")
        self.store_dir = os.path.abspath(os.fspath(store_dir))
        self.modalities = [str(m) for m in modalities]
        self.label_values = [int(v) for v in label_values]
        if not 1 <= len(self.label_values) <= np.iinfo(LABEL_DTYPE).max + 1:
            raise StoreError(
                f"`label_values` has {len(self.label_values)} values; the store keeps class indices as uint8 "
                f"(1 to 256 classes)."
            )
        self.transforms = {str(k): list(v) for k, v in transforms.items()}
        self.settings = {
            "format_version": STORE_FORMAT_VERSION,
            "modalities": self.modalities,
            "label_values": self.label_values,
            "pixdim": [float(p) for p in pixdim],
            "image_dtype": np.dtype(IMAGE_DTYPE).name,
            "label_dtype": np.dtype(LABEL_DTYPE).name,
            "transforms": {k: [describe_transform(t) for t in v] for k, v in self.transforms.items()},
        }
        self.digest = _digest(self.settings)

    # ---------------------------------------------------------------------------------------------------- paths

    @property
    def cases_dir(self) -> str:
        return os.path.join(self.store_dir, CASES_DIR)

    def case_dir(self, case_id: str) -> str:
        return os.path.join(self.cases_dir, case_id)

    def image_path(self, case_id: str) -> str:
        return os.path.join(self.cases_dir, case_id, IMAGE_FILE)

    def label_path(self, case_id: str) -> str:
        return os.path.join(self.cases_dir, case_id, LABEL_FILE)

    # ------------------------------------------------------------------------------------------------- settings

    def check_settings(self, create: bool = False) -> None:
        """Raise :class:`StoreError` unless ``store.json`` holds this store's settings.

        With ``create``, a missing or empty ``store_dir`` becomes a new store (``store.json`` written atomically); a
        folder that holds other files but no ``store.json`` is refused (it is not a store: another folder was
        probably meant). Without ``create``, a missing store is an error telling to run the preprocessing.
        """
        path = os.path.join(self.store_dir, STORE_FILE)
        if not os.path.isfile(path):
            if not create:
                raise StoreError(
                    f"No preprocessed store at {self.store_dir} (no {STORE_FILE}; config key `store_dir`). Run the "
                    f"preprocessing first: python -m monai.bundle run preprocess --config_file "
                    f"\"['configs/train.json','configs/preprocess.json', <the presets of this run>]\" with the same "
                    f"overrides (or diffmed-monai preprocess --presets ...): the default `store_dir` is named by "
                    f"these settings, so preprocessing with other presets wrote another folder."
                )
            self._refuse_foreign_folder()
            os.makedirs(self.store_dir, exist_ok=True)
            content = {"settings": self.settings, "digest": self.digest, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
            tmp = f"{path}.tmp-{os.getpid()}"
            _write_synced(tmp, lambda f: f.write((json.dumps(content, indent=1) + "\n").encode()))
            os.replace(tmp, path)
            fsync_dir(self.store_dir)
            logger.info("New store at %s", self.store_dir)
            return
        try:
            with open(path) as f:
                stored = json.load(f)["settings"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StoreError(f"{path} is unreadable ({err}); delete {self.store_dir} to preprocess again.") from err
        if _digest(stored) == self.digest:
            return
        stored_transforms = stored.get("transforms") if isinstance(stored.get("transforms"), dict) else {}
        pairs = [(key, stored.get(key), self.settings[key]) for key in _EXPLICIT_SETTINGS]
        pairs += [(key, stored_transforms.get(key, "<absent>"), self.settings["transforms"].get(key, "<absent>"))
                  for key in list(self.settings["transforms"]) + [k for k in stored_transforms
                                                                  if k not in self.settings["transforms"]]]
        for key, old, new in pairs:
            found = _first_difference(old, new, key) if key not in _EXPLICIT_SETTINGS else (
                (key, old, new) if old != new else None)
            if found:
                where, old, new = found
                raise StoreError(
                    f"The store at {self.store_dir} was written with other settings: `{where}` is {_short(old)} in "
                    f"the store but {_short(new)} in this config. Stored data are never reused with changed settings: "
                    f"point `store_dir` to a new folder (or delete {self.store_dir}) and preprocess again."
                )
        raise StoreError(f"The store at {self.store_dir} was written with other settings; use a new `store_dir`.")

    def _refuse_foreign_folder(self) -> None:
        """Raise :class:`StoreError` if ``store_dir`` holds files but no ``store.json`` (not a store: never write)."""
        if os.path.isfile(os.path.join(self.store_dir, STORE_FILE)) or not os.path.isdir(self.store_dir):
            return
        if any(n not in (CASES_DIR, ".lock") for n in os.listdir(self.store_dir)):
            raise StoreError(
                f"`store_dir` {self.store_dir} exists, is not empty and holds no {STORE_FILE}: it is not a store "
                f"written by diffmed-monai. Choose an empty or new folder for `store_dir`."
            )

    # ---------------------------------------------------------------------------------------------------- cases

    def _state(self, case_id: str, sources: list[list] | None, verify: bool = False) -> tuple[str, dict | None]:
        """``("complete", meta)``, ``("missing", None)`` or ``("stale: <why>", meta)`` of one case; with ``verify``
        every slice is read and checked against its recorded checksum."""
        folder = self.case_dir(case_id)
        try:
            with open(os.path.join(folder, CASE_FILE)) as f:
                meta = json.load(f)
        except FileNotFoundError:
            return "missing", None
        except (OSError, ValueError) as err:
            return f"stale: unreadable {CASE_FILE} ({err})", None
        if meta.get("digest") != self.digest:
            return "stale: written with other settings", meta
        for name, key in ((IMAGE_FILE, "image_bytes"), (LABEL_FILE, "label_bytes")):
            try:
                size = os.path.getsize(os.path.join(folder, name))
            except OSError:
                size = None
            if size != meta.get(key):
                return f"stale: {name} has {size} bytes, {meta.get(key)} recorded", meta
        if sources is not None and meta.get("sources") != sources:
            changed = [s[0] for s, r in zip(sources, meta.get("sources") or []) if s != r] or ["the file list"]
            return f"stale: source file(s) changed since preprocessing ({', '.join(changed)})", meta
        if len(meta.get("slice_crc32") or []) != meta["shape"][0]:
            return "stale: written without per-slice checksums (an older version)", meta
        if verify:
            try:
                image, label = self.read_volume(case_id, _checksums(meta))
                del image, label
            except StoreError as err:
                return f"stale: {err}", meta
        return "complete", meta

    def records(self, cases: Sequence[Mapping], base_dir: str | None = None, key: str = "datalist") -> list[CaseRecord]:
        """The :class:`CaseRecord` of every datalist entry, checking the settings and that each case is complete and
        up to date (its source files unchanged); raise :class:`StoreError` listing the cases that are not.

        ``key`` names the config list the cases come from, for the message.
        """
        self.check_settings(create=False)
        out, problems = [], []
        for case in cases:
            case_id = case_id_of(case, base_dir)
            state, meta = self._state(case_id, _fingerprint(_source_files(case, base_dir)))
            if state != "complete":
                problems.append(f"{case_id}: {state}")
                continue
            counts = np.asarray(meta["label_counts"], dtype=np.int64).reshape(meta["shape"][0], -1)
            shape = tuple(int(s) for s in meta["shape"])
            out.append(CaseRecord(case_id, shape, counts, _checksums(meta), bool(meta.get("labelled", True))))
        if problems:
            shown = "\n  ".join(problems[:10])
            if len(problems) > 10:
                shown += f"\n  ... and {len(problems) - 10} more"
            raise StoreError(
                f"{len(problems)} of {len(cases)} case(s) of `{key}` are not ready in the store {self.store_dir}:\n  "
                f"{shown}\nRun the preprocessing (python -m monai.bundle run preprocess --config_file "
                f"\"['configs/train.json','configs/preprocess.json', <presets>]\", or diffmed-monai preprocess); it "
                f"writes only what is missing or stale."
            )
        return out

    def _open(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            return (np.load(self.image_path(case_id), mmap_mode="r"),
                    np.load(self.label_path(case_id), mmap_mode="r"))
        except (OSError, ValueError) as err:
            message = f"Case {case_id} in the store {self.store_dir} cannot be read ({err}); {_REPAIR_HINT}"
            raise StoreError(message) from None

    def _verify(self, case_id: str, index: int, image: np.ndarray, label: np.ndarray, expected) -> None:
        got = (zlib.crc32(image), zlib.crc32(label))
        if tuple(int(c) for c in expected) != got:
            which = IMAGE_FILE if got[0] != int(expected[0]) else LABEL_FILE
            raise StoreError(
                f"Case {case_id}: slice {index} of {os.path.join(self.case_dir(case_id), which)} does not match the "
                f"checksum recorded when it was written: the file was changed or damaged on disk "
                f"(config key `store_dir`); {_REPAIR_HINT}"
            )

    def read_slice(self, case_id: str, index: int, checksums=None) -> tuple[np.ndarray, np.ndarray]:
        """Axial slice ``index`` of a case: image ``(M, X, Y)`` float16 and label ``(X, Y)`` uint8 (copies, read
        through a memory map; the rest of the case is not read). ``checksums``: the slice's recorded ``(image,
        label)`` CRC-32 (a row of :attr:`CaseRecord.checksums`); a mismatch is a :class:`StoreError` naming the file."""
        image, label = self._open(case_id)
        image, label = np.array(image[index]), np.array(label[index])
        if checksums is not None:
            self._verify(case_id, index, image, label, checksums)
        return image, label

    def read_volume(self, case_id: str, checksums=None) -> tuple[np.ndarray, np.ndarray]:
        """A whole case as memory maps: image ``(Z, M, X, Y)`` float16 and label ``(Z, X, Y)`` uint8; with
        ``checksums`` (``(Z, 2)``, :attr:`CaseRecord.checksums`) every slice is checked first."""
        image, label = self._open(case_id)
        if checksums is not None:
            if len(checksums) != len(image) or len(label) != len(image):
                raise StoreError(f"Case {case_id}: {len(image)} image and {len(label)} label slices in the store, "
                                 f"{len(checksums)} recorded; {_REPAIR_HINT}")
            for index, expected in enumerate(checksums):
                self._verify(case_id, index, image[index], label[index], expected)
        return image, label

    # --------------------------------------------------------------------------------------------- preprocessing

    def preprocess(
        self,
        cases: Sequence[Mapping],
        base_dir: str | None = None,
        num_workers: int = 0,
        check_cases: bool = True,
        progress: bool = True,
        raise_on_failure: bool = True,
        verify: bool = False,
    ) -> PreprocessSummary:
        """Write every datalist entry that is not yet complete and up to date; skip the others.

        Args:
            cases: datalist entries ``{"image": [M files] or a 4D file, "label": file, "case_id": optional}``
                (e.g. ``@train#datalist + @validate#datalist``); relative paths are joined to ``base_dir``.
            base_dir: the dataset root (config key ``dataset_dir``).
            num_workers: worker processes (``spawn``; each uses one torch thread); 0 runs in this process.
            check_cases: run :func:`~diffmed_monai.data.check_case` on each case first (readable files, one grid,
                finite voxels, label values within ``label_values``; config key ``check_data``).
            progress: show a tqdm progress bar.
            raise_on_failure: after all other cases are written and the summary logged, raise
                :class:`StoreError` listing the cases that failed (file and reason).
            verify: read every stored case and check each slice against its checksum; damaged cases are written
                again (config key ``verify_store``). Otherwise a case counts as complete from its sizes and sources.

        Only one run writes a store at a time (an exclusive ``flock`` on ``<store_dir>/.lock``); leftovers of a
        killed run are removed first. Returns a :class:`PreprocessSummary` (also logged).
        """
        started = time.perf_counter()
        summary = PreprocessSummary(self.store_dir, total=len(cases))
        self._refuse_foreign_folder()
        os.makedirs(self.store_dir, exist_ok=True)
        with self._lock():
            self.check_settings(create=True)
            os.makedirs(self.cases_dir, exist_ok=True)
            self._remove_leftovers()
            todo, seen = [], {}
            for case in cases:
                try:
                    case_id = case_id_of(case, base_dir)
                except UnsafeNameError as err:
                    summary.failed.append((str(case.get("case_id") or case.get("image")), str(err)))
                    continue
                if case_id in seen:  # the same files in two lists (training and validation) are one case to store
                    if _source_files(seen[case_id], base_dir) == _source_files(case, base_dir):
                        summary.total -= 1
                        logger.info("Case %s is listed twice with the same files: stored once", case_id)
                    else:
                        summary.failed.append((case_id, f"case id {case_id} appears twice in the datalist with other "
                                                        "files (give one of them another `case_id`)"))
                    continue
                seen[case_id] = case
                sources = _source_files(case, base_dir)
                state, _ = self._state(case_id, _fingerprint(sources), verify=verify)
                if state == "complete":
                    summary.present += 1
                    continue
                if state != "missing":
                    logger.info("Case %s is preprocessed again: %s", case_id, state)
                todo.append((dict(case), case_id, state != "missing"))
            if todo:
                logger.info(
                    "Preprocessing %d case(s) into %s (%d already there) with %d worker(s)",
                    len(todo), self.store_dir, summary.present, num_workers,
                )
            job = _Job(self.store_dir, self.digest, self.transforms, base_dir, self.modalities, self.label_values,
                       check_cases)
            for result in _run_jobs(job, todo, num_workers, progress):
                if result["ok"]:
                    summary.written += 1
                    summary.case_seconds.append(result["seconds"])
                    summary.bytes += result["bytes"]
                else:
                    summary.failed.append((result["case_id"], result["reason"]))
                    logger.error("Case %s not preprocessed: %s", result["case_id"], result["reason"])
        summary.seconds = time.perf_counter() - started
        (logger.error if summary.failed else logger.info)("%s", summary)
        if summary.failed and raise_on_failure:
            raise StoreError(
                f"{len(summary.failed)} of {summary.total} case(s) could not be preprocessed into {self.store_dir} "
                f"(the {summary.written + summary.present} others are in the store); fix or remove them from "
                f"`datalist`:\n" + "\n".join(f"  {cid}: {why}" for cid, why in summary.failed)
            )
        return summary

    @contextlib.contextmanager
    def _lock(self):
        path = os.path.join(self.store_dir, ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise StoreError(
                    f"Another preprocessing run is writing {self.store_dir} (it holds {path}); wait for it to end."
                ) from err
            yield
        finally:
            os.close(fd)

    def _remove_leftovers(self) -> None:
        for name in os.listdir(self.cases_dir):
            if name.startswith((_TMP_PREFIX, _OLD_PREFIX)):
                logger.info("Removing %s, left by an interrupted run", name)
                shutil.rmtree(os.path.join(self.cases_dir, name), ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------
# the work of one case (module level: runs in spawned worker processes)


@dataclass
class _Job:
    store_dir: str
    digest: str
    transforms: dict[str, list]
    base_dir: str | None
    modalities: list[str]
    label_values: list[int]
    check_cases: bool


_WORKER_JOB: _Job | None = None


def _exit_with_parent() -> None:
    """In a worker process: wait until the parent process ends, then end this process at once.

    A killed preprocessing run (``kill -9``) cannot shut its pool down, and the workers would go on writing cases
    without the store lock; this thread ends them. ``os._exit``: nothing of the worker is worth cleaning up (a case
    being written is in a temporary folder that the next run removes)."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def _init_worker(job: _Job) -> None:
    import torch

    global _WORKER_JOB
    torch.set_num_threads(1)
    _WORKER_JOB = job
    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()


def _run_in_worker(task: tuple) -> dict:
    assert _WORKER_JOB is not None
    return _write_case(_WORKER_JOB, *task)


def _run_jobs(job: _Job, todo: list[tuple], num_workers: int, progress: bool):
    """Yield one result dict per task, in completion order, with a progress bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc="preprocess", unit="case", disable=not progress or not todo)
    try:
        if num_workers <= 0 or len(todo) <= 1:
            for task in todo:
                result = _write_case(job, *task)
                bar.update()
                yield result
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(num_workers, len(todo)), context, _init_worker, (job,)) as pool:
            futures = {pool.submit(_run_in_worker, task): task[1] for task in todo}
            try:
                for future in as_completed(futures):
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        result = {"case_id": futures[future], "ok": False,
                                  "reason": "its worker process died (out of memory?); run the preprocessing again"}
                    except Exception as err:  # pickling errors and the like
                        result = {"case_id": futures[future], "ok": False, "reason": f"{type(err).__name__}: {err}"}
                    bar.update()
                    yield result
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        bar.close()


def _write_case(job: _Job, case: dict, case_id: str, replace: bool) -> dict:
    """Check, transform and write one case atomically; return ``{"case_id", "ok", "reason" | "seconds", "bytes"}``."""
    from monai.transforms import Compose
    from monai.utils import convert_to_numpy

    started = time.perf_counter()
    sources = _source_files(case, job.base_dir)
    try:
        fingerprint = _fingerprint(sources)
        # an unlabelled case (the datalist's `unlabelled` list, for distillation only) is stored with an all-0
        # label; its first image file takes the label's place through the (geometric) transforms
        has_label = not case.get("unlabelled")
        if has_label and not case.get("label"):
            raise ValueError("no `label` file: training needs one per case (check `datalist`)")
        if not has_label and case.get("label"):
            raise ValueError("an `unlabelled` case has a `label` file: move it to the labelled cases (`datalist`)")
        if job.check_cases:
            check_case(case, job.base_dir, job.modalities, job.label_values, check_finite=True)
        item = {k: v for k, v in case.items() if k in ("image", "label")}
        images = sources[:-1] if has_label else sources
        item["image"] = images if isinstance(case["image"], (list, tuple)) else sources[0]
        item["label"] = sources[-1] if has_label else sources[0]
        transform = Compose([t for ts in job.transforms.values() for t in ts])
        try:
            out = transform(item)
        except Exception as err:
            cause = err.__cause__ or err
            raise ValueError(f"preprocessing transforms failed: {type(cause).__name__}: {cause}") from err
        image = convert_to_numpy(out["image"], dtype=np.float32)
        label = convert_to_numpy(out["label"])
        m, c = len(job.modalities), len(job.label_values)
        if image.ndim != 4 or image.shape[0] != m or label.shape != (1, *image.shape[1:]):
            raise ValueError(
                f"the transforms gave image {image.shape} and label {label.shape}; expected (M={m}, X, Y, Z) and "
                f"(1, X, Y, Z) (check `train#load_transforms`, `crop_transforms`, `intensity_transforms`)"
            )
        refusal, warning = grid_problems(image.shape[1:], f"the case's files ({', '.join(sources)})")
        if refusal:
            raise ValueError(refusal)
        if warning:
            logger.warning("Case %s: %s", case_id, warning)
        image16 = np.ascontiguousarray(np.moveaxis(image, -1, 0), dtype=IMAGE_DTYPE)  # (Z, M, X, Y)
        bad = ~np.isfinite(image16)
        if bad.any():
            channel = int(np.nonzero(bad.any(axis=(0, 2, 3)))[0][0])
            source = sources[channel] if isinstance(case["image"], (list, tuple)) else sources[0]
            raise ValueError(
                f"{int(bad.sum())} voxel(s) of {job.modalities[channel]} ({source}) are NaN/inf or beyond the "
                f"float16 range (+-65504) after preprocessing; check `intensity_transforms`"
            )
        label = np.moveaxis(label[0], -1, 0)  # (Z, X, Y)
        if not has_label:
            label = np.zeros(label.shape, dtype=LABEL_DTYPE)
        if label.size and (label.min() < 0 or label.max() >= c or not np.array_equal(label, np.round(label))):
            raise ValueError(
                f"label {sources[-1]} holds values outside `label_values` {job.label_values} after preprocessing "
                f"(classes found: {np.unique(label)[:10].tolist()})"
            )
        label8 = np.ascontiguousarray(label, dtype=LABEL_DTYPE)
        counts = np.stack([np.bincount(s.ravel(), minlength=c) for s in label8]) if len(label8) else np.zeros((0, c))
        affine = convert_to_numpy(getattr(out["image"], "affine", np.eye(4))).tolist()
        written = _commit(job, case_id, image16, label8, counts, fingerprint, affine, replace, has_label)
    except Exception as err:
        reason = str(err)
        if not any(os.path.basename(p) in reason for p in sources):
            reason += f" (files: {', '.join(sources)})"
        return {"case_id": case_id, "ok": False, "reason": reason}
    return {"case_id": case_id, "ok": True, "seconds": time.perf_counter() - started, "bytes": written}


def _commit(job: _Job, case_id: str, image: np.ndarray, label: np.ndarray, counts: np.ndarray,
            sources: list, affine: list, replace: bool, has_label: bool = True) -> int:
    """Write the case into a temporary folder, fsync, rename it into place; return the bytes written."""
    cases_dir = os.path.join(job.store_dir, CASES_DIR)
    final = os.path.join(cases_dir, case_id)
    tmp = os.path.join(cases_dir, f"{_TMP_PREFIX}{case_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp)
    try:
        image_bytes = _write_synced(os.path.join(tmp, IMAGE_FILE), lambda f: np.save(f, image, allow_pickle=False))
        label_bytes = _write_synced(os.path.join(tmp, LABEL_FILE), lambda f: np.save(f, label, allow_pickle=False))
        meta = {
            "case_id": case_id,
            "digest": job.digest,
            "shape": list(image.shape),
            "image_bytes": image_bytes,
            "label_bytes": label_bytes,
            "label_counts": counts.astype(int).tolist(),
            "slice_crc32": [[zlib.crc32(i), zlib.crc32(lb)] for i, lb in zip(image, label)],
            "affine": affine,
            "sources": sources,
            "labelled": has_label,
        }
        meta_bytes = _write_synced(os.path.join(tmp, CASE_FILE), lambda f: f.write(json.dumps(meta).encode()))
        fsync_dir(tmp)
        old = None
        if replace and os.path.isdir(final):
            old = os.path.join(cases_dir, f"{_OLD_PREFIX}{case_id}-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process completed this case meanwhile
        fsync_dir(cases_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return image_bytes + label_bytes + meta_bytes


def default_store_dir(
    store_root: str,
    modalities: Sequence[str],
    label_values: Sequence[int],
    pixdim: Sequence[float],
    transforms: Mapping[str, Sequence[Callable]],
) -> str:
    """``<store_root>/<first 16 hex digits of the settings digest>``: the folder of a :class:`SliceStore` with these
    arguments (config key ``store_dir`` by default, under ``store_root``), so that configs with other settings
    (another preset, ``pixdim``, modality list, transform) never share a folder. Nothing is created."""
    digest = SliceStore(os.path.join(os.fspath(store_root), "_"), modalities, label_values, pixdim, transforms).digest
    return os.path.join(os.fspath(store_root), digest[:16])
