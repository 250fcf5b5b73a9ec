"""The package's refusals end the output of ``python -m monai.bundle run`` and of ``diffmed-monai`` (no chained
traceback), and a checkpoint refusal names the preset and ``teacher_arch`` that would fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser

from diffmed_monai.engines import CheckpointError, check_checkpoint
from diffmed_monai.errors import project_error

from .helpers import BUNDLE, PRESETS, REPO

INFER = BUNDLE / "configs" / "inference.json"
TINY = PRESETS / "tiny.json"


def _network(*configs, **overrides):
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser.update(overrides)
    return parser.get_parsed_content("network_def")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DIFFMED_TRACEBACK"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return env


def test_refusal_names_the_preset_and_teacher_arch_that_fit(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_network(INFER, TINY).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(path, {"model": _network(INFER)})  # the default network, the tiny preset's checkpoint
    message = str(err.value)
    assert "`--teacher_arch tiny`" in message and "the preset tiny" in message, message
    assert "teacher width 32 (`teacher_arch` tiny), the config 768 (`teacher_arch` vitb16)" in message, message
    assert "classes" not in message, message  # 4 classes in both: not a difference

    torch.save(_network(INFER, TINY, teacher_arch="vits16").state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(path, {"model": _network(INFER, TINY)})
    assert "`--teacher_arch vits16 or vits16plus` (teacher width 384)" in str(err.value), str(err.value)


def test_project_error_finds_the_refusal_in_a_chain():
    from diffmed_monai.data import require_file

    try:
        try:
            require_file("/nonexistent/model.pt", "ckpt_path")
        except FileNotFoundError as inner:
            raise RuntimeError("Failed to evaluate ConfigExpression") from inner
    except RuntimeError as outer:
        found = project_error(outer)
    assert isinstance(found, FileNotFoundError) and "ckpt_path" in str(found)
    try:
        [][1]  # a bug, not a refusal: keeps its traceback
    except IndexError as bug:
        assert project_error(bug) is None
    try:
        json.loads("{")  # a ValueError raised outside this package
    except ValueError as other:
        assert project_error(other) is None


@pytest.mark.slow
def test_refusals_are_the_last_lines_of_the_commands(tmp_path):
    """A checkpoint of the tiny preset given to the default inference config under ``python -m monai.bundle run``,
    and a datalist naming a missing file under ``diffmed-monai preprocess``: each ends with the message, no
    traceback."""
    from diffmed_monai.data import make_demo_data

    datalist = make_demo_data(str(tmp_path / "data"), num_cases=2, seed=0, overwrite=True, val_fraction=0.5)
    (tmp_path / "run" / "models").mkdir(parents=True)
    torch.save(_network(INFER, TINY).state_dict(), tmp_path / "run" / "models" / "model.pt")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(INFER),
           "--bundle_root", str(tmp_path / "run"), "--dataset_dir", str(tmp_path / "data"), "--datalist", datalist,
           "--datalist_key", "validation", "--output_dir", str(tmp_path / "pred"), "--num_workers", "0"]
    proc = subprocess.run(cmd, cwd=str(tmp_path), capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    tail = proc.stderr[proc.stderr.rindex("CheckpointError: "):]
    assert "`ckpt_path`" in tail and "the preset tiny" in tail and tail.rstrip().endswith("more"), tail

    content = json.loads(open(datalist).read())
    content["training"][0]["image"][0] = "missing/missing_t1.nii.gz"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    code = ("import sys; from diffmed_monai.cli import main; "
            f"sys.argv = ['diffmed-monai', 'preprocess', '--dataset_dir', {str(tmp_path / 'data')!r}, "
            f"'--datalist', {str(bad)!r}, '--presets', 'tiny', '--bundle_root', {str(tmp_path / 'run')!r}]; main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()
    assert any(line.startswith("StoreError: 1 of 2 case(s)") for line in last[-3:]), last[-5:]
    assert "missing_t1.nii.gz" in last[-1], last[-3:]
