#!/usr/bin/env python
"""Run the MONAI Model Zoo's own checks on the packed bundle, in a copy of a Model Zoo checkout.

    python scripts/zoo_verify.py --zoo_dir /path/to/model-zoo [--zip dist/<name>_v<version>.zip]
        [--python /path/to/clean-venv/bin/python] [--install True] [--work_dir /tmp/zoo_verify]

``--zoo_dir`` is a checkout of https://github.com/Project-MONAI/model-zoo (nothing is cloned or downloaded here;
its ``ci/`` scripts are not vendored in this repository). In ``<work_dir>/model-zoo`` it lays out what a pull request
adding the bundle would: the zoo's ``ci/`` and ``models/model_info.json``, the zip unpacked as ``models/<name>/``,
the bundle's unit test as ``ci/unit_tests/test_<name>.py`` and ``<name>`` added to ``exclude_verify_torchscript_list``
in ``ci/bundle_custom_data.py`` (MONAI's Swin Transformer cannot be scripted). Then, as the zoo's CI does:

1. ``code format``: isort, black and flake8 with the checkout's ``setup.cfg`` / ``pyproject.toml`` on the bundle's
   ``scripts/`` and the unit test (this Python; needs the dev extra);
2. ``requirements``: ``ci/get_bundle_requirements.py`` (``--install``: ``pip install --pre -r`` it into ``--python``);
3. ``schema``: the metadata schema copied to ``models/<name>/eval/schema.json`` as ``ci/prepare_schema.py`` does,
   from the SHA-256-checked copy in ``scripts/resources`` instead of a download;
4. ``fake weights``: without ``models/model.pt`` in the zip, the zoo's ``_produce_fake_weights`` writes random ones;
5. ``verify min`` / ``verify full``: ``ci/verify_bundle.py -b <name> -m min|full`` (the CPU and GPU premerge modes);
6. ``unit test``: ``ci/unit_tests/runner.py --b <name>``.

Steps 2-6 run with ``--python`` (default: this interpreter), so a clean virtual environment holding only the
metadata's packages shows that the bundle needs nothing else. Prints one line per step; exit status 1 if any failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bundle_tools import RESOURCES, SCHEMA_SHA256, _sha256, local_schema_path, pack_bundle, zoo_code_format  # noqa

NAME = "diffmed_dinov3_brats_segmentation"
UNIT_TEST = Path(__file__).resolve().parent / "zoo" / f"test_{NAME}.py"
EXCLUDE_LIST = "exclude_verify_torchscript_list"


def add_exclusion(custom_data: Path, name: str, list_name: str = EXCLUDE_LIST) -> None:
    """Add ``name`` to ``list_name`` in the zoo's ``ci/bundle_custom_data.py`` (the entry the pull request adds)."""
    text = custom_data.read_text(encoding="utf-8")
    start = f"{list_name} = ["
    if start not in text:
        raise ValueError(f"{custom_data} has no `{start}`: the Model Zoo changed how it lists exclusions.")
    if f'"{name}"' not in text.split(start, 1)[1].split("]", 1)[0]:
        text = text.replace(start, f'{start}\n    "{name}",', 1)
        custom_data.write_text(text, encoding="utf-8")


def _run(step: str, cmd: list[str], cwd: Path, results: list, env: dict | None = None, timeout: int = 1800) -> bool:
    proc = subprocess.run(cmd, cwd=str(cwd), capture_output=True, text=True, env=env, timeout=timeout)
    output = (proc.stdout + proc.stderr).strip()
    print(f"--- {step}: {' '.join(cmd)} (exit {proc.returncode})\n{output[-6000:]}", flush=True)
    results.append((step, proc.returncode))
    return proc.returncode == 0


def zoo_verify(zoo_dir: str, zip: str | None = None, python: str | None = None, install: bool = False,
               work_dir: str | None = None, name: str = NAME) -> int:
    """Run the Model Zoo's CI steps on the packed bundle; return 0 when all pass (see the module docstring)."""
    zoo = Path(zoo_dir).resolve()
    if not (zoo / "ci" / "verify_bundle.py").is_file():
        raise FileNotFoundError(f"{zoo} is not a Model Zoo checkout (no ci/verify_bundle.py).")
    work = Path(work_dir or tempfile.mkdtemp(prefix="zoo_verify_")).resolve()
    root = work / "model-zoo"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(zoo / "ci", root / "ci", ignore=shutil.ignore_patterns("__pycache__"))
    for extra in ("setup.cfg", "pyproject.toml"):
        shutil.copyfile(zoo / extra, root / extra)
    (root / "models").mkdir()
    shutil.copyfile(zoo / "models" / "model_info.json", root / "models" / "model_info.json")
    if zip is None:
        zip = pack_bundle(output_dir=str(work / "dist"), name=name)
    with zipfile.ZipFile(zip) as zf:
        zf.extractall(root / "models")
    bundle = root / "models" / name
    if not (bundle / "configs" / "metadata.json").is_file():
        raise FileNotFoundError(f"{zip} holds no {name}/configs/metadata.json.")
    test_file = root / "ci" / "unit_tests" / f"test_{name}.py"
    shutil.copyfile(UNIT_TEST, test_file)
    add_exclusion(root / "ci" / "bundle_custom_data.py", name)
    print(f"bundle: {bundle}\n{EXCLUDE_LIST} in ci/bundle_custom_data.py: + {name!r}", flush=True)

    results: list[tuple[str, int]] = []
    code = sorted((bundle / "scripts").rglob("*.py")) + [test_file]
    try:  # the zoo's runtests.sh --codeformat, with the checkout's settings
        out = zoo_code_format(code, fix=False, style_dir=root)
        print(f"--- code format: {len(code)} files (exit 0)\n{out}", flush=True)
        results.append(("code format", 0))
    except (ValueError, RuntimeError) as err:
        print(f"--- code format (exit 1)\n{err}", flush=True)
        results.append(("code format", 1))

    py = python or sys.executable
    env = dict(os.environ, ALLOW_MONAI_RC="true", PYTHONPATH=str(root))  # as the zoo's premerge scripts set them
    req_proc = subprocess.run([py, "ci/get_bundle_requirements.py", "--b", name], cwd=str(root), capture_output=True,
                              text=True, env=env)
    req_file = root / req_proc.stdout.strip().splitlines()[-1] if req_proc.stdout.strip() else None
    if req_proc.returncode != 0 or req_file is None or not req_file.is_file():
        print(f"--- requirements (exit 1)\n{req_proc.stdout}{req_proc.stderr}", flush=True)
        results.append(("requirements", 1))
    else:
        print(f"--- requirements: {req_file.name}\n{req_file.read_text()}", flush=True)
        results.append(("requirements", 0))
        if install:
            _run("install", [py, "-m", "pip", "install", "--pre", "-r", str(req_file)], root, results, env)

    schema_url = json.loads((bundle / "configs" / "metadata.json").read_text())["schema"]
    schema = local_schema_path(schema_url)
    if schema is None or _sha256(schema) != SCHEMA_SHA256.get(schema.name):
        raise FileNotFoundError(f"No checked copy of {schema_url} in {RESOURCES}.")
    (bundle / "eval").mkdir(exist_ok=True)
    shutil.copyfile(schema, bundle / "eval" / "schema.json")

    if not (bundle / "models" / "model.pt").is_file():
        (bundle / "models").mkdir(exist_ok=True)
        produce = ("import sys; sys.path[:0] = ['ci', sys.argv[1]]; from verify_bundle import _produce_fake_weights; "
                   "_produce_fake_weights(sys.argv[2], sys.argv[3], sys.argv[4], 'cpu')")
        _run("fake weights", [py, "-c", produce, str(bundle), str(bundle / "configs" / "inference.json"),
                              str(bundle / "configs" / "metadata.json"), name], root, results, env)
        if (root / "model.pt").is_file():  # the zoo writes it to the working directory
            shutil.move(str(root / "model.pt"), bundle / "models" / "model.pt")

    for mode in ("min", "full"):
        _run(f"verify {mode}", [py, "ci/verify_bundle.py", "-b", name, "-m", mode], root, results, env)
    _run("unit test", [py, "ci/unit_tests/runner.py", "--b", name], root, results, env)

    print("\n".join(f"{'PASS' if rc == 0 else 'FAIL'}  {step}" for step, rc in results), flush=True)
    return 0 if all(rc == 0 for _, rc in results) else 1


if __name__ == "__main__":
    sys.exit(fire.Fire(zoo_verify))
