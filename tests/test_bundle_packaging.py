"""Bundle packaging for the MONAI Model Zoo: metadata and its schema, versions, logging.conf, JSON format,
large_files.yml, the zip layout, and the Model Zoo CI checks (shapes, traced export, workflow properties)."""

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
    check_bundle,
    check_json_format,
    check_logging_conf,
    local_schema_path,
    pack_bundle,
    read_large_files,
    verify_metadata_offline,
)

BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
META = CONFIGS / "metadata.json"
TINY = REPO / "bundle" / "configs" / "presets" / "tiny.json"
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
        pytest.skip("bundle/configs/presets/tiny.json is not written yet")


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
    the installed minor release (registries move on, so other pins are checked against setup.cfg, not the env)."""
    meta = _meta()
    allowed = _install_requires()
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg", encoding="utf-8")
    torch_installed = Version(importlib.metadata.version("torch")).base_version
    assert meta["pytorch_version"] == torch_installed
    assert Version(meta["monai_version"]).release[:2] == Version(importlib.metadata.version("monai")).release[:2]
    pins = {"monai": meta["monai_version"], "torch": meta["pytorch_version"], "numpy": meta["numpy_version"]}
    required = meta["required_packages_version"]
    for pkg in ("diffmed-monai", "pytorch-ignite", "nibabel", "einops", "transformers", "timm", "fire",
                "tensorboard"):
        assert pkg in required, pkg
    assert required["diffmed-monai"] == parser["metadata"]["version"] == meta["version"]
    pins.update({k: v for k, v in required.items() if k != "diffmed-monai"})
    for pkg, version in pins.items():
        assert str(Version(version)) == version, f"{pkg}: {version!r} is not an exact release"
        spec = allowed[canonicalize_name(pkg)]
        assert spec.contains(version, prereleases=True), f"{pkg}=={version} is outside setup.cfg's {spec}"
    assert meta["version"] in meta["changelog"]


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


def test_pack_bundle_zip_layout_round_trip(tmp_path):
    from monai.apps.utils import extractall

    zip_path = Path(pack_bundle(str(_copy_bundle(tmp_path / "b")), str(tmp_path / "dist"), name=NAME))
    assert zip_path.name == f"{NAME}_v{_meta()['version']}.zip"
    out = tmp_path / "out"
    extractall(filepath=zip_path, output_dir=out, has_base=True)
    assert [p.name for p in out.iterdir()] == [NAME]
    root = out / NAME
    for rel in ("configs/metadata.json", "configs/logging.conf", "LICENSE", "large_files.yml", "docs/README.md",
                "docs/data_license.txt"):
        assert (root / rel).is_file(), rel
    assert (root / "configs" / "metadata.json").read_bytes() == META.read_bytes()
    assert verify_metadata_offline(root / "configs" / "metadata.json")
    assert not (root / "models").exists()  # no weights in the bundle, none in the zip


def test_pack_bundle_weights_and_size_limit(tmp_path):
    import zipfile

    bundle = _copy_bundle(tmp_path / "b")
    (bundle / "models" / "model.pt").write_bytes(b"\0" * 1024)
    (bundle / "models" / "checkpoint_epoch=3.pt").write_bytes(b"\0" * 1024)  # training leftovers stay out
    (bundle / "eval").mkdir()
    (bundle / "eval" / "metrics.csv").write_text("x\n")
    with zipfile.ZipFile(pack_bundle(str(bundle), str(tmp_path / "d1"), name=NAME)) as zf:
        names = set(zf.namelist())
    assert f"{NAME}/models/model.pt" in names
    assert not any("checkpoint_epoch" in n or "/eval/" in n for n in names)
    assert all(n.startswith(f"{NAME}/") for n in names)
    with zipfile.ZipFile(pack_bundle(str(bundle), str(tmp_path / "d2"), name=NAME, include_weights=False)) as zf:
        assert f"{NAME}/models/model.pt" not in zf.namelist()

    (bundle / "models" / "model.pt").write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(ValueError, match="model.pt"):
        pack_bundle(str(bundle), str(tmp_path / "d3"), name=NAME, max_file_mb=1)
    (bundle / "large_files.yml").write_text(
        'large_files:\n- path: "models/model.pt"\n  url: "https://example.org/model.pt"\n'
    )
    assert Path(pack_bundle(str(bundle), str(tmp_path / "d4"), name=NAME, max_file_mb=1)).is_file()
    (bundle / "docs" / "big.bin").write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(ValueError, match="docs/big.bin"):
        pack_bundle(str(bundle), str(tmp_path / "d5"), name=NAME, max_file_mb=1)


def test_pack_bundle_refuses_a_bundle_without_license(tmp_path):
    bundle = _copy_bundle(tmp_path / "b")
    (bundle / "LICENSE").unlink()
    with pytest.raises(FileNotFoundError, match="LICENSE"):
        pack_bundle(str(bundle), str(tmp_path / "dist"))


def test_check_bundle_static_checks_pass_on_this_bundle():
    report = check_bundle(str(BUNDLE), properties=False, verify_net=False, export=False, print_table=False)
    assert report.ok, report.table()
    for row in ("files: necessary", "metadata: schema", "metadata: version/changelog", "json: 4-space format",
                "logging.conf"):
        assert report.status_of(row) == "PASS", report.table()


def test_check_bundle_fails_without_license(tmp_path):
    bundle = _copy_bundle(tmp_path / "b")
    (bundle / "LICENSE").unlink()
    report = check_bundle(str(bundle), properties=False, verify_net=False, export=False, print_table=False)
    assert not report.ok and report.status_of("files: necessary") == "FAIL"


@pytest.mark.slow
def test_check_and_pack_scripts(tmp_path):
    bundle = _copy_bundle(tmp_path / "b")
    cmd = [sys.executable, str(REPO / "scripts" / "check_bundle.py"), "--bundle_dir", str(bundle),
           "--properties", "False", "--verify_net", "False", "--export", "False"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "PASS" in ok.stdout
    pack_cmd = [sys.executable, str(REPO / "scripts" / "pack_bundle.py"), "--bundle_dir", str(bundle),
                "--output_dir", str(tmp_path / "dist")]
    pack = subprocess.run(pack_cmd, capture_output=True, text=True, env=env, timeout=300)
    assert pack.returncode == 0, pack.stderr[-2000:]
    assert (tmp_path / "dist" / f"{NAME}_v{_meta()['version']}.zip").is_file() and "MB" in pack.stdout
    (bundle / "LICENSE").unlink()
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 1 and "FAIL" in bad.stdout


# ------------------------------------------------------------------- network-dependent (lead un-skips if needed)


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


@pytest.mark.slow
def test_train_and_inference_properties_and_full_check(tmp_path):
    _needs_network()
    if not (CONFIGS / "train.json").is_file():
        pytest.skip("bundle/configs/train.json is not written yet")
    import torch

    bundle = _copy_bundle(tmp_path / "b")
    torch.save(_tiny_state_dict(), bundle / "models" / "model.pt")  # bare state dict, as train.json saves it
    report = check_bundle(str(bundle), presets=str(TINY), demo_cases=3, work_dir=str(tmp_path / "work"),
                          print_table=False)
    assert report.ok, report.table()
    for row in ("properties: train", "properties: inference", "verify_net_in_out", "ckpt_export (trace)"):
        assert report.status_of(row) == "PASS", report.table()


def test_packed_bundle_loads_with_monai_bundle_load(tmp_path, monkeypatch):
    _needs_network()
    import torch
    from monai.apps.utils import extractall
    from monai.bundle import ConfigParser, load

    from diffmed_monai.networks import teacher_width

    bundle = _copy_bundle(tmp_path / "b")
    state = _tiny_state_dict()
    torch.save({"model": state}, bundle / "models" / "model.pt")
    zip_path = pack_bundle(str(bundle), str(tmp_path / "dist"), name=NAME)
    extractall(filepath=zip_path, output_dir=tmp_path / "zoo", has_base=True)
    tiny = ConfigParser.load_config_file(str(TINY))
    net_override = {k.split("#", 1)[1]: v for k, v in tiny.items() if k.startswith("network_def#")}
    net_override["teacher_dim"] = teacher_width(tiny["teacher_arch"])
    # `load` builds the inference workflow, whose `initialize` needs `bundle_root` ("."): run from the bundle
    monkeypatch.chdir(tmp_path / "zoo" / NAME)
    net = load(name=NAME, bundle_dir=str(tmp_path / "zoo"), source="github", workflow_type="inference",
               key_in_ckpt="model", device="cpu", net_override=net_override)
    loaded = net.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
