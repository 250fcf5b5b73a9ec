"""Files the package writes: atomic writes, NIfTI names, and case ids that are plain file names.

A case id becomes a file or folder name (``<output_dir>/<case_id>_seg.nii.gz``, ``<store_dir>/cases/<case_id>``),
so it must be one plain name: a datalist ``case_id`` holding ``../elsewhere/x`` or an absolute path would otherwise
write outside the folder the user named.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "NIFTI_EXTS",
    "UnsafeNameError",
    "case_file_name",
    "case_id_of",
    "fsync_dir",
    "path_inside",
    "sha256_file",
    "strip_nifti_ext",
    "write_atomic",
]

#: file name endings of NIfTI volumes, longest first
NIFTI_EXTS = (".nii.gz", ".nii")

_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class UnsafeNameError(ValueError):
    """A case id that is not a plain file name (folders, ``..``, absolute paths, characters a name cannot hold)."""


def strip_nifti_ext(name: str, extra: tuple[str, ...] = ()) -> str:
    """``name`` without a NIfTI ending (``.nii.gz``, ``.nii``) or one of ``extra`` (e.g. ``(".npy",)``)."""
    for ext in NIFTI_EXTS + tuple(extra):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def case_file_name(case_id: Any, base_dir: str | None = None, where: str = "datalist") -> str:
    """``case_id`` as the plain file name it will be used as; raise :class:`UnsafeNameError` otherwise.

    Allowed: letters, digits, ``.``, ``_``, ``-``, starting with a letter or digit, at most 200 characters. One
    absolute form is accepted and reduced to its name: the path of an existing folder, or ``<base_dir>/<name>``,
    which is what MONAI's ``load_decathlon_datalist`` makes of a ``case_id`` when the dataset root holds a folder of
    that name (the BraTS layout). ``where`` names the datalist entry or config key for the message.
    """
    text = str(case_id)
    if os.path.isabs(text):
        parent, name = os.path.split(os.path.normpath(text))
        if os.path.isdir(text) or base_dir and parent == os.path.normpath(os.path.abspath(base_dir)):
            text = name
    if not _PLAIN_NAME.match(text) or text in (".", ".."):
        raise UnsafeNameError(
            f"case id {str(case_id)!r} ({where}) is not a plain file name: label maps, pictures and store folders are "
            "named after it, so it may hold only letters, digits, '.', '_' and '-' (no folders, no '..', no absolute "
            "path; at most 200 characters). Set `case_id` in that datalist entry to a plain name."
        )
    return text


def case_id_of(case: Mapping, base_dir: str | None = None, where: str = "datalist") -> str:
    """The case id of a datalist entry, as a plain file name (:func:`case_file_name`).

    Its ``case_id`` if it has one, else the first image file's name without its NIfTI (or ``.npy``) ending and, for
    a list of several modality files, without the ``_<modality>`` suffix (``BraTS2021_00000_t1.nii.gz`` ->
    ``BraTS2021_00000``). The one rule for the store, inference, evaluation and the input checks.
    """
    if not isinstance(case, Mapping):
        raise UnsafeNameError(f"{where} entry {case!r} is not a dict with `image` (and `label`) keys.")
    if case.get("case_id"):
        return case_file_name(case["case_id"], base_dir, where)
    image = case.get("image")
    files = [p for p in image if p] if isinstance(image, (list, tuple)) else [image] if image else []
    if not files:
        raise UnsafeNameError(f"{where} entry {dict(case)!r} has neither `case_id` nor `image`.")
    name = strip_nifti_ext(os.path.basename(str(files[0])), (".npy",))
    if isinstance(image, (list, tuple)) and len(image) > 1 and "_" in name:
        name = name.rsplit("_", 1)[0]
    return case_file_name(name, None, where)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the file at ``path``, read in 16 MiB blocks (a checkpoint never sits in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def path_inside(folder: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` (resolving links) lies inside ``folder``."""
    folder, path = os.path.realpath(folder), os.path.realpath(path)
    return os.path.commonpath([folder, path]) == folder and path != folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: str | os.PathLike) -> None:
    """Make renames and new names in folder ``path`` durable (no-op where a folder cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(
    path: str | os.PathLike,
    write: Callable[[Any], None],
    key: str | None = None,
    before_replace: Callable[[str], None] | None = None,
) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it and rename it over ``path``.

    A kill at any moment leaves either the old ``path`` or the new one, never a partial file (the temporary file
    ``.<name>.*.tmp`` may stay behind). The file gets the permissions of a new file under the umask. An ``OSError``
    (a full disk, a read-only folder) is raised again naming ``path`` and the config ``key``. ``before_replace(tmp)``
    runs once the temporary file is complete and durable, before the rename (e.g. to record its checksum).
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        with open(tmp, "wb") as f:  # by name: f.name is the temporary path
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if before_replace is not None:
            before_replace(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if isinstance(err, OSError):
            where = f" (config key `{key}`)" if key else ""
            raise OSError(err.errno, f"{err.strerror or err}: cannot write {path}{where}") from None
        raise
    fsync_dir(folder)
