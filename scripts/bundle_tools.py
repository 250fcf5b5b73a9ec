"""Pack the bundle for the MONAI Model Zoo, self-contained, and the checks the Model Zoo runs besides its CI scripts.

Command lines: ``scripts/pack_bundle.py``, ``scripts/check_bundle.py`` and ``scripts/zoo_verify.py`` (the Model Zoo's
own ``ci/verify_bundle.py`` and the bundle's unit test, run on a packed zip in a Model Zoo checkout).

* :func:`pack_bundle` writes ``<output_dir>/<name>_v<version>.zip`` with a single top folder ``<name>/`` holding
  ``configs/`` (presets included), ``docs/``, ``scripts/``, ``LICENSE``, ``large_files.yml`` and, optionally,
  ``models/model.pt``. The runtime code the configs need is copied from the ``diffmed_monai`` package into
  ``scripts/`` at pack time (the repository keeps one source) and every ``diffmed_monai`` reference is renamed to
  ``scripts``, so the zip needs only packages from the package index; the copy is formatted and checked with the
  Model Zoo's isort, black and flake8 settings (``resources/zoo_style``). ``weights`` puts a trained checkpoint
  into ``models/model.pt`` and records its SHA-256 in ``large_files.yml``.
* :func:`check_bundle` runs what the Model Zoo checks outside ``ci/verify_bundle.py``: its pre-commit JSON format,
  ``logging.conf`` through MONAI's safe loader, ``large_files.yml`` and file sizes, the code format of
  ``scripts/``, that a packed bundle's configs need no ``diffmed_monai``, and (``resolve=True``, network) that the
  metadata pins have wheels for the Model Zoo CI's Python.
* :func:`metadata_requirements` and :func:`resolve_pins`: the pins the Model Zoo CI installs
  (``ci/get_bundle_requirements.py``) and their resolution with pip for another Python version.

The metadata schema is read from the copy kept in ``scripts/resources`` (MONAI's ``verify_metadata``
would otherwise download it): ``download_url`` skips the download when the target file exists, after checking
its SHA-256 against :data:`SCHEMA_SHA256`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffmed_monai.utils import sha256_file

__all__ = [
    "BundleCheckReport",
    "CheckResult",
    "MAX_FILE_MB",
    "SCHEMA_SHA256",
    "ZOO_CI_PYTHON",
    "check_bundle",
    "check_json_format",
    "check_logging_conf",
    "copy_runtime_code",
    "index_unreachable",
    "lazy_bundle_imports",
    "local_schema_path",
    "metadata_requirements",
    "pack_bundle",
    "read_large_files",
    "read_weights",
    "resolve_pins",
    "verify_metadata_offline",
    "zoo_code_format",
]

logger = logging.getLogger(__name__)

#: Folder of the meta-schemas (and the Model Zoo's code-format settings) kept beside this script.
RESOURCES = Path(__file__).resolve().parent / "resources"
#: The Model Zoo's ``setup.cfg`` (flake8, isort) and ``pyproject.toml`` (black), copied verbatim (see its README).
ZOO_STYLE = RESOURCES / "zoo_style"
#: The package whose modules become the bundle's ``scripts/`` when packed, and what of it the bundle does not need.
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "diffmed_monai"
PACKAGE_NAME = "diffmed_monai"
PACKAGE_LEFT_OUT = ("cli.py",)
#: The presets (the repository's top-level ``configs/``): the zip gets them in ``configs/presets/``.
PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"
#: Import name of the bundle's own code (Model Zoo convention: ``"_target_": "scripts...."``).
BUNDLE_CODE = "scripts"
#: Python of the Model Zoo CI (``python-version: 3.10.14`` in its premerge-cpu and code-format workflows).
ZOO_CI_PYTHON = "3.10"
#: Index the pins are resolved against.
PIN_INDEX_URL = "https://pypi.org/simple"

#: SHA-256 of each shipped schema, checked before it is used (a modified copy is refused).
SCHEMA_SHA256 = {
    "meta_schema_20240725.json": "cd64aa8a5904426f6fc6855dabe46af8c742d5bad644b4e9cfb78ebad09ad678",
}

#: Model Zoo limit for a single file in the repository; larger files are hosted and listed in large_files.yml.
MAX_FILE_MB = 25.0

NECESSARY_FILES = ("configs/metadata.json", "LICENSE")
WEIGHT_FILES = ("models/model.pt", "models/model.ts")
LARGE_FILES_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")
#: Bundle folders copied whole into the zip (generated folders such as ``eval/`` or ``models/`` are not).
PACKED_FOLDERS = ("configs", "docs", "scripts")


# ----------------------------------------------------------------------------------------------------- helpers


def _read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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


# ------------------------------------------------------------------------------------------------------- pins


def metadata_requirements(meta: Mapping) -> list[str]:
    """``name==version`` lines the Model Zoo CI installs for ``meta`` (``ci/get_bundle_requirements.py``: monai,
    torch, numpy, then the optional and the required packages)."""
    reqs = []
    for key, dist in (("monai_version", "monai"), ("pytorch_version", "torch"), ("numpy_version", "numpy")):
        if meta.get(key):
            reqs.append(f"{dist}=={meta[key]}")
    for key in ("optional_packages_version", "required_packages_version"):
        reqs += [f"{name}=={version}" for name, version in (meta.get(key) or {}).items()]
    return reqs


def _pip_env() -> dict[str, str]:
    """This environment without pip's configuration (local indexes, find-links, constraints): PyPI only."""
    keep = {"PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_DISABLE_PIP_VERSION_CHECK"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def index_unreachable(index_url: str = PIN_INDEX_URL, timeout: float = 15.0) -> str | None:
    """``None`` if the package index answers, else why not."""
    try:
        with urllib.request.urlopen(f"{index_url.rstrip('/')}/pip/", timeout=timeout) as response:
            response.read(1)
    except Exception as err:  # no network, DNS, proxy, TLS
        return f"{index_url} is unreachable ({_error_text(err, 200)})"
    return None


def _pip_resolve(requirements: Sequence[str], python_version: str, index_url: str, workdir: str) -> tuple[int, str]:
    report = os.path.join(workdir, "report.json")
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
           "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
           "--target", os.path.join(workdir, "target"), "--index-url", index_url, "--report", report, "--quiet",
           *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_pip_env(), timeout=600)
    return proc.returncode, proc.stderr + proc.stdout


def resolve_pins(
    requirements: Sequence[str], python_version: str = ZOO_CI_PYTHON, index_url: str = PIN_INDEX_URL
) -> dict[str, str]:
    """Resolve each exact pin to a wheel for CPython ``python_version`` on ``index_url``; return {pin: wheel}.

    pip runs as ``pip install --dry-run --no-deps --only-binary=:all: --python-version ...`` (what
    ``pip download`` would fetch, reading only the wheels' metadata) without this machine's pip configuration.

    Raises:
        ValueError: the pins that have no wheel for that Python, each with pip's message.
    """
    with tempfile.TemporaryDirectory(prefix="pins_") as tmp:
        code, out = _pip_resolve(requirements, python_version, index_url, tmp)
        if code == 0:
            with open(os.path.join(tmp, "report.json"), encoding="utf-8") as f:
                report = json.load(f)
            wheels = {}
            for item in report["install"]:
                name = item["metadata"]["name"].lower().replace("_", "-")
                wheels[name] = item["download_info"]["url"].rsplit("/", 1)[-1]
            return {req: wheels.get(req.split("==")[0].lower().replace("_", "-"), "?") for req in requirements}
        failed = []
        for req in requirements:  # one at a time, to name every pin that fails
            code, out = _pip_resolve([req], python_version, index_url, tmp)
            if code != 0:
                lines = [ln.strip() for ln in out.splitlines() if ln.startswith("ERROR")]
                failed.append(f"{req}: {lines[0] if lines else out.strip()[-300:]}")
        if not failed:  # each pin alone resolves: they conflict with each other
            code, out = _pip_resolve(requirements, python_version, index_url, tmp)
            failed.append(f"together: {out.strip()[-500:]}")
    raise ValueError(f"no wheel for Python {python_version} on {index_url}: " + "; ".join(failed))


# ------------------------------------------------------------------------------------------- bundle code copy


def rewrite_package_references(text: str) -> str:
    """``text`` with every ``diffmed_monai`` (module path or import) renamed to the bundle's ``scripts``."""
    return re.sub(rf"\b{PACKAGE_NAME}\b", BUNDLE_CODE, text)


#: First ``initialize`` expression of every packed config: ``bundle_root`` goes on ``sys.path`` so that ``scripts``
#: imports from the bundle whatever the working directory (MONAI's ``ConfigWorkflow.run`` adds the configs' parent
#: folder too, but only after ``initialize``, and ``monai.bundle.load`` builds ``network_def`` without ``run``).
BUNDLE_PATH_EXPR = ("$sys.path.insert(1, os.path.abspath(@bundle_root)) "
                    "if os.path.abspath(@bundle_root) not in sys.path else None")
_CODE_IMPORT = re.compile(rf"^\$\s*(import|from)\s+{BUNDLE_CODE}\b")
_CODE_ATTRIBUTE = re.compile(rf"\b{BUNDLE_CODE}\.(\w+)\.")
#: ``importlib.import_module`` under a name without "import" (MONAI parses any expression holding "import" as an
#: import statement first, which fails on its ``@`` references).
_CODE_LOADER = "bundle_module"


def lazy_bundle_imports(config: dict) -> dict:
    """A packed config (after :func:`rewrite_package_references`) whose ``scripts`` imports follow ``bundle_root``.

    MONAI evaluates every ``$import`` of ``imports`` when the first config item is resolved, so ``$import
    scripts...`` would fail (and stay failed) when the working directory is not the bundle's. Here those imports
    are dropped, every ``$`` expression reads ``scripts.<module>.<name>`` as ``bundle_module('scripts.<module>')
    .<name>`` (``importlib.import_module``, imported when evaluated), and each ``initialize`` list starts with
    :data:`BUNDLE_PATH_EXPR`. ``"_target_"`` names are located when instantiated and need no change.
    """
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, str) and value.startswith("$") and not _CODE_IMPORT.match(value):
            return _CODE_ATTRIBUTE.sub(rf"{_CODE_LOADER}('{BUNDLE_CODE}.\1').", value)
        return value

    out = {}
    for key, value in config.items():
        if key in ("imports", "+imports") and isinstance(value, list):
            value = [v for v in value if not (isinstance(v, str) and _CODE_IMPORT.match(v))]
            if key == "imports":
                value += [v for v in (f"$from importlib import import_module as {_CODE_LOADER}", "$import os",
                                      "$import sys") if v not in value]
            elif not value:
                continue
        elif key == "initialize" and isinstance(value, list):
            value = [BUNDLE_PATH_EXPR] + list(value)
        out[key] = walk(value)
    return out


def copy_runtime_code(dest: str | os.PathLike, package_dir: str | os.PathLike = PACKAGE_DIR) -> list[Path]:
    """Copy the package's modules (all but the command line) into ``dest``, the bundle's ``scripts/``.

    Each module keeps its place in the package (``networks/diffmed.py`` -> ``scripts/networks/diffmed.py``) and
    every ``diffmed_monai`` reference is renamed to ``scripts``. An existing file is never replaced. Returns the
    written files.
    """
    src, out = Path(package_dir), Path(dest)
    written = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src)
        if "__pycache__" in rel.parts or rel.as_posix() in PACKAGE_LEFT_OUT or rel.parts[0] == "bundle":
            continue
        target = out / rel
        if target.exists():
            raise FileExistsError(f"{target} exists: the bundle's own scripts/ and the package's modules overlap.")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rewrite_package_references(path.read_text(encoding="utf-8")), encoding="utf-8")
        written.append(target)
    return written


#: (module run with ``python -m``, import name) of each code-format tool and flake8 plugin of the Model Zoo.
_FORMAT_TOOLS = (("isort", "isort"), ("black", "black"), ("flake8", "flake8"), ("flake8-bugbear", "bugbear"),
                 ("flake8-comprehensions", "flake8_comprehensions"), ("pep8-naming", "pep8ext_naming"))


def zoo_code_format(
    files: Sequence[str | os.PathLike], fix: bool = True, style_dir: str | os.PathLike = ZOO_STYLE
) -> str:
    """Format ``files`` with isort and black (``fix``), then check them with isort, black and flake8.

    The settings are the Model Zoo's (``setup.cfg``: flake8 and isort; ``pyproject.toml``: black, in
    ``style_dir``) and the flags of its ``runtests.sh --codeformat`` (``black --skip-magic-trailing-comma``,
    ``flake8 --count --statistics``). Files are passed by name, so no exclude pattern can skip them. Returns the
    tools' output.

    Raises:
        RuntimeError: a tool or flake8 plugin is not installed (``pip install -e ".[dev]"``).
        ValueError: a check failed; the message holds the tools' output.
    """
    import importlib.util

    missing = [dist for dist, module in _FORMAT_TOOLS if importlib.util.find_spec(module) is None]
    if missing:
        raise RuntimeError(f"The Model Zoo's code-format tools are missing: {', '.join(missing)} "
                           "(pip install -e \".[dev]\").")
    style = Path(style_dir)
    names = [os.fspath(f) for f in files]
    isort = [sys.executable, "-m", "isort", "--settings-path", str(style / "setup.cfg")]
    black = [sys.executable, "-m", "black", "--config", str(style / "pyproject.toml"), "--skip-magic-trailing-comma"]
    runs = []
    if fix:
        runs += [isort + names, black + ["-q"] + names]
    checks = [isort + ["--check"] + names, black + ["--check"] + names,
              [sys.executable, "-m", "flake8", "--config", str(style / "setup.cfg"), "--count", "--statistics"]
              + names]
    for cmd in runs:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise ValueError(f"{cmd[2]} could not format the code:\n{proc.stdout}{proc.stderr}")
    out, failed = [], []
    for cmd in checks:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        out.append(f"$ {cmd[2]} ({proc.returncode})\n{proc.stdout}{proc.stderr}".rstrip())
        if proc.returncode != 0:
            failed.append(cmd[2])
    text = "\n".join(out)
    if failed:
        raise ValueError(f"Model Zoo code format: {', '.join(failed)} failed on {len(names)} files:\n{text}")
    return text


# ---------------------------------------------------------------------------------------------------- weights


def read_weights(path: str | os.PathLike) -> dict:
    """The network's state dict in ``path``: ``models/model.pt`` as training writes it (a bare state dict) or a
    training checkpoint ``{"model": state_dict, ...}``; read with ``torch.load(weights_only=True)``.

    Raises:
        ValueError: the file holds no state dict of tensors.
    """
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a readable weights file: {_error_text(err, 200)}") from err
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("model"), Mapping):
        ckpt = ckpt["model"]
    if not isinstance(ckpt, Mapping) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"{path} holds no network state dict (a dict of tensors, or a checkpoint with `model`).")
    return dict(ckpt)


def _check_weights(state: Mapping, config_files: Sequence[str], net_id: str = "network_def") -> None:
    """Raise ``ValueError`` unless ``state`` loads strictly into ``net_id`` built from ``config_files``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(config_files))
    net = parser.get_parsed_content(net_id)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        names = ", ".join(Path(f).name for f in config_files)
        raise ValueError(f"The weights do not fit `{net_id}` of {names} (pass the presets they were trained with): "
                         f"{_error_text(err, 600)}") from err


def _large_files_text(entries: Sequence[Mapping]) -> str:
    import yaml

    header = ("# Download links for the bundle's large files, in the MONAI Model Zoo format (written by\n"
              "# scripts/pack_bundle.py). Fetch them with\n"
              "#   python -m monai.bundle download_large_files --bundle_path <this bundle folder>\n")
    body = yaml.safe_dump({"large_files": [dict(e) for e in entries]}, sort_keys=False, default_flow_style=False)
    return header + body


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
    weights: str | None = None,
    weights_url: str | None = None,
    presets: str | Sequence[str] = (),
    self_contained: bool = True,
    code_format: bool = True,
    presets_dir: str | None = None,
) -> str:
    """Zip the bundle as the MONAI Model Zoo lays it out, with its runtime code; return the zip path.

    The archive ``<output_dir>/<name>_v<version>.zip`` (version from ``configs/metadata.json``) holds one top
    folder ``<name>/`` with ``configs/`` (the presets of ``presets_dir`` in ``configs/presets/``), ``docs/``,
    ``scripts/``, ``LICENSE``, ``large_files.yml`` and, when ``include_weights``, ``models/model.pt`` /
    ``models/model.ts`` if present.
    Anything else in the bundle folder (training checkpoints, ``eval/``, the store, predictions) is left out.

    Args:
        bundle_dir: the bundle folder.
        output_dir: where the zip goes (created if needed).
        name: bundle name: the zip's top folder and the name ``monai.bundle load(name=...)`` finds it under.
        include_weights: pack ``models/model.pt`` / ``models/model.ts`` when present.
        max_file_mb: largest file allowed (Model Zoo: 25 MB) unless its path is listed in ``large_files.yml``.
        weights: a trained ``model.pt`` (or a training checkpoint with ``model``) to pack as ``models/model.pt``
            (a bare state dict, what the Model Zoo's checks load); it must fit ``network_def`` of
            ``inference.json`` with ``presets``. Its SHA-256 goes into the ``models/model.pt`` entry of
            ``large_files.yml`` (created with ``weights_url``, the address it will be hosted at).
        weights_url: https address of the hosted ``model.pt`` (needs ``weights``).
        presets: the presets ``weights`` were trained with (names in ``presets_dir`` or paths).
        self_contained: copy the ``diffmed_monai`` modules into ``scripts/`` and rename the configs' references, so
            the zip needs no ``diffmed-monai`` package.
        code_format: format the copied code with the Model Zoo's isort and black settings and check it with
            flake8 (the Model Zoo's code-format job); a failure stops the packing.
        presets_dir: the folder of preset JSON files (default: the repository's ``configs/``).

    Raises:
        FileNotFoundError: the bundle lacks ``configs/metadata.json`` or ``LICENSE``, or a preset is missing.
        ValueError: a file is larger than ``max_file_mb`` and not listed in ``large_files.yml``, a bad name,
            weights that do not fit the network, or copied code that fails the Model Zoo's flake8.
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
    if weights_url is not None and (weights is None or not str(weights_url).startswith("https://")):
        raise ValueError("`weights_url` needs `weights` and must be an https address.")
    _, large_entries = read_large_files(bundle)

    files, skipped = _bundle_files(bundle, include_weights and weights is None)
    presets_dir = Path(presets_dir) if presets_dir else PRESETS_DIR
    preset_copies = {f"configs/presets/{p.name}": p for p in sorted(presets_dir.glob("*.json"))}
    files = [f for f in files if f not in preset_copies] + list(preset_copies)  # the repository's presets win
    notes = []
    with tempfile.TemporaryDirectory(prefix="diffmed_pack_") as tmp:
        stage = Path(tmp) / name
        for rel in files:
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            source = preset_copies.get(rel, bundle / rel)
            if self_contained and rel.startswith("configs/") and rel.endswith(".json"):
                text = rewrite_package_references(source.read_text(encoding="utf-8"))
                config = json.loads(text)
                if isinstance(config, dict) and rel != "configs/metadata.json":
                    text = json.dumps(lazy_bundle_imports(config), indent=4) + "\n"
                target.write_text(text, encoding="utf-8")
            else:
                shutil.copyfile(source, target)
        if self_contained:
            code = copy_runtime_code(stage / BUNDLE_CODE)
            files += [p.relative_to(stage).as_posix() for p in code]
            notes.append(f"runtime code: {len(code)} modules of {PACKAGE_NAME} in {BUNDLE_CODE}/")
            if code_format:
                zoo_code_format(sorted(p for p in (stage / BUNDLE_CODE).rglob("*.py")))
                notes.append("scripts/ formatted and checked with the Model Zoo's isort, black and flake8 settings")

        if weights is not None:
            state = read_weights(weights)
            preset_files = [str(Path(p) if str(p).endswith(".json") else presets_dir / f"{p}.json")
                            for p in ([presets] if isinstance(presets, str) else list(presets))]
            for f in preset_files:
                if not Path(f).is_file():
                    raise FileNotFoundError(f"Preset {f} does not exist.")
            _check_weights(state, [str(bundle / "configs" / "inference.json")] + preset_files)
            import torch

            (stage / "models").mkdir(parents=True, exist_ok=True)
            torch.save(state, stage / "models" / "model.pt")
            files = [f for f in files if f not in WEIGHT_FILES] + ["models/model.pt"]
            digest = sha256_file(stage / "models" / "model.pt")
            entry = next((e for e in large_entries if Path(str(e["path"])).as_posix() == "models/model.pt"), None)
            if weights_url is not None:
                large_entries = [e for e in large_entries if e is not entry]
                entry = {"path": "models/model.pt", "url": str(weights_url)}
                large_entries.insert(0, entry)
            if entry is not None:
                entry.update(hash_val=digest, hash_type="sha256")
                (stage / "large_files.yml").write_text(_large_files_text(large_entries), encoding="utf-8")
                for other in LARGE_FILES_NAMES[1:]:
                    if other in files:
                        (stage / other).unlink()
                        files.remove(other)
                if "large_files.yml" not in files:
                    files.append("large_files.yml")
            notes.append(f"models/model.pt from {weights} (sha256 {digest})"
                         + ("; large_files.yml lists it" if entry is not None else ""))

        listed = {Path(str(e["path"])).as_posix().lstrip("./") for e in large_entries}
        limit = int(max_file_mb * 2**20)
        sizes = {rel: (stage / rel).stat().st_size for rel in files}
        refused = [(rel, size) for rel, size in sizes.items() if size > limit and rel not in listed]
        if refused:
            details = ", ".join(f"{rel} ({_mb(size)})" for rel, size in refused)
            raise ValueError(
                f"Files over {max_file_mb:g} MB that large_files.yml does not list: {details}. Host them and list "
                "them in large_files.yml (`weights_url` does it for the weights), or pack without them "
                "(include_weights=False for the weights)."
            )

        out_dir = Path(output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        zip_path = out_dir / f"{name}_v{version}.zip"
        fd, tmp_zip = tempfile.mkstemp(prefix=f".{name}.", suffix=".zip.tmp", dir=out_dir)
        os.close(fd)
        try:
            with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for rel in sorted(files):
                    info = zipfile.ZipInfo(f"{name}/{rel}", date_time=(1980, 1, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    with open(stage / rel, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp_zip, zip_path)
        finally:
            if os.path.exists(tmp_zip):
                os.remove(tmp_zip)

    if skipped:
        print(f"left out of the zip: {', '.join(skipped)}")
    for note in notes:
        print(note)
    if not any(rel in WEIGHT_FILES for rel in files):
        print("no models/model.pt in the zip (pack_bundle --weights path/to/model.pt puts one in)")
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


def check_bundle(
    bundle_dir: str = "bundle",
    resolve: bool = False,
    python_version: str = ZOO_CI_PYTHON,
    index_url: str = PIN_INDEX_URL,
    print_table: bool = True,
) -> BundleCheckReport:
    """The Model Zoo's checks that its ``ci/verify_bundle.py`` does not run, on a bundle folder or a packed zip.

    ``ci/verify_bundle.py`` (files, large-file download, version and changelog, metadata schema, network shapes,
    TorchScript) and the bundle's unit test run for real with ``scripts/zoo_verify.py``; this adds, offline:

    * ``json: 4-space format``: every JSON file as the Model Zoo's ``pretty-format-json`` pre-commit hook writes it;
    * ``logging.conf``: accepted by MONAI's safe logging loader;
    * ``large_files.yml``: well-formed entries, each with a hash (WARN when there is none or no entry);
    * ``files: size``: no file over 25 MB outside ``large_files.yml``;
    * ``self-contained``: a bundle with ``scripts/`` (a packed one) has no config that needs ``diffmed_monai``;
      the source bundle (no ``scripts/``) is SKIPped: it imports the installed package;
    * ``code format``: ``scripts/`` passes the Model Zoo's isort, black and flake8 (SKIP without ``scripts/``);
    * ``pins: Python X`` (``resolve=True``, needs the index): every pin the Model Zoo CI installs has a wheel for
      its Python (:func:`resolve_pins`); SKIP when the index is unreachable.

    Returns:
        The report; ``report.ok`` is False when any row FAILed.
    """
    with contextlib.ExitStack() as stack:
        if str(bundle_dir).endswith(".zip"):
            from monai.apps.utils import extractall

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bundle_check_")))
            extractall(filepath=str(bundle_dir), output_dir=str(tmp), has_base=True)
            tops = [p for p in tmp.iterdir() if p.is_dir()]
            bundle = tops[0] if len(tops) == 1 else tmp
        else:
            bundle = Path(bundle_dir).resolve()
        report = _check(bundle, resolve, python_version, index_url)
    report.bundle_dir = str(bundle_dir)
    if print_table:
        print(report.table(), flush=True)
    return report


def _check(bundle: Path, resolve: bool, python_version: str, index_url: str) -> BundleCheckReport:
    report = BundleCheckReport(str(bundle))
    configs = bundle / "configs"
    with _Check(report, "json: 4-space format") as c:
        json_files = sorted(configs.rglob("*.json"))
        json_files += [bundle / f for f in LARGE_FILES_NAMES if f.endswith(".json") and (bundle / f).is_file()]
        problems = [f"{p.relative_to(bundle).as_posix()}: {err}" for p in json_files if (err := check_json_format(p))]
        if problems:
            c.set("FAIL", "; ".join(problems))
        else:
            c.set("PASS", f"{len(json_files)} JSON files")
    with _Check(report, "logging.conf") as c:
        if not (configs / "logging.conf").is_file():
            c.set("WARN", "no configs/logging.conf (every Model Zoo bundle ships one)")
        else:
            check_logging_conf(configs / "logging.conf")
            c.set("PASS", "accepted by MONAI's safe logging loader")
    entries: list[dict] = []
    with _Check(report, "large_files.yml") as c:
        path, entries = read_large_files(bundle)
        if path is None:
            c.set("WARN", "no large_files.yml: weights cannot be fetched with `monai.bundle download_large_files`")
        elif not entries:
            c.set("WARN", f"{path.name}: empty list, no hosted weights yet")
        else:
            no_hash = [e["path"] for e in entries if not e.get("hash_val")]
            detail = f"{len(entries)} entries ({', '.join(e['path'] for e in entries)})"
            c.set("WARN" if no_hash else "PASS", detail + (f"; no hash for {', '.join(no_hash)}" if no_hash else ""))
    with _Check(report, "files: size <= 25 MB") as c:
        listed = {Path(str(e["path"])).as_posix() for e in entries}
        big = []
        for dirpath, dirnames, filenames in os.walk(bundle):
            dirnames[:] = [d for d in dirnames if d not in ("eval", "store", "__pycache__") and not d.startswith(".")]
            for fname in filenames:
                p = Path(dirpath) / fname
                rel = p.relative_to(bundle).as_posix()
                if p.stat().st_size > MAX_FILE_MB * 2**20 and rel not in listed:
                    big.append(f"{rel} ({_mb(p.stat().st_size)})")
        if big:
            c.set("FAIL", "over 25 MB and not in large_files.yml: " + ", ".join(big))
        else:
            c.set("PASS", "no file over 25 MB outside large_files.yml")
    code = sorted((bundle / BUNDLE_CODE).rglob("*.py")) if (bundle / BUNDLE_CODE).is_dir() else []
    with _Check(report, "self-contained") as c:
        if not code:
            c.set("SKIP", f"no {BUNDLE_CODE}/: the source bundle imports the installed {PACKAGE_NAME} package "
                          "(pack_bundle makes the self-contained copy)")
        else:
            needs = [p.relative_to(bundle).as_posix() for p in sorted(configs.rglob("*.json")) + code
                     if re.search(rf"\b{PACKAGE_NAME}\b", p.read_text(encoding="utf-8"))]
            if needs:
                c.set("FAIL", f"{PACKAGE_NAME} is still referenced in: {', '.join(needs)}")
            else:
                c.set("PASS", f"configs and {len(code)} modules in {BUNDLE_CODE}/ need no {PACKAGE_NAME}")
    with _Check(report, "code format") as c:
        if not code:
            c.set("SKIP", f"no {BUNDLE_CODE}/")
        else:
            zoo_code_format(code, fix=False)
            c.set("PASS", f"{len(code)} files: the Model Zoo's isort, black and flake8 settings")
    name = f"pins: Python {python_version}"
    if not resolve:
        report.add(name, "SKIP", "not requested (resolve=True)")
    elif reason := index_unreachable(index_url):
        report.add(name, "SKIP", reason)
    else:
        with _Check(report, name) as c:
            reqs = metadata_requirements(_read_json(configs / "metadata.json"))
            resolve_pins(reqs, python_version, index_url)
            c.set("PASS", f"{len(reqs)} pins have a wheel for CPython {python_version} on {index_url}")
    return report
