"""The bundle used from a working directory that is not its own: the repository bundle with the installed package,
and the packed zip without it (``scripts/`` imported from ``bundle_root``); ``ckpt_path`` follows ``bundle_root``
and nothing reads ``./models/model.pt`` while initialising."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .helpers import BUNDLE, PRESETS, REPO

NAME = "diffmed_dinov3_brats_segmentation"
sys.path.insert(0, str(REPO / "scripts"))  # the bundle tools are scripts, not part of the package


def _tiny_state_dict() -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "inference.json"), str(PRESETS / "tiny.json")])
    return parser.get_parsed_content("network_def").state_dict()


def _tiny_net_override() -> dict:
    from monai.bundle import ConfigParser

    from diffmed_monai.networks import teacher_width

    tiny = ConfigParser.load_config_file(str(PRESETS / "tiny.json"))
    override = {k.split("#", 1)[1]: v for k, v in tiny.items() if k.startswith("network_def#")}
    return {**override, "teacher_dim": teacher_width(tiny["teacher_arch"])}


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    from diffmed_monai.data import make_demo_data

    data = tmp_path_factory.mktemp("cases")
    datalist = make_demo_data(str(data), num_cases=3, seed=0, overwrite=True, val_fraction=0.34)
    return data, Path(datalist)


def test_repository_bundle_loads_and_infers_from_another_directory(tmp_path, monkeypatch, cases):
    """``monai.bundle.load`` (inference workflow) and a ``ConfigWorkflow`` with ``bundle_root`` from a fresh
    working directory: the checkpoint is read from ``<bundle_root>/models/model.pt``, not ``./models``."""
    from monai.bundle import ConfigWorkflow, load

    data, datalist = cases
    bundles = tmp_path / "bundles"
    shutil.copytree(BUNDLE, bundles / NAME, ignore=shutil.ignore_patterns("models", "eval", "store", "predictions"))
    shutil.copytree(PRESETS, bundles / NAME / "configs" / "presets")  # where the packed zip has them
    (bundles / NAME / "models").mkdir()
    state = _tiny_state_dict()
    torch.save(state, bundles / NAME / "models" / "model.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    net = load(name=NAME, bundle_dir=str(bundles), source="github", device="cpu", workflow_type="inference",
               net_override=_tiny_net_override())
    loaded = net.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)

    root = bundles / NAME
    configs = [str(root / "configs" / "inference.json"), str(root / "configs" / "presets" / "tiny.json")]
    wf = ConfigWorkflow(config_file=configs, workflow_type="inference", bundle_root=str(root),
                        dataset_dir=str(data), datalist=str(datalist), datalist_key="validation",
                        output_dir=str(tmp_path / "pred"), num_workers=0)
    wf.initialize()
    assert wf.parser.get_parsed_content("ckpt_path") == os.path.join(str(root), "models", "model.pt")
    wf.run()
    wf.finalize()
    assert len(list((tmp_path / "pred").glob("*_seg.nii.gz"))) == 1
    assert not (elsewhere / "models").exists() and not (elsewhere / "predictions").exists()

    (root / "models" / "model.pt").unlink()  # missing weights: refused when the run starts, naming the key
    wf = ConfigWorkflow(config_file=configs, workflow_type="inference", bundle_root=str(root),
                        dataset_dir=str(data), datalist=str(datalist), datalist_key="validation",
                        output_dir=str(tmp_path / "pred2"), num_workers=0)
    wf.initialize()
    with pytest.raises(Exception, match="ckpt_path"):
        wf.run()


@pytest.fixture(scope="module")
def packed_bundle(tmp_path_factory):
    from monai.apps.utils import extractall

    from bundle_tools import pack_bundle

    work = tmp_path_factory.mktemp("packed_anywhere")
    source = work / "source"
    shutil.copytree(BUNDLE, source, ignore=shutil.ignore_patterns("models", "eval", "store", "predictions"))
    zip_path = pack_bundle(str(source), str(work / "dist"), name=NAME, code_format=False)
    extractall(filepath=zip_path, output_dir=work / "bundles", has_base=True)
    root = work / "bundles" / NAME
    (root / "models").mkdir()
    torch.save(_tiny_state_dict(), root / "models" / "model.pt")
    return root


def _without_package(code: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in which ``import diffmed_monai`` fails."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", "import sys; sys.modules['diffmed_monai'] = None; " + code],
                          cwd=str(cwd), capture_output=True, text=True, env=env, timeout=timeout)


def test_packed_configs_import_scripts_lazily(packed_bundle):
    """No config imports ``scripts`` eagerly (MONAI would import it before ``bundle_root`` is on ``sys.path``)."""
    from bundle_tools import BUNDLE_PATH_EXPR

    for path in sorted((packed_bundle / "configs").rglob("*.json")):
        config = json.loads(path.read_text(encoding="utf-8"))
        for key in ("imports", "+imports"):
            assert not [i for i in config.get(key, []) if "scripts" in i], (path.name, config[key])
        if "initialize" in config:
            assert config["initialize"][0] == BUNDLE_PATH_EXPR, path.name


@pytest.mark.slow
def test_packed_bundle_runs_from_another_directory(tmp_path, packed_bundle, cases):
    """``python -m monai.bundle run inference --bundle_root <unpacked zip>``, a training ``ConfigWorkflow`` (its
    network, checkpoint folder and store under ``bundle_root`` / ``store_root``) and ``monai.bundle.load``
    (``bundle_root`` from its ``args_file``), each from a fresh working directory and without the diffmed_monai
    package."""
    data, datalist = cases
    root = packed_bundle
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    configs = [str(root / "configs" / "inference.json"), str(root / "configs" / "presets" / "tiny.json")]
    argv = ["x", "run", "inference", "--config_file", repr(configs), "--bundle_root", str(root),
            "--dataset_dir", str(data), "--datalist", str(datalist), "--datalist_key", "validation",
            "--output_dir", str(tmp_path / "pred"), "--num_workers", "0"]
    proc = _without_package(f"import runpy; sys.argv = {argv!r}; runpy.run_module('monai.bundle', run_name='__main__')",
                            elsewhere)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list((tmp_path / "pred").glob("*_seg.nii.gz"))) == 1

    train = [str(root / "configs" / "train.json"), str(root / "configs" / "presets" / "tiny.json")]
    code = ("from monai.bundle import ConfigWorkflow; "
            f"wf = ConfigWorkflow(config_file={train!r}, workflow_type='train', bundle_root={str(root)!r}, "
            f"dataset_dir={str(data)!r}, datalist={str(datalist)!r}, epochs=1, resume=False, "
            f"store_root={str(tmp_path / 'stores')!r}); "
            "wf.initialize(); print(type(wf.network_def).__module__); "
            "print(wf.parser.get_parsed_content('ckpt_dir')); print(wf.parser.get_parsed_content('store_dir'))")
    proc = _without_package(code, elsewhere)  # training itself runs in the zoo unit test of test_bundle_packaging
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    network, ckpt_dir, store_dir = proc.stdout.strip().splitlines()[-3:]
    assert network == "scripts.networks.diffmed" and ckpt_dir == os.path.join(str(root), "models")
    assert os.path.dirname(store_dir) == str(tmp_path / "stores")
    assert not (elsewhere / "models").exists() and not (elsewhere / "eval").exists()

    args = elsewhere / "args.json"
    args.write_text(json.dumps({"bundle_root": str(root)}))
    code = ("from monai.bundle import load; "
            f"net = load(name={NAME!r}, bundle_dir={str(root.parent)!r}, source='github', device='cpu', "
            f"workflow_type='inference', args_file='args.json', net_override={_tiny_net_override()!r}); "
            "print(type(net).__module__)")
    proc = _without_package(code, elsewhere)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "scripts.networks.diffmed"
