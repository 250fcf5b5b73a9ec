"""Pack the bundle for the MONAI Model Zoo and check it the way the Model Zoo's CI does, offline.

Two entry points (command lines in ``scripts/pack_bundle.py`` and ``scripts/check_bundle.py``):

* :func:`pack_bundle` writes ``<output_dir>/<name>_v<version>.zip`` with a single top folder ``<name>/`` holding
  ``configs/``, ``docs/``, ``scripts/`` (if any), ``LICENSE``, ``large_files.yml`` and, optionally, the weights
  ``models/model.pt`` / ``models/model.ts``: the layout ``monai.bundle download`` and ``monai.bundle load`` expect.
* :func:`check_bundle` runs the Model Zoo checks (``ci/verify_bundle.py``: necessary and preferred files, version in
  the changelog, metadata against its JSON schema, network input/output shapes, TorchScript export) plus the ones
  its pre-commit hooks and unit tests run (4-space JSON, ``logging.conf`` accepted by MONAI's safe loader, train and
  inference workflow properties) and prints a PASS / WARN / FAIL / SKIP table.

The metadata schema is read from the copy kept in ``scripts/resources`` (MONAI's ``verify_metadata``
would otherwise download it): ``download_url`` skips the download when the target file exists, after checking
its SHA-256 against :data:`SCHEMA_SHA256`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BundleCheckReport",
    "CheckResult",
    "MAX_FILE_MB",
    "SCHEMA_SHA256",
    "check_bundle",
    "check_json_format",
    "check_logging_conf",
    "local_schema_path",
    "pack_bundle",
    "read_large_files",
    "verify_metadata_offline",
]

logger = logging.getLogger(__name__)

#: Folder of the meta-schemas kept beside this script.
RESOURCES = Path(__file__).resolve().parent / "resources"

#: SHA-256 of each shipped schema, checked before it is used (a modified copy is refused).
SCHEMA_SHA256 = {
    "meta_schema_20240725.json": "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678",
}

#: Model Zoo limit for a single file in the repository; larger files are hosted and listed in large_files.yml.
MAX_FILE_MB = 25.0

NECESSARY_FILES = ("configs/metadata.json", "LICENSE")
PREFERRED_FILES = ("configs/inference.json", "models/model.pt")
WEIGHT_FILES = ("models/model.pt", "models/model.ts")
LARGE_FILES_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")
#: Bundle folders copied whole into the zip (generated folders such as ``eval/`` or ``models/`` are not).
PACKED_FOLDERS = ("configs", "docs", "scripts")
#: Distribution names whose import name differs (used only to read the installed version).
_DIST_ALIASES = {"pytorch": "torch"}


# ----------------------------------------------------------------------------------------------------- helpers


def _read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(_DIST_ALIASES.get(dist, dist))
    except importlib.metadata.PackageNotFoundError:
        return None


def _error_text(err: BaseException, limit: int = 400) -> str:
    """The messages of an exception chain, innermost last, shortened to ``limit`` characters."""
    parts, seen = [], set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        msg = " ".join(str(cur).split())
        parts.append(f"{type(cur).__name__}: {msg}" if msg else type(cur).__name__)
        cur = cur.__cause__ or cur.__context__
    text = " <- ".join(reversed(parts)) if len(parts) > 1 else parts[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mb(nbytes: int) -> str:
    return f"{nbytes / 2**20:.2f} MB"


# ------------------------------------------------------------------------------------------------- metadata


def local_schema_path(schema: str) -> Path | None:
    """The shipped copy of the meta-schema named by ``schema`` (a URL or a file name), or ``None``."""
    name = str(schema).rstrip("/").rsplit("/", 1)[-1]
    path = RESOURCES / name
    return path if path.is_file() else None


def verify_metadata_offline(meta_file: str | os.PathLike, schema_file: str | os.PathLike | None = None) -> Path:
    """Validate ``meta_file`` with MONAI's ``verify_metadata`` against a local schema; return the schema used.

    ``schema_file`` defaults to the shipped copy of the schema the metadata names in ``"schema"``; a shipped copy
    must match its recorded SHA-256. Nothing is downloaded: ``download_url`` skips existing files.

    Raises:
        FileNotFoundError: no local copy of the named schema (pass ``schema_file``).
        ValueError: the metadata does not validate (MONAI's message), or it names no schema.
    """
    from monai.bundle import verify_metadata

    meta = _read_json(meta_file)
    url = meta.get("schema")
    if not url:
        raise ValueError(f"{meta_file}: no `schema` field (the URL of the metadata JSON schema).")
    hash_val, hash_type = None, None
    if schema_file is None:
        schema_path = local_schema_path(url)
        if schema_path is None:
            raise FileNotFoundError(
                f"No local copy of the schema {url!r} in {RESOURCES}; pass `schema_file` (a downloaded copy)."
            )
        hash_val, hash_type = SCHEMA_SHA256.get(schema_path.name), "sha256"
    else:
        schema_path = Path(schema_file)
        if not schema_path.is_file():
            raise FileNotFoundError(f"Schema file {schema_file} does not exist.")
    kwargs: dict[str, Any] = {"meta_file": str(meta_file), "filepath": str(schema_path), "create_dir": False}
    if hash_val is not None:
        kwargs.update(hash_val=hash_val, hash_type=hash_type)
    verify_metadata(**kwargs)
    return schema_path


# ---------------------------------------------------------------------------------------------- file checks


def check_json_format(path: str | os.PathLike, indent: int = 4) -> str | None:
    """``None`` if ``path`` is valid JSON formatted as the Model Zoo's ``pretty-format-json`` hook wants it.

    The hook (``--indent=4 --no-sort-keys``, ASCII output) rewrites each file as ``json.dumps(obj, indent=4)``
    plus a newline, keeping key order. Otherwise return a one-line description of the first difference.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
        obj = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"not valid JSON: {err}"
    expected = json.dumps(obj, indent=indent, ensure_ascii=True) + "\n"
    if text == expected:
        return None
    got_lines, want_lines = text.splitlines(), expected.splitlines()
    for i, (got, want) in enumerate(zip(got_lines, want_lines), start=1):
        if got != want:
            return f"line {i} is {got.strip()[:60]!r}, {indent}-space pretty-format gives {want.strip()[:60]!r}"
    if len(got_lines) != len(want_lines):
        return f"{len(got_lines)} lines, {indent}-space pretty-format gives {len(want_lines)}"
    return "differs from the pretty-format output in trailing whitespace or the final newline"


def check_logging_conf(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless MONAI's bundle loader accepts ``path`` and ``logging`` can apply it.

    The file goes through ``ConfigWorkflow(logging_file=...)``, which (MONAI >= 1.6) refuses logging INI files that
    name non-stdlib classes or non-literal arguments before applying them; the previous root logger is restored.
    """
    from monai.bundle import ConfigWorkflow

    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            empty = Path(tmp) / "empty.json"
            empty.write_text("{}")
            ConfigWorkflow(config_file=str(empty), logging_file=os.fspath(path), workflow_type=None)
    except Exception as err:
        raise ValueError(f"logging config {path} cannot be applied: {_error_text(err)}") from err
    finally:
        added = [h for h in root.handlers if h not in saved[1]]
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        for handler in added:
            with contextlib.suppress(Exception):
                handler.close()


def read_large_files(bundle_dir: str | os.PathLike) -> tuple[Path | None, list[dict]]:
    """``(path, entries)`` of the bundle's ``large_files.{yml,yaml,json}`` (``(None, [])`` if it has none).

    Raises ``ValueError`` if the file has no ``large_files`` list, or an entry lacks ``path``/``url`` or points
    outside the bundle.
    """
    from monai.bundle import ConfigParser

    bundle = Path(bundle_dir)
    found = [bundle / n for n in LARGE_FILES_NAMES if (bundle / n).is_file()]
    if not found:
        return None, []
    path = found[0]
    content = ConfigParser.load_config_file(str(path))
    entries = content.get("large_files") if isinstance(content, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: `large_files` must be a list (use `large_files: []` when nothing is hosted).")
    root = os.path.realpath(bundle)
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not entry.get("path") or not entry.get("url"):
            raise ValueError(f"{path}: entry {i} needs both `path` and `url`, got {entry!r}.")
        target = os.path.realpath(os.path.join(bundle, str(entry["path"])))
        if os.path.commonpath([root, target]) != root:
            raise ValueError(f"{path}: entry {i} path {entry['path']!r} points outside the bundle.")
        if entry.get("hash_type") and str(entry["hash_type"]).lower() not in ("md5", "sha1", "sha256", "sha512"):
            raise ValueError(f"{path}: entry {i} hash_type {entry['hash_type']!r} is not md5/sha1/sha256/sha512.")
    return path, [dict(e) for e in entries]


# --------------------------------------------------------------------------------------------------- packing


def _bundle_files(bundle: Path, include_weights: bool) -> tuple[list[str], list[str]]:
    """(files to pack, files left out), as POSIX paths relative to ``bundle``."""
    keep, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(bundle):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for fname in sorted(filenames):
            rel = (Path(dirpath) / fname).relative_to(bundle).as_posix()
            top = rel.split("/", 1)[0]
            if fname.startswith(".") or fname.endswith((".pyc", ".pyo")):
                skipped.append(rel)
            elif rel == "LICENSE" or rel in LARGE_FILES_NAMES or ("/" in rel and top in PACKED_FOLDERS):
                keep.append(rel)
            elif include_weights and rel in WEIGHT_FILES:
                keep.append(rel)
            else:
                skipped.append(rel)
    return keep, skipped


def pack_bundle(
    bundle_dir: str = "bundle",
    output_dir: str = "dist",
    name: str = "diffmed_dinov3_brats_segmentation",
    include_weights: bool = True,
    max_file_mb: float = MAX_FILE_MB,
) -> str:
    """Zip the bundle as the MONAI Model Zoo lays it out; return the zip path.

    The archive ``<output_dir>/<name>_v<version>.zip`` (version from ``configs/metadata.json``) holds one top
    folder ``<name>/`` with ``configs/``, ``docs/``, ``scripts/`` (if present), ``LICENSE``, ``large_files.yml``
    and, when ``include_weights``, ``models/model.pt`` and ``models/model.ts`` if they exist. Anything else in the
    bundle folder (training checkpoints, ``eval/``, predictions) is left out and listed.

    Args:
        bundle_dir: the bundle folder.
        output_dir: where the zip goes (created if needed).
        name: bundle name: the zip's top folder and the name ``monai.bundle load(name=...)`` finds it under.
        include_weights: pack ``models/model.pt`` / ``models/model.ts`` when present.
        max_file_mb: largest file allowed (Model Zoo: 25 MB) unless its path is listed in ``large_files.yml``.

    Raises:
        FileNotFoundError: the bundle lacks ``configs/metadata.json`` or ``LICENSE``.
        ValueError: a file is larger than ``max_file_mb`` and not listed in ``large_files.yml``, or a bad name.
    """
    bundle = Path(bundle_dir)
    missing = [f for f in NECESSARY_FILES if not (bundle / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{bundle}: missing {', '.join(missing)} (needed in every bundle).")
    if not name or any(c in name for c in "/\\") or name in (".", ".."):
        raise ValueError(f"Bundle name {name!r} must be a plain folder name.")
    version = str(_read_json(bundle / "configs" / "metadata.json").get("version", "")).strip()
    if not version:
        raise ValueError(f"{bundle}/configs/metadata.json has no `version`.")
    _, large_entries = read_large_files(bundle)
    listed = {Path(str(e["path"])).as_posix().lstrip("./") for e in large_entries}

    files, skipped = _bundle_files(bundle, include_weights)
    limit = int(max_file_mb * 2**20)
    too_big = [(rel, (bundle / rel).stat().st_size) for rel in files if (bundle / rel).stat().st_size > limit]
    refused = [(rel, size) for rel, size in too_big if rel not in listed]
    if refused:
        details = ", ".join(f"{rel} ({_mb(size)})" for rel, size in refused)
        raise ValueError(
            f"Files over {max_file_mb:g} MB that large_files.yml does not list: {details}. Host them and list them "
            "in large_files.yml (path, url, hash), or pack without them (include_weights=False for the weights)."
        )

    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"{name}_v{version}.zip"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".zip.tmp", dir=out_dir)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for rel in files:
                info = zipfile.ZipInfo(f"{name}/{rel}", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with open(bundle / rel, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(tmp, zip_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

    if skipped:
        print(f"left out of the zip: {', '.join(skipped)}")
    if include_weights and not any(rel in WEIGHT_FILES for rel in files):
        print("no models/model.pt or models/model.ts in the bundle: the zip holds no weights")
    print(f"{zip_path} ({_mb(zip_path.stat().st_size)}, {len(files)} files)")
    return str(zip_path)


# -------------------------------------------------------------------------------------------------- checking


@dataclass
class CheckResult:
    """One row of the report: ``status`` is PASS, WARN, FAIL or SKIP."""

    name: str
    status: str
    detail: str = ""


@dataclass
class BundleCheckReport:
    """All check rows; :attr:`ok` is False when any row FAILed."""

    bundle_dir: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(r.status == "FAIL" for r in self.results)

    def add(self, name: str, status: str, detail: str = "") -> CheckResult:
        row = CheckResult(name, status, detail)
        self.results.append(row)
        return row

    def status_of(self, name: str) -> str | None:
        return next((r.status for r in self.results if r.name == name), None)

    def table(self, width: int = 110) -> str:
        name_w = max([len("check")] + [len(r.name) for r in self.results])
        lines = [f"Bundle check: {self.bundle_dir}", f"{'check':<{name_w}}  result  detail", "-" * width]
        for r in self.results:
            lines.append(f"{r.name:<{name_w}}  {r.status:<6}  {r.detail}")
        counts = {s: sum(r.status == s for r in self.results) for s in ("PASS", "WARN", "FAIL", "SKIP")}
        lines += ["-" * width, "  ".join(f"{k} {v}" for k, v in counts.items()) + ("" if self.ok else "  => FAILED")]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


class _Check(contextlib.AbstractContextManager):
    """``with _Check(report, name) as c: ...`` records PASS (or ``c.set(...)``), or FAIL with the exception."""

    def __init__(self, report: BundleCheckReport, name: str) -> None:
        self.report, self.name = report, name
        self.status, self.detail = "PASS", ""

    def set(self, status: str, detail: str = "") -> None:
        self.status, self.detail = status, detail

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                return False
            self.status, self.detail = "FAIL", _error_text(exc)
        self.report.add(self.name, self.status, self.detail)
        return True


def _make_demo_dataset(root: str, num_cases: int = 3) -> str:
    """Synthetic BraTS-layout cases plus ``datalist.json`` (training/validation/testing) in ``root``."""
    from diffmed_monai.data import make_demo_dataset, scan_brats, split_cases, write_datalist

    make_demo_dataset(root, num_cases=num_cases, seed=0)
    cases, _ = scan_brats(root)
    train, val = split_cases(cases, val_fraction=0.34, seed=0)
    write_datalist(os.path.join(root, "datalist.json"), train, val, test=val)
    return root


def _config_keys(config_files: Sequence[str]) -> set[str]:
    keys: set[str] = set()
    for f in config_files:
        content = _read_json(f)
        if isinstance(content, Mapping):
            keys.update(str(k) for k in content)
    return keys


def _checkpoint_key(ckpt_file: str) -> str | None:
    """``"model"`` for a ``{"model": state_dict, ...}`` checkpoint, ``None`` for a bare state dict."""
    import torch

    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=True)
    return "model" if isinstance(ckpt, Mapping) and isinstance(ckpt.get("model"), Mapping) else None


def _random_checkpoint(config_files: Sequence[str], meta_file: str, overrides: Mapping, path: str, net_id: str) -> None:
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(config_files))
    parser.read_meta(meta_file)
    parser.update(dict(overrides))
    net = parser.get_parsed_content(net_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"model": net.state_dict()}, path)


def _check_workflow(
    report: BundleCheckReport,
    name: str,
    workflow_type: str,
    config_files: Sequence[str],
    meta_file: str,
    logging_file: str | bool,
    overrides: Mapping[str, Any],
) -> None:
    from monai.bundle import ConfigWorkflow

    with _Check(report, name) as c:
        wf = ConfigWorkflow(
            config_file=list(config_files),
            meta_file=meta_file,
            logging_file=logging_file,
            workflow_type=workflow_type,
            **dict(overrides),
        )
        wf.initialize()
        missing = wf.check_properties()
        if missing:
            c.set("FAIL", f"missing or wrongly referenced properties: {missing}")
        else:
            n = len(wf.properties or {})
            c.set("PASS", f"{n} {workflow_type} + meta properties resolve (ConfigWorkflow.check_properties)")


def check_bundle(
    bundle_dir: str = "bundle",
    dataset_dir: str | None = None,
    presets: str | Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    schema_file: str | None = None,
    net_id: str = "network_def",
    n: int = 1,
    properties: bool = True,
    verify_net: bool = True,
    export: bool = True,
    demo_cases: int = 3,
    work_dir: str | None = None,
    print_table: bool = True,
) -> BundleCheckReport:
    """Check a bundle like the MONAI Model Zoo CI (plus its pre-commit hooks and unit tests), offline.

    Rows: necessary files (``configs/metadata.json``, ``LICENSE``); preferred files (``configs/inference.json``,
    ``models/model.pt``: WARN when missing, the Model Zoo CI fails unless the bundle is exempted);
    ``large_files.yml``; file sizes (25 MB); version in changelog; MONAI / PyTorch / NumPy and required package
    versions against the installed ones; ``verify_metadata`` against the local schema; 4-space JSON; ``logging.conf``
    through MONAI's safe loader; train and inference ``ConfigWorkflow.check_properties()`` after ``initialize()``;
    ``verify_net_in_out`` on ``net_id``; ``ckpt_export`` with ``use_trace=True`` when ``models/model.pt`` exists
    (scripting is not supported by MONAI's SwinTransformer, MONAI issue #6823).

    Args:
        bundle_dir: the bundle folder.
        dataset_dir: data for the workflow property checks (a folder with ``datalist.json`` for training and
            cases for inference); by default synthetic demo cases are generated in a temporary folder.
        presets: extra config files merged over ``train.json`` and ``inference.json`` (e.g. ``bundle/configs/presets/tiny.json``
            for a small network); they must match ``models/model.pt`` if it exists.
        overrides: config id -> value overrides for every workflow (e.g. ``{"teacher_weights": "/models/vitb16"}``).
            The property checks also set ``cache_rate`` 0, ``num_workers`` 0 and, unless ``teacher_weights`` is
            given, ``teacher_random_init`` true, so no teacher weights are needed.
        schema_file: metadata JSON schema to use instead of the shipped copy.
        net_id: the network id for ``verify_net_in_out`` and ``ckpt_export``.
        n: value of ``n`` in the metadata's ``spatial_shape`` expressions for ``verify_net_in_out``.
        properties, verify_net, export: run those (slower) checks.
        demo_cases: number of synthetic cases when ``dataset_dir`` is not given.
        work_dir: folder for the temporary bundle root, demo data and exports (default: a temporary folder).
        print_table: print the report table.

    Returns:
        The report; ``report.ok`` is False when any row FAILed.
    """
    bundle = Path(bundle_dir).resolve()
    report = BundleCheckReport(str(bundle))
    presets_list = [str(Path(p).resolve()) for p in ([presets] if isinstance(presets, str) else list(presets or []))]
    user_overrides = dict(overrides or {})
    configs = bundle / "configs"
    meta_file = configs / "metadata.json"
    logging_file = configs / "logging.conf"

    # -- files
    with _Check(report, "files: necessary") as c:
        missing = [f for f in NECESSARY_FILES if not (bundle / f).is_file()]
        if missing:
            c.set("FAIL", f"missing {', '.join(missing)}")
        else:
            c.set("PASS", ", ".join(NECESSARY_FILES))
    with _Check(report, "files: preferred") as c:
        candidates = [configs / f"inference.{suffix}" for suffix in ("json", "yaml", "yml")]
        inference_cfg = next((p for p in candidates if p.is_file()), None)
        missing = ([] if inference_cfg else ["configs/inference.json"]) + [
            f for f in PREFERRED_FILES[1:] if not (bundle / f).is_file()
        ]
        if missing:
            c.set("WARN", f"missing {', '.join(missing)} (Model Zoo CI fails on these unless the bundle is in "
                          "exclude_verify_preferred_files_list; weights come from large_files.yml)")
        else:
            c.set("PASS", ", ".join(PREFERRED_FILES))
    with _Check(report, "large_files.yml") as c:
        path, entries = read_large_files(bundle)
        if path is None:
            c.set("WARN", "no large_files.yml: weights cannot be fetched with `monai.bundle download_large_files`")
        elif not entries:
            c.set("WARN", f"{path.name}: empty list, no hosted weights yet")
        else:
            absent = [e["path"] for e in entries if not (bundle / e["path"]).is_file()]
            no_hash = [e["path"] for e in entries if not e.get("hash_val")]
            detail = f"{len(entries)} entries ({', '.join(e['path'] for e in entries)})"
            if no_hash:
                detail += f"; no hash for {', '.join(no_hash)}"
            if absent:
                detail += f"; not downloaded here: {', '.join(absent)}"
            c.set("WARN" if no_hash else "PASS", detail)
    with _Check(report, "files: size <= 25 MB") as c:
        _, entries = read_large_files(bundle)
        listed = {Path(str(e["path"])).as_posix() for e in entries}
        big = []
        for dirpath, dirnames, filenames in os.walk(bundle):
            dirnames[:] = [d for d in dirnames if d not in ("eval", "__pycache__") and not d.startswith(".")]
            for fname in filenames:
                p = Path(dirpath) / fname
                rel = p.relative_to(bundle).as_posix()
                if p.stat().st_size > MAX_FILE_MB * 2**20 and rel not in listed:
                    big.append((rel, p.stat().st_size))
        weights = [(r, s) for r, s in big if r.startswith("models/")]
        others = [(r, s) for r, s in big if not r.startswith("models/")]
        if others:
            c.set("FAIL", "over 25 MB and not in large_files.yml: " + ", ".join(f"{r} ({_mb(s)})" for r, s in others))
        elif weights:
            c.set("WARN", "local weights over 25 MB, host them and list them in large_files.yml before submitting: "
                          + ", ".join(f"{r} ({_mb(s)})" for r, s in weights))
        else:
            c.set("PASS", "no file over 25 MB outside large_files.yml")

    meta: dict = {}
    with _Check(report, "metadata: version/changelog") as c:
        meta = _read_json(meta_file)
        version, changelog = meta.get("version"), meta.get("changelog")
        if not version or not isinstance(changelog, Mapping):
            c.set("FAIL", "needs `version` and a `changelog` dict")
        elif version not in changelog:
            c.set("FAIL", f"version {version} is not a key of `changelog`")
        else:
            c.set("PASS", f"version {version} in changelog")
    with _Check(report, "metadata: framework versions") as c:
        pins = {k: meta.get(f"{'pytorch' if k == 'torch' else k}_version") for k in ("monai", "torch", "numpy")}
        absent = [k for k, v in pins.items() if not v]
        differ = [
            f"{k} {v} (installed {_installed_version(k)})" for k, v in pins.items() if v and v != _installed_version(k)
        ]
        if absent:
            c.set("FAIL", f"missing monai_version/pytorch_version/numpy_version for {', '.join(absent)}")
        elif differ:
            c.set("WARN", "metadata differs from this environment: " + "; ".join(differ))
        else:
            c.set("PASS", ", ".join(f"{k} {v}" for k, v in pins.items()))
    with _Check(report, "metadata: required packages") as c:
        req = dict(meta.get("required_packages_version") or {})
        req.update(meta.get("optional_packages_version") or {})
        differ = [
            f"{k}=={v} (installed {_installed_version(k)})" for k, v in req.items() if _installed_version(k) != str(v)
        ]
        if not isinstance(meta.get("required_packages_version"), Mapping):
            c.set("FAIL", "`required_packages_version` must be a dict of exact versions")
        elif differ:
            c.set("WARN", "Model Zoo CI installs these exact pins; this environment differs: " + "; ".join(differ))
        else:
            c.set("PASS", f"{len(req)} pins match the installed versions")
    with _Check(report, "metadata: schema") as c:
        used = verify_metadata_offline(meta_file, schema_file)
        c.set("PASS", f"verify_metadata against {used.name} (local copy)")

    # -- formats
    with _Check(report, "json: 4-space format") as c:
        json_files = sorted(configs.rglob("*.json"))
        json_files += [bundle / f for f in LARGE_FILES_NAMES if f.endswith(".json") and (bundle / f).is_file()]
        problems = [f"{p.relative_to(bundle).as_posix()}: {err}" for p in json_files if (err := check_json_format(p))]
        if problems:
            c.set("FAIL", "; ".join(problems))
        else:
            c.set("PASS", f"{len(json_files)} JSON files")
    with _Check(report, "logging.conf") as c:
        if not logging_file.is_file():
            c.set("WARN", "no configs/logging.conf (every Model Zoo bundle ships one)")
        else:
            check_logging_conf(logging_file)
            c.set("PASS", "accepted by MONAI's safe logging loader")

    inference_cfg = configs / "inference.json"
    train_cfg = configs / "train.json"
    heavy = properties or verify_net or export
    if not heavy:
        for row in ("properties: train", "properties: inference", "verify_net_in_out", "ckpt_export (trace)"):
            report.add(row, "SKIP", "not requested")
        _finish(report, print_table)
        return report

    with contextlib.ExitStack() as stack:
        if work_dir:
            work = Path(work_dir)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bundle_check_")))
        work.mkdir(parents=True, exist_ok=True)
        infer_files = [str(inference_cfg)] + presets_list
        ckpt = bundle / "models" / "model.pt"

        if properties:
            data_dir = dataset_dir
            if data_dir is None:
                try:
                    data_dir = _make_demo_dataset(str(work / "demo_data"), demo_cases)
                except Exception as err:  # the package's demo generator is missing or broken
                    data_dir = None
                    report.add("properties: demo data", "FAIL", _error_text(err))
            base = {"cache_rate": 0.0, "num_workers": 0}
            if train_cfg.is_file() and data_dir is not None:
                train_files = [str(train_cfg)] + presets_list
                keys = _config_keys(train_files)
                ov = {k: v for k, v in base.items() if k in keys}
                if "teacher_random_init" in keys and "teacher_weights" not in user_overrides:
                    ov["teacher_random_init"] = True
                ov.update(user_overrides)
                ov.update(bundle_root=str(work / "train_root"), dataset_dir=str(data_dir))
                _check_workflow(report, "properties: train", "train", train_files, str(meta_file),
                                str(logging_file) if logging_file.is_file() else False, ov)
            elif not train_cfg.is_file():
                report.add("properties: train", "SKIP", "no configs/train.json")
            if inference_cfg.is_file() and data_dir is not None:
                root = work / "infer_root"
                (root / "models").mkdir(parents=True, exist_ok=True)
                target = root / "models" / "model.pt"
                ov = {k: v for k, v in base.items() if k in _config_keys(infer_files)}
                ov.update(user_overrides)
                if ckpt.is_file():
                    if not target.exists():
                        shutil.copyfile(ckpt, target)
                    note = "with models/model.pt"
                else:
                    try:
                        _random_checkpoint(infer_files, str(meta_file), ov, str(target), net_id)
                        note = "with a random checkpoint (no models/model.pt)"
                    except Exception as err:
                        note = f"checkpoint could not be built: {_error_text(err, 150)}"
                ov.update(bundle_root=str(root), dataset_dir=str(data_dir))
                _check_workflow(report, "properties: inference", "infer", infer_files, str(meta_file),
                                str(logging_file) if logging_file.is_file() else False, ov)
                row = report.results[-1]
                row.detail = f"{row.detail} [{note}]"
            elif not inference_cfg.is_file():
                report.add("properties: inference", "SKIP", "no configs/inference.json")
        else:
            report.add("properties: train", "SKIP", "not requested")
            report.add("properties: inference", "SKIP", "not requested")

        if verify_net and inference_cfg.is_file():
            from monai.bundle import verify_net_in_out

            with _Check(report, "verify_net_in_out") as c:
                verify_net_in_out(net_id=net_id, meta_file=str(meta_file), config_file=infer_files, n=n,
                                  device="cpu", bundle_root=str(bundle), **user_overrides)
                c.set("PASS", f"`{net_id}` maps network_data_format inputs to outputs (n={n})")
        else:
            report.add("verify_net_in_out", "SKIP", "not requested" if not verify_net else "no configs/inference.json")

        if export and inference_cfg.is_file() and ckpt.is_file():
            import torch
            from monai.bundle import ckpt_export

            with _Check(report, "ckpt_export (trace)") as c:
                shape = _export_input_shape(meta)
                out = work / "export" / "model.ts"
                out.parent.mkdir(parents=True, exist_ok=True)
                ckpt_export(net_id=net_id, filepath=str(out), ckpt_file=str(ckpt), meta_file=str(meta_file),
                            config_file=infer_files, key_in_ckpt=_checkpoint_key(str(ckpt)), use_trace=True,
                            input_shape=shape, bundle_root=str(bundle), **user_overrides)
                ts = torch.jit.load(str(out), map_location="cpu")
                with torch.no_grad():
                    y = ts(torch.randn(*shape))
                detail = f"traced at {list(shape)} -> {list(y.shape)}"
                shipped = bundle / "models" / "model.ts"
                if shipped.is_file():
                    torch.jit.load(str(shipped), map_location="cpu")
                    detail += "; models/model.ts loads"
                c.set("PASS", detail + " (torch.jit.script is not supported: MONAI #6823)")
        else:
            if not export:
                why = "not requested"
            elif not inference_cfg.is_file():
                why = "no configs/inference.json"
            else:
                why = "no models/model.pt (export needs trained weights)"
            report.add("ckpt_export (trace)", "SKIP", why)

    _finish(report, print_table)
    return report


def _export_input_shape(meta: Mapping) -> list[int]:
    """``[1, C, 256, 256]``-style tracing shape from the metadata (256 per spatial dim, a multiple of 16 and 32)."""
    image = meta.get("network_data_format", {}).get("inputs", {}).get("image", {})
    channels = int(image.get("num_channels", 1))
    dims = len(image.get("spatial_shape", [0, 0]))
    return [1, channels] + [256] * dims


def _finish(report: BundleCheckReport, print_table: bool) -> None:
    if print_table:
        print(report.table(), flush=True)
