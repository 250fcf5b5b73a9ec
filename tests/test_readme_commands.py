"""The README's inference command, run as written (paths and the preset swapped for small ones) on a checkpoint
trained with a preset: it passes the presets and `teacher_arch` of training, so the network fits the checkpoint;
the same command without them is refused."""

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
    assert "configs/brats.json" in " ".join(cmd) and "--teacher_arch" in cmd
    data, out, root = tmp_path / "cases", tmp_path / "predictions", tmp_path / "run"
    make_demo_dataset(str(data), num_cases=1, seed=0)
    # the checkpoint a training run with the (tiny) preset writes: train.json's network_def with the preset
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(PRESETS / "tiny.json")])
    (root / "models").mkdir(parents=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")

    preset = str((PRESETS / "tiny.json").relative_to(REPO))
    cmd = _swap(cmd, {"configs/brats.json": preset, "vitb16": "tiny", "/data/new_cases": str(data),
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
