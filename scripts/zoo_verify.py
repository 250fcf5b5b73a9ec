#!/usr/bin/env python
"""Run the MONAI Model Zoo's CI on the packed bundle as the zoo's own scripts run it, in a copy of a zoo checkout.

    python scripts/zoo_verify.py --zoo_dir /path/to/model-zoo [--zip dist/<name>_v<version>.zip]
        [--python /path/to/clean-venv/bin/python] [--install True] [--configs_only False] [--work_dir /tmp/zoo_verify]

``--zoo_dir`` is a checkout of https://github.com/Project-MONAI/model-zoo (nothing is cloned here; its ``ci/`` is
not vendored in this repository). In ``<work_dir>/model-zoo`` this lays out what a pull request adding the bundle
holds: the zoo's files, the zip unpacked as ``models/<name>/``, the bundle's unit test as
``ci/unit_tests/test_<name>.py`` and ``<name>`` in ``exclude_verify_torchscript_list`` of
``ci/bundle_custom_data.py`` (MONAI's Swin Transformer cannot be scripted); with ``--configs_only`` also in
``exclude_verify_preferred_files_list`` (a submission without ``models/model.pt``). Then the zoo's jobs, each step
as its script runs it, in its order, from the zoo root with ``PYTHONPATH`` the zoo root and ``ALLOW_MONAI_RC=true``:

* ``code format`` (the code-format workflow, ``runtests.sh --codeformat``): isort, black and flake8 with the
  checkout's ``setup.cfg`` / ``pyproject.toml`` on the bundle's ``scripts/`` and the unit test (this Python; needs
  the dev extra);
* ``premerge-cpu`` (``ci/run_premerge_cpu.sh``): ``pip install -r requirements.txt``; ``ci/prepare_schema.py``;
  ``pip install -r requirements-dev.txt``; ``ci/get_bundle_requirements.py --b <name>`` and ``pip install --pre -r``
  the file it names; ``ci/verify_bundle.py -b <name> -m min``;
* ``premerge-gpu`` (``ci/run_premerge_gpu.sh``): a new ``model_zoo_venv`` with ``pip install --upgrade pip wheel``
  and ``pip install -r requirements-dev.txt``; ``ci/get_bundle_requirements.py --b <name>`` and ``pip install --pre
  -r`` the file it names; the bundle's extra install script if the zoo lists one; ``ci/verify_bundle.py --b <name>``
  (mode ``full``); ``ci/unit_tests/runner.py --b <name>``.

The pip steps run only with ``--install`` (they need the package index); without it every step runs with
``--python`` (default: this interpreter), which must already hold what they install. ``ci/prepare_schema.py``
downloads the metadata schema: it runs as it is when the schema is reachable, otherwise its output, the schema
copied to ``models/<name>/eval/schema.json``, comes from the SHA-256-checked copy in ``scripts/resources`` (the
report says which). Nothing else is added: a zip without ``models/model.pt`` fails ``verify_bundle.py`` as it would
in the zoo (``necessary file models/model.pt is not existing``), unless ``--configs_only``. Prints one line per step
and what the zoo will do with the zip's weights; exit status 1 if any step failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import fire

from diffmed_monai.utils import sha256_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundle_tools import (  # noqa: E402
    RESOURCES,
    SCHEMA_SHA256,
    local_schema_path,
    pack_bundle,
    zoo_code_format,
)

NAME = "diffmed_dinov3_brats_segmentation"
UNIT_TEST = Path(__file__).resolve().parent / "zoo" / f"test_{NAME}.py"
EXCLUDE_LIST = "exclude_verify_torchscript_list"
PREFERRED_FILES_LIST = "exclude_verify_preferred_files_list"
JOBS = ("code format", "premerge-cpu", "premerge-gpu")


def add_exclusion(custom_data: Path, name: str, list_name: str = EXCLUDE_LIST) -> None:
    """Add ``name`` to ``list_name`` in the zoo's ``ci/bundle_custom_data.py`` (the entry the pull request adds)."""
    text = custom_data.read_text(encoding="utf-8")
    start = f"{list_name} = ["
    if start not in text:
        raise ValueError(f"{custom_data} has no `{start}`: the Model Zoo changed how it lists exclusions.")
    if f'"{name}"' not in text.split(start, 1)[1].split("]", 1)[0]:
        text = text.replace(start, f'{start}\n    "{name}",', 1)
        custom_data.write_text(text, encoding="utf-8")


def _run(step: str, cmd: list[str], cwd: Path, results: list, env: dict | None = None,
         timeout: int = 3600) -> str | None:
    """Run one step; record it; return its stdout when it passed, else ``None``."""
    proc = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, env=env, timeout=timeout)
    output = (proc.stdout + proc.stderr).strip()
    print(f"--- {step}: {' '.join(cmd)} (exit {proc.returncode})\n{output[-6000:]}", flush=True)
    results.append((step, proc.returncode))
    return proc.stdout if proc.returncode == 0 else None


def _skip(step: str, why: str, results: list) -> None:
    print(f"--- {step}: not run ({why})", flush=True)
    results.append((step, None))


def _reachable(url: str, timeout: float = 15.0) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:  # no network, DNS, proxy, TLS, HTTP error
        return False


def _prepare_schema(root: Path, bundle: Path, name: str, py: str, env: dict, results: list) -> None:
    """``ci/prepare_schema.py --l <name>`` when the schema's address answers; else its output from the checked copy."""
    schema_url = json.loads((bundle / "configs" / "metadata.json").read_text())["schema"]
    if _reachable(schema_url):
        _run("prepare schema", [py, "ci/prepare_schema.py", "--l", name], root, results, env)
        return
    schema = local_schema_path(schema_url)
    if schema is None or sha256_file(schema) != SCHEMA_SHA256.get(schema.name):
        raise FileNotFoundError(f"{schema_url} is unreachable and {RESOURCES} holds no checked copy of it.")
    (bundle / "eval").mkdir(exist_ok=True)
    shutil.copyfile(schema, bundle / "eval" / "schema.json")
    print(f"--- prepare schema: {schema_url} unreachable: models/{name}/eval/schema.json copied from {schema} "
          "(the SHA-256-checked copy of that file)", flush=True)
    results.append(("prepare schema", 0))


def _new_venv(root: Path, py: str, results: list, env: dict) -> str | None:
    """``python -m venv model_zoo_venv`` (init_venv of the zoo's premerge scripts); its Python, or ``None``."""
    venv = root / "model_zoo_venv"
    shutil.rmtree(venv, ignore_errors=True)
    if _run("venv", [py, "-m", "venv", str(venv)], root, results, env) is None:
        return None
    return str(venv / "bin" / "python")


def _premerge_cpu(root: Path, bundle: Path, name: str, py: str, install: bool, env: dict, results: list) -> None:
    """``verify_bundle`` of ``ci/run_premerge_cpu.sh`` for one changed bundle, in its order (no venv there)."""
    if install:
        _run("pip install -r requirements.txt", [py, "-m", "pip", "install", "-r", "requirements.txt"], root,
             results, env)
    _prepare_schema(root, bundle, name, py, env, results)
    if install:
        _run("pip install -r requirements-dev.txt", [py, "-m", "pip", "install", "-r", "requirements-dev.txt"], root,
             results, env)
    out = _run("get_bundle_requirements", [py, "ci/get_bundle_requirements.py", "--b", name], root, results, env)
    requirements = out.strip().splitlines()[-1] if out and out.strip() else ""
    if install and requirements:
        _run(f"pip install --pre -r {requirements}", [py, "-m", "pip", "install", "--pre", "-r", requirements],
             root, results, env)
    elif requirements:
        _skip(f"pip install --pre -r {requirements}", "--install False: --python holds them", results)
    _run("verify_bundle -m min", [py, "ci/verify_bundle.py", "-b", name, "-m", "min"], root, results, env)


def _premerge_gpu(root: Path, name: str, py: str, install: bool, env: dict, results: list) -> None:
    vpy = py
    if install:
        vpy = _new_venv(root, py, results, env) or py
        _run("venv: pip install --upgrade pip wheel", [vpy, "-m", "pip", "install", "--upgrade", "pip", "wheel"],
             root, results, env)
        _run("venv: pip install -r requirements-dev.txt", [vpy, "-m", "pip", "install", "-r", "requirements-dev.txt"],
             root, results, env)
    out = _run("get_bundle_requirements", [vpy, "ci/get_bundle_requirements.py", "--b", name], root, results, env)
    requirements = out.strip().splitlines()[-1] if out and out.strip() else ""
    if install and requirements:
        _run(f"venv: pip install --pre -r {requirements}", [vpy, "-m", "pip", "install", "--pre", "-r", requirements],
             root, results, env)
    out = _run("get extra install script", [vpy, "ci/get_bundle_requirements.py", "--b", name, "--get_script",
                                            "True"], root, results, env)
    script = out.strip().splitlines()[-1] if out and out.strip() else ""
    if script:
        if install:
            _run(f"bash {script}", ["bash", script], root, results, env)
        else:
            _skip(f"bash {script}", "--install False", results)
    _run("verify_bundle (full)", [vpy, "ci/verify_bundle.py", "--b", name], root, results, env)
    _run("unit test", [vpy, "ci/unit_tests/runner.py", "--b", name], root, results, env)
    shutil.rmtree(root / "model_zoo_venv", ignore_errors=True)


def weights_report(bundle: Path, configs_only: bool) -> str:
    """Whether the unpacked zip holds ``models/model.pt`` and what the zoo's ``verify_bundle.py`` does about it."""
    if (bundle / "models" / "model.pt").is_file():
        return "weights: models/model.pt is in the zip; verify_bundle.py loads it into network_def"
    if configs_only:
        return (f"weights: none in the zip; the bundle is in {PREFERRED_FILES_LIST} (a configs-only submission), so "
                "verify_bundle.py does not ask for models/model.pt")
    return ("weights: none in the zip; the zoo's verify_bundle.py refuses it (necessary file models/model.pt is not "
            "existing): pack with --weights (trained on BraTS), host them through large_files.yml, or submit "
            f"configs only with the bundle in {PREFERRED_FILES_LIST} (--configs_only True)")


def zoo_verify(zoo_dir: str, zip: str | None = None, python: str | None = None, install: bool = False,
               work_dir: str | None = None, name: str = NAME, configs_only: bool = False,
               jobs: str | tuple = JOBS) -> int:
    """Run the Model Zoo's CI jobs on the packed bundle; return 0 when every step passes (see the module docstring)."""
    zoo = Path(zoo_dir).resolve()
    if not (zoo / "ci" / "verify_bundle.py").is_file():
        raise FileNotFoundError(f"{zoo} is not a Model Zoo checkout (no ci/verify_bundle.py).")
    jobs = tuple(j.strip() for j in jobs.split(",")) if isinstance(jobs, str) else tuple(jobs)
    unknown = [j for j in jobs if j not in JOBS]
    if unknown:
        raise ValueError(f"Unknown job(s) {unknown} (`jobs`): choose from {list(JOBS)}.")
    work = Path(work_dir or tempfile.mkdtemp(prefix="zoo_verify_")).resolve()
    root = work / "model-zoo"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(zoo, root, ignore=shutil.ignore_patterns(".git", "__pycache__", "model_zoo_venv"))
    if zip is None:
        zip = pack_bundle(output_dir=str(work / "dist"), name=name)
    shutil.rmtree(root / "models" / name, ignore_errors=True)
    with zipfile.ZipFile(zip) as zf:
        zf.extractall(root / "models")
    bundle = root / "models" / name
    if not (bundle / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{zip} holds no {name}/configs/metadata.json.")
    test_file = root / "ci" / "unit_tests" / f"test_{name}.py"
    shutil.copyfile(UNIT_TEST, test_file)
    custom = root / "ci" / "bundle_custom_data.py"
    add_exclusion(custom, name)
    print(f"bundle: {bundle}\n{EXCLUDE_LIST} in ci/bundle_custom_data.py: + {name!r}", flush=True)
    if configs_only:
        add_exclusion(custom, name, PREFERRED_FILES_LIST)
        print(f"{PREFERRED_FILES_LIST} in ci/bundle_custom_data.py: + {name!r}", flush=True)
    weights = weights_report(bundle, configs_only)
    print(weights, flush=True)

    results: list[tuple[str, int | None]] = []
    py = python or sys.executable
    env = dict(os.environ, ALLOW_MONAI_RC="true", PYTHONPATH=str(root))  # as the zoo's premerge scripts set them
    if "code format" in jobs:
        code = sorted((bundle / "scripts").rglob("*.py")) + [test_file]
        try:  # the zoo's runtests.sh --codeformat, with the checkout's settings
            out = zoo_code_format(code, fix=False, style_dir=root)
            print(f"--- code format: {len(code)} files (exit 0)\n{out}", flush=True)
            results.append(("code format", 0))
        except (ValueError, RuntimeError) as err:
            print(f"--- code format (exit 1)\n{err}", flush=True)
            results.append(("code format", 1))
    if "premerge-cpu" in jobs:
        _premerge_cpu(root, bundle, name, py, install, env, results)
    if "premerge-gpu" in jobs:
        _premerge_gpu(root, name, py, install, env, results)

    lines = [f"{'SKIP' if rc is None else 'PASS' if rc == 0 else 'FAIL'}  {step}" for step, rc in results]
    print("\n".join(lines + [weights]), flush=True)
    return 0 if all(rc in (0, None) for _, rc in results) else 1


if __name__ == "__main__":
    sys.exit(fire.Fire(zoo_verify))
