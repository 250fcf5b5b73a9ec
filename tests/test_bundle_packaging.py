"""Bundle packaging for the MONAI Model Zoo: metadata and its schema, pins, logging.conf, JSON format,
large_files.yml, the self-contained zip (code copy, code format, weights), and the packed bundle used without the
diffmed_monai package (monai.bundle.load, the Model Zoo unit test); the Model Zoo's own CI scripts with
DIFFMED_ZOO_DIR."""

from __future__ import annotations

import configparser
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # the bundle tools are scripts, not part of the package

import bundle_tools  # noqa: E402
from bundle_tools import (  # noqa: E402
    SCHEMA_SHA256,
    ZOO_CI_PYTHON,
    ZOO_STYLE,
    check_bundle,
    check_json_format,
    check_logging_conf,
    index_unreachable,
    local_schema_path,
    metadata_requirements,
    pack_bundle,
    read_large_files,
    resolve_pins,
    verify_metadata_offline,
)

BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
TINY = REPO / "configs" / "tiny.json"
NAME = "diffmed_dinov3_brats_segmentation"


def _meta() -> dict:
    return json.loads(META.read_text(encoding="utf-8"))


def _copy_bundle(dst: Path) -> Path:
    """A copy of the bundle's source files (no generated folders or weights) to modify freely."""
    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("eval", "models", "__pycache__", "predictions"))
    (dst / "models").mkdir(exist_ok=True)
    return dst


def _needs_network():
    pytest.importorskip("diffmed_monai.networks")
    if not (CONFIGS / "inference.json").is_file():
        pytest.skip("bundle/configs/inference.json is not written yet")
    if not TINY.is_file():
        pytest.skip("configs/tiny.json is not written yet")


def _tiny_state_dict():
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.json"), str(TINY)])
    return parser.get_parsed_content("network_def").state_dict()


# --------------------------------------------------------------------------------------------- metadata/schema


def test_shipped_schema_is_the_recorded_published_copy():
    from jsonschema.validators import validator_for

    path = local_schema_path(_meta()["schema"])
    assert path is not None and path.name == "meta_schema_20240725.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SCHEMA_SHA256[path.name]
    schema = json.loads(path.read_text(encoding="utf-8"))
    validator_for(schema).check_schema(schema)
    assert {"schema", "version", "monai_version", "required_packages_version", "network_data_format"} <= set(
        schema["required"]
    )


def test_metadata_validates_against_local_schema():
    assert verify_metadata_offline(META).name == "meta_schema_20240725.json"


def test_metadata_missing_required_field_is_rejected(tmp_path):
    meta = _meta()
    del meta["authors"]
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps(meta, indent=4) + "\n")
    with pytest.raises(ValueError, match="authors"):
        verify_metadata_offline(bad)


def test_modified_schema_copy_is_refused(tmp_path, monkeypatch):
    from monai.apps.utils import HashCheckError

    fake = tmp_path / "meta_schema_20240725.json"
    fake.write_text('{"type": "object"}')
    monkeypatch.setattr(bundle_tools, "RESOURCES", tmp_path)
    with pytest.raises(HashCheckError):
        verify_metadata_offline(META)


def _install_requires() -> dict[str, SpecifierSet]:
    """setup.cfg's ``install_requires`` as {normalised name: specifier}."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg", encoding="utf-8")
    reqs = [Requirement(line) for line in parser["options"]["install_requires"].strip().splitlines() if line.strip()]
    return {canonicalize_name(r.name): r.specifier for r in reqs}


def test_metadata_versions_are_exact_and_allowed_by_setup_cfg():
    """The Model Zoo CI pip-installs ``name==version`` for each pin, so every pin must be an exact release that
    the package itself accepts; torch is pinned by the README and must equal the installed build, and MONAI must be
    the installed minor release. The bundle carries its code, so the package itself is no requirement."""
    meta = _meta()
    allowed = _install_requires()
    torch_installed = Version(importlib.metadata.version("torch")).base_version
    assert meta["pytorch_version"] == torch_installed
    assert Version(meta["monai_version"]).release[:2] == Version(importlib.metadata.version("monai")).release[:2]
    required = meta["required_packages_version"]
    assert "diffmed-monai" not in required
    # MONAI renames a metadata `optional_packages_version` to `required_packages_version` (a deprecated name),
    # replacing the required pins: everything is in `required_packages_version`
    assert "optional_packages_version" not in meta
    for pkg in ("pytorch-ignite", "nibabel", "einops", "transformers", "timm", "scipy", "fire", "tensorboard", "tqdm",
                "pyyaml", "jsonschema"):
        assert pkg in required, pkg
    reqs = metadata_requirements(meta)
    assert reqs[:3] == [f"monai=={meta['monai_version']}", f"torch=={meta['pytorch_version']}",
                        f"numpy=={meta['numpy_version']}"]
    for req in reqs:
        pkg, version = req.split("==")
        assert str(Version(version)) == version, f"{pkg}: {version!r} is not an exact release"
        spec = allowed[canonicalize_name(pkg)]
        assert spec.contains(version, prereleases=True), f"{pkg}=={version} is outside setup.cfg's {spec}"
    assert meta["version"] in meta["changelog"]


def test_bundle_readme_installs_the_metadata_pins():
    """The bundle README's install commands name exactly the pins the Model Zoo CI installs."""
    import re

    readme = (BUNDLE / "docs" / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    named = set()
    for line in re.findall(r"^pip install (.+)$", readme, flags=re.M):
        named.update(tok for tok in line.split() if "==" in tok)
    assert named == set(metadata_requirements(_meta())) | {"torchvision==0.29.1"}


def test_metadata_pins_have_wheels_for_the_zoo_ci_python():
    """Every pin the Model Zoo CI installs resolves to a wheel for its Python (3.10) on PyPI (pip, metadata only)."""
    if reason := index_unreachable():
        pytest.skip(f"cannot check the pins: {reason}")
    reqs = metadata_requirements(_meta())
    wheels = resolve_pins(reqs, ZOO_CI_PYTHON)
    assert set(wheels) == set(reqs)
    assert wheels[f"torch=={_meta()['pytorch_version']}"].startswith(f"torch-{_meta()['pytorch_version']}-cp310")
    with pytest.raises(ValueError, match=r"numpy==2\.4\.6"):  # a release without a Python 3.10 wheel is named
        resolve_pins(["nibabel==5.4.2", "numpy==2.4.6"], ZOO_CI_PYTHON)


def test_metadata_describes_the_student_network_and_training_only_teacher():
    meta = _meta()
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 4 and image["dtype"] == "float32" and image["modality"] == "MR"
    assert image["spatial_shape"] == ["16*n", "16*n"]
    assert image["channel_def"] == {"0": "T1", "1": "T1c", "2": "T2", "3": "FLAIR"}
    assert pred["num_channels"] == 4 and pred["format"] == "segmentation" and pred["dtype"] == "float32"
    assert "teacher_data_format" in meta
    # no invented numbers: every metric is either measured (a number) or explicitly unknown (null)
    assert all(v is None or isinstance(v, (int, float)) for v in meta["eval_metrics"].values())
    assert "val_mean_dice" in meta["eval_metrics"]


# ------------------------------------------------------------------------------------------------ formatting


def test_logging_conf_passes_monai_safe_loader():
    check_logging_conf(CONFIGS / "logging.conf")


def test_logging_conf_with_custom_class_is_rejected(tmp_path):
    text = (CONFIGS / "logging.conf").read_text().replace("class=StreamHandler", "class=diffmed_monai.Handler")
    bad = tmp_path / "logging.conf"
    bad.write_text(text)
    with pytest.raises(ValueError):
        check_logging_conf(bad)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_bundle_json_is_4_space_pretty_formatted(path):
    assert check_json_format(path) is None, check_json_format(path)


def test_json_format_check_catches_2_space_indent(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"a": [1, 2]}, indent=2) + "\n")
    assert "line 2" in check_json_format(bad)


def test_large_files_yml_is_honest_and_loadable(tmp_path):
    from monai.bundle import download_large_files

    path, entries = read_large_files(BUNDLE)
    assert path is not None and path.name == "large_files.yml"
    for entry in entries:  # any listed file must point at a real https location, not a placeholder
        assert entry["url"].startswith("https://") and "<" not in entry["url"], entry
    if not entries:
        copy = _copy_bundle(tmp_path / "b")
        download_large_files(bundle_path=str(copy))  # an empty list downloads nothing and does not fail


def test_licenses_are_present():
    apache_md5 = "86d3f3a95c324c9479bd8986968f4327"  # the canonical Apache-2.0 LICENSE text
    assert hashlib.md5((REPO / "LICENSE").read_bytes()).hexdigest() == apache_md5
    bundle_license = (BUNDLE / "LICENSE").read_text(encoding="utf-8")
    assert bundle_license.startswith((REPO / "LICENSE").read_text(encoding="utf-8"))
    assert "DINOv3 License" in bundle_license and "acknowledge" in bundle_license.lower()
    assert (BUNDLE / "docs" / "data_license.txt").is_file()
    readme = (BUNDLE / "docs" / "README.md").read_text(encoding="utf-8")
    for section in ("## Model Overview", "## Data", "## Input", "## Output", "## Performance",
                    "## MONAI Bundle Commands", "## License", "--use_trace True"):
        assert section in readme, section


# --------------------------------------------------------------------------------------------------- packing


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The bundle packed as shipped (code copy formatted and checked with the Model Zoo's settings), unpacked as
    ``models/<name>/`` in a Model Zoo-like folder."""
    from monai.apps.utils import extractall

    work = tmp_path_factory.mktemp("packed")
    zip_path = Path(pack_bundle(str(_copy_bundle(work / "b")), str(work / "dist"), name=NAME))
    extractall(filepath=zip_path, output_dir=work / "zoo" / "models", has_base=True)
    return zip_path, work / "zoo"


#: Python code run first in a subprocess so that ``import diffmed_monai`` fails there (``sys.modules[name] = None``).
WITHOUT_PACKAGE = "import sys; sys.modules['diffmed_monai'] = None; "


def _run_without_package(code: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", WITHOUT_PACKAGE + code], cwd=str(cwd), capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_pack_bundle_zip_is_self_contained(packed):
    zip_path, zoo = packed
    assert zip_path.name == f"{NAME}_v{_meta()['version']}.zip"
    root = zoo / "models" / NAME
    assert [p.name for p in (zoo / "models").iterdir()] == [NAME]
    for rel in ("configs/metadata.json", "configs/logging.conf", "configs/presets/tiny.json",
                "configs/presets/brats2023.json", "LICENSE", "large_files.yml", "docs/README.md",
                "docs/data_license.txt", "scripts/__init__.py", "scripts/networks/diffmed.py",
                "scripts/engines/trainer.py", "scripts/data/store.py"):
        assert (root / rel).is_file(), rel
    assert not (root / "scripts" / "cli.py").exists() and not (root / "models").exists()
    assert (root / "configs" / "metadata.json").read_bytes() == META.read_bytes()
    assert verify_metadata_offline(root / "configs" / "metadata.json")
    text = "\n".join(p.read_text(encoding="utf-8") for p in root.rglob("*") if p.suffix in (".json", ".py"))
    assert "diffmed_monai" not in text
    train = json.loads((root / "configs" / "train.json").read_text())
    assert train["network_def"]["_target_"] == "scripts.networks.DiffMedDINOv3"
    assert not [i for i in train["imports"] if "scripts" in i]  # imported from bundle_root when used
    assert train["teacher_dim"] == "$bundle_module('scripts.networks').teacher_width(@teacher_arch)"
    source_modules = {p.relative_to(REPO / "diffmed_monai").as_posix() for p in (REPO / "diffmed_monai").rglob("*.py")
                      if "__pycache__" not in p.parts and p.name != "cli.py"}
    assert {p.relative_to(root / "scripts").as_posix() for p in (root / "scripts").rglob("*.py")} == source_modules


def test_packed_code_passes_the_zoo_code_format(packed):
    """isort, black and flake8 with the Model Zoo's settings run again on the zip's ``scripts/`` (check only), and
    the other checks the Model Zoo runs besides ``verify_bundle.py`` pass on the zip."""
    zip_path, _ = packed
    report = check_bundle(str(zip_path), print_table=False)
    assert report.ok, report.table()
    for row in ("json: 4-space format", "logging.conf", "files: size <= 25 MB", "self-contained", "code format"):
        assert report.status_of(row) == "PASS", report.table()


def test_zoo_code_format_catches_unformatted_code(tmp_path):
    from bundle_tools import zoo_code_format

    bad = tmp_path / "bad.py"
    bad.write_text("import sys, os\nx = [a for a in os.environ]\n")
    with pytest.raises(ValueError, match="isort, black, flake8 failed"):
        zoo_code_format([bad], fix=False)
    with pytest.raises(ValueError, match=r"flake8 failed[\s\S]*C416"):
        zoo_code_format([bad], fix=True)  # isort and black fix the layout; flake8's comprehension check remains
    assert bad.read_text().startswith("import os\nimport sys\n")


def test_check_bundle_fails_when_packed_configs_need_the_package(packed, tmp_path):
    _, zoo = packed
    copy = tmp_path / NAME
    shutil.copytree(zoo / "models" / NAME, copy)
    infer = copy / "configs" / "inference.json"
    infer.write_text(infer.read_text().replace("scripts.networks.DiffMedDINOv3", "diffmed_monai.networks.X"))
    report = check_bundle(str(copy), print_table=False)
    assert report.status_of("self-contained") == "FAIL" and "configs/inference.json" in report.table()


def test_check_bundle_on_the_source_bundle():
    report = check_bundle(str(BUNDLE), print_table=False)
    assert report.ok, report.table()
    assert report.status_of("json: 4-space format") == "PASS" and report.status_of("logging.conf") == "PASS"
    assert report.status_of("self-contained") == "SKIP" and report.status_of("code format") == "SKIP"


def test_zoo_style_unit_test_on_the_packed_bundle_without_the_package(packed):
    """The Model Zoo unit test (train 1 epoch, evaluate, infer; tiny preset) on the unpacked zip, in a process where
    ``import diffmed_monai`` fails: the bundle runs on its own ``scripts/``."""
    _, zoo = packed
    test = REPO / "scripts" / "zoo" / f"test_{NAME}.py"
    code = f"import runpy; sys.argv = [{str(test)!r}]; runpy.run_path(sys.argv[0], run_name='__main__')"
    proc = _run_without_package(code, zoo)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Ran 3 tests" in proc.stderr and "OK" in proc.stderr


def test_packed_bundle_loads_with_monai_bundle_load_without_the_package(packed, tmp_path):
    """``monai.bundle.load`` with its default (train) workflow: no teacher weights, no data, no diffmed_monai."""
    import torch
    from monai.bundle import ConfigParser

    from diffmed_monai.networks import teacher_width

    _, zoo = packed
    bundles = tmp_path / "bundles"
    shutil.copytree(zoo / "models" / NAME, bundles / NAME)
    (bundles / NAME / "models").mkdir()
    torch.save(_tiny_state_dict(), bundles / NAME / "models" / "model.pt")
    tiny = ConfigParser.load_config_file(str(TINY))
    net_override = {k.split("#", 1)[1]: v for k, v in tiny.items() if k.startswith("network_def#")}
    net_override["teacher_dim"] = teacher_width(tiny["teacher_arch"])
    code = (f"sys.path.insert(0, {str(bundles / NAME)!r}); import torch; from monai.bundle import load; "
            f"net = load(name={NAME!r}, bundle_dir={str(bundles)!r}, source='github', device='cpu', "
            f"net_override={net_override!r}); "
            f"state = torch.load({str(bundles / NAME / 'models' / 'model.pt')!r}, weights_only=True); "
            "loaded = net.state_dict(); "
            "assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state); "
            "print(type(net).__module__)")
    proc = _run_without_package(code, bundles / NAME)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.strip().splitlines()[-1] == "scripts.networks.diffmed"


def test_pack_bundle_weights_and_size_limit(tmp_path):
    import zipfile

    import torch
    import yaml

    bundle = _copy_bundle(tmp_path / "b")
    state = _tiny_state_dict()
    ckpt = tmp_path / "checkpoint_epoch=3.pt"  # a training checkpoint: the network part is packed
    torch.save({"model": state, "optimizer": {}}, ckpt)
    (bundle / "models" / "checkpoint_epoch=3.pt").write_bytes(b"\0" * 1024)  # training leftovers stay out
    (bundle / "eval").mkdir()
    (bundle / "eval" / "metrics.csv").write_text("x\n")
    out = tmp_path / "out"
    zip1 = pack_bundle(str(bundle), str(tmp_path / "d1"), name=NAME, weights=str(ckpt), presets="tiny",
                       weights_url="https://example.org/model.pt", code_format=False)
    with zipfile.ZipFile(zip1) as zf:
        names = set(zf.namelist())
        zf.extractall(out)
    assert f"{NAME}/models/model.pt" in names and all(n.startswith(f"{NAME}/") for n in names)
    # the presets have one source, the repository's configs/: the zip gets them in configs/presets/
    presets = sorted(p.name for p in (REPO / "configs").glob("*.json"))
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith(f"{NAME}/configs/presets/")) == presets
    assert (out / NAME / "configs" / "presets" / "tiny.json").read_bytes() == TINY.read_bytes()
    assert not (bundle / "configs" / "presets").exists()
    assert not any("checkpoint_epoch" in n or "/eval/" in n for n in names)
    packed_state = torch.load(out / NAME / "models" / "model.pt", weights_only=True)
    assert set(packed_state) == set(state) and all(torch.equal(packed_state[k], state[k]) for k in state)
    entries = yaml.safe_load((out / NAME / "large_files.yml").read_text())["large_files"]
    digest = hashlib.sha256((out / NAME / "models" / "model.pt").read_bytes()).hexdigest()
    assert entries == [{"path": "models/model.pt", "url": "https://example.org/model.pt", "hash_val": digest,
                        "hash_type": "sha256"}]
    _, listed = read_large_files(out / NAME)
    assert listed == entries

    with pytest.raises(ValueError, match="presets"):  # tiny weights do not fit the default (full-size) network
        pack_bundle(str(bundle), str(tmp_path / "d2"), name=NAME, weights=str(ckpt), code_format=False)
    (bundle / "models" / "model.pt").write_bytes(b"\0" * (2 * 2**20))
    with zipfile.ZipFile(pack_bundle(str(bundle), str(tmp_path / "d3"), name=NAME, include_weights=False,
                                     code_format=False)) as zf:
        assert f"{NAME}/models/model.pt" not in zf.namelist()
    with pytest.raises(ValueError, match="model.pt"):
        pack_bundle(str(bundle), str(tmp_path / "d4"), name=NAME, max_file_mb=1, code_format=False)
    (bundle / "large_files.yml").write_text(
        'large_files:\n- path: "models/model.pt"\n  url: "https://example.org/model.pt"\n'
    )
    assert Path(pack_bundle(str(bundle), str(tmp_path / "d5"), name=NAME, max_file_mb=1, code_format=False)).is_file()
    (bundle / "docs" / "big.bin").write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(ValueError, match="docs/big.bin"):
        pack_bundle(str(bundle), str(tmp_path / "d6"), name=NAME, max_file_mb=1, code_format=False)


def test_pack_bundle_refuses_a_bundle_without_license(tmp_path):
    bundle = _copy_bundle(tmp_path / "b")
    (bundle / "LICENSE").unlink()
    with pytest.raises(FileNotFoundError, match="LICENSE"):
        pack_bundle(str(bundle), str(tmp_path / "dist"))


@pytest.mark.slow
def test_check_and_pack_scripts(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    pack_cmd = [sys.executable, str(REPO / "scripts" / "pack_bundle.py"), "--bundle_dir", str(_copy_bundle(tmp_path / "b")),
                "--output_dir", str(tmp_path / "dist"), "--code_format", "False"]
    pack = subprocess.run(pack_cmd, capture_output=True, text=True, env=env, timeout=300)
    assert pack.returncode == 0, pack.stderr[-2000:]
    zip_path = tmp_path / "dist" / f"{NAME}_v{_meta()['version']}.zip"
    assert zip_path.is_file() and "MB" in pack.stdout and "modules of diffmed_monai in scripts/" in pack.stdout
    cmd = [sys.executable, str(REPO / "scripts" / "check_bundle.py"), "--bundle_dir", str(BUNDLE)]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0 and "PASS" in ok.stdout, ok.stdout[-2000:] + ok.stderr[-2000:]
    bad = tmp_path / "bad"
    shutil.copytree(BUNDLE, bad, ignore=shutil.ignore_patterns("eval", "models", "store"))
    (bad / "configs" / "preprocess.json").write_text(json.dumps(json.loads((bad / "configs" / "preprocess.json")
                                                                         .read_text()), indent=2))
    cmd[-1] = str(bad)
    failed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert failed.returncode == 1 and "FAIL" in failed.stdout


@pytest.mark.skipif(not os.environ.get("DIFFMED_ZOO_DIR"),
                    reason="set DIFFMED_ZOO_DIR to a checkout of Project-MONAI/model-zoo to run its own CI scripts")
@pytest.mark.slow
def test_model_zoo_ci_scripts_on_the_packed_bundle(packed, tmp_path):
    """The zoo's CI jobs as ``scripts/zoo_verify.py`` runs them (code format, premerge-cpu, premerge-gpu): the zip
    without weights fails at ``verify_bundle.py`` (``models/model.pt``), as in the zoo; packed with weights of the
    shipped network (``--weights``, hosted through ``large_files.yml``), every step passes. The jobs' steps run with
    this Python, or with ``DIFFMED_ZOO_PYTHON`` (e.g. a fresh empty venv's python) and the zoo's pip steps
    (``--install True``: the zoo's requirements, then the bundle's pins, as its scripts install them)."""
    import torch

    zoo = Path(os.environ["DIFFMED_ZOO_DIR"])
    for name in ("setup.cfg", "pyproject.toml"):  # the settings kept here are still the zoo's
        assert (ZOO_STYLE / name).read_text() == (zoo / name).read_text(), name
    zip_path, _ = packed
    cmd = [sys.executable, str(REPO / "scripts" / "zoo_verify.py"), "--zoo_dir", str(zoo), "--zip", str(zip_path),
           "--work_dir", str(tmp_path / "no_weights")]
    timeout = 3600
    if os.environ.get("DIFFMED_ZOO_PYTHON"):  # two virtual environments of several GB to fill: allow hours
        cmd += ["--python", os.environ["DIFFMED_ZOO_PYTHON"], "--install", "True"]
        timeout = 4 * 3600
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 1, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert "FAIL  verify_bundle -m min" in proc.stdout and "models/model.pt is not existing" in proc.stdout
    assert "PASS  code format" in proc.stdout and "fake" not in proc.stdout.lower()

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    weights = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    with_weights = pack_bundle(str(_copy_bundle(tmp_path / "b")), str(tmp_path / "dist"), name=NAME,
                               weights=str(weights), weights_url="https://example.org/model.pt")
    cmd[cmd.index("--zip") + 1] = with_weights
    cmd[cmd.index("--work_dir") + 1] = str(tmp_path / "weights")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    for step in ("code format", "verify_bundle -m min", "verify_bundle (full)", "unit test"):
        assert f"PASS  {step}" in proc.stdout, step
    assert "weights: models/model.pt is in the zip" in proc.stdout


# ------------------------------------------------------------------------------------- network (repository side)


def test_verify_net_in_out_on_network_def():
    _needs_network()
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(META), config_file=[str(CONFIGS / "inference.json"),
                      str(TINY)], n=1, device="cpu", bundle_root=str(BUNDLE))


@pytest.mark.slow
def test_ckpt_export_with_tracing(tmp_path):
    _needs_network()
    import torch
    from monai.bundle import ckpt_export

    ckpt = tmp_path / "model.pt"
    torch.save({"model": _tiny_state_dict()}, ckpt)
    out = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(out), ckpt_file=str(ckpt), meta_file=str(META),
                config_file=[str(CONFIGS / "inference.json"), str(TINY)], key_in_ckpt="model", use_trace=True,
                input_shape=[1, 4, 64, 64], bundle_root=str(BUNDLE))
    ts = torch.jit.load(str(out))
    with torch.no_grad():
        assert tuple(ts(torch.randn(1, 4, 64, 64)).shape) == (1, 4, 64, 64)
