"""The README's commands as written: the real-data recipe (steps 1-5 with its no-weights variant) in a fresh clone on
generated cases; its inference command (paths and the preset swapped for small ones) on a checkpoint trained with a
preset, which fits because the command passes the presets and `teacher_arch` of training, and is refused without
them; `prepare_datalist.py --help` whole."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

from .helpers import BUNDLE, PRESETS, REPO


def _readme_command(run_id: str) -> list[str]:
    """The ``python -m monai.bundle run <run_id>`` command of the README (continuation lines joined)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"^python -m monai\.bundle run {run_id}\b(?:.*\\\n)*.*$", text, flags=re.M)
    assert match, f"no `python -m monai.bundle run {run_id}` in README.md"
    return shlex.split(match.group(0).replace("\\\n", " "))


def _swap(cmd: list[str], replacements: dict[str, str]) -> list[str]:
    out = []
    for arg in cmd:
        for old, new in replacements.items():
            arg = arg.replace(old, new)
        out.append(arg)
    return out


@pytest.mark.slow
def test_readme_inference_command_with_a_preset_trained_checkpoint(tmp_path):
    from monai.bundle import ConfigParser

    from diffmed_monai.data import make_demo_dataset

    cmd = _readme_command("inference")
    assert "configs/$PRESET.json" in " ".join(cmd) and "--teacher_arch" in cmd
    data, out, root = tmp_path / "cases", tmp_path / "predictions", tmp_path / "run"
    make_demo_dataset(str(data), num_cases=1, seed=0)
    # the checkpoint a training run with the (tiny) preset writes: train.json's network_def with the preset
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(PRESETS / "tiny.json")])
    (root / "models").mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")

    preset = str((PRESETS / "tiny.json").relative_to(REPO))
    cmd = _swap(cmd, {"configs/$PRESET.json": preset, "$ARCH": "tiny", "/data/new_cases": str(data),
                      "/data/predictions": str(out)})
    cmd[cmd.index("--bundle_root") + 1] = str(root)  # where the training run wrote models/model.pt
    assert cmd[:3] == ["python", "-m", "monai.bundle"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable] + cmd[1:], cwd=str(REPO), capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(list(out.glob("*_seg.nii.gz"))) == 1

    # without the training presets the default network does not fit the checkpoint: refused, naming the keys
    configs = cmd.index("--config_file") + 1
    no_preset = cmd[:configs] + ["bundle/configs/inference.json"] + cmd[configs + 1:]
    no_preset[no_preset.index("--output_dir") + 1] = str(tmp_path / "other")
    bad = subprocess.run([sys.executable] + no_preset[1:], cwd=str(REPO), capture_output=True, text=True, env=env,
                         timeout=600)
    assert bad.returncode != 0
    assert "ckpt_path" in bad.stdout + bad.stderr


def _readme_recipe() -> str:
    """The bash block of README's "Using the bundle on real data"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using the bundle on real data", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)


def _fresh_clone(dst) -> None:
    """The repository's files as a clone has them: no generated folders, no weights, no store."""
    import shutil

    ignore = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", ".pytest_cache", "*.egg-info", "dist",
                                    "build", "demo_run", "runs", "models", "eval", "store", "predictions")
    shutil.copytree(REPO, dst, symlinks=True, ignore=ignore)


@pytest.mark.slow
def test_readme_real_data_recipe_without_teacher_weights(tmp_path):
    """README steps 1-5 as written, with its no-weights variant (the tiny preset), on generated BraTS-layout cases,
    in a fresh clone: every step runs, training finds the store step 2 wrote, evaluation and inference fit the
    checkpoint of step 3 (only the /data paths are swapped; the multi-GPU command is left out)."""
    from diffmed_monai.data import make_demo_dataset

    script = _readme_recipe()
    variant = "# PRESET=tiny ARCH=tiny WEIGHTS="
    assert variant in script and "PRESET=brats ARCH=vitb16 WEIGHTS=" in script
    script = script.replace(variant, variant[2:])  # the documented variant, after the default line
    script = re.sub(r"^torchrun .*?(?:\\\n.*?)*$\n", "", script, flags=re.M)  # multi-GPU: not on this machine
    assert "torchrun" not in script and script.count("\npython ") == 5
    data, new_cases = tmp_path / "BraTS2021", tmp_path / "new_cases"
    make_demo_dataset(str(data), num_cases=5, seed=0)
    make_demo_dataset(str(new_cases), num_cases=1, seed=1)
    for old, new in {"/data/BraTS2021": str(data), "/data/stores": str(tmp_path / "stores"),
                     "/data/new_cases": str(new_cases), "/data/predictions": str(tmp_path / "predictions")}.items():
        assert old in script, old
        script = script.replace(old, new)
    script = re.sub(r"^python ", f"{sys.executable} ", script, flags=re.M)
    clone = tmp_path / "clone"
    _fresh_clone(clone)
    env = {k: v for k, v in os.environ.items() if k != "DIFFMED_TRACEBACK"}
    env["PYTHONPATH"] = str(clone)  # the clone's package, as `pip install -e .` in it would give
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=str(clone), capture_output=True, text=True, env=env,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (data / "datalist.json").is_file()
    stores = list((tmp_path / "stores").iterdir())
    assert len(stores) == 1 and len(list((stores[0] / "cases").iterdir())) == 5  # written once, read by training
    assert (clone / "bundle" / "models" / "model.pt").is_file()
    assert (clone / "bundle" / "eval" / "metrics.csv").is_file()
    assert len(list((tmp_path / "predictions").glob("*_seg.nii.gz"))) == 1


def test_prepare_datalist_help_documents_every_argument():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), PAGER="cat")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_datalist.py"), "--help"],
                          capture_output=True, text=True, env=env, timeout=300)
    text = proc.stdout + proc.stderr
    assert "(inference inputs, one folder or one 4D file per case, no labels)." in text, text
    assert "seed of the train/validation split." in text and "fraction of the cases in the validation list" in text
