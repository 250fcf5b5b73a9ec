"""``scripts/zoo_verify.py`` runs the zoo's CI scripts in the order of its premerge scripts and adds no step of its
own (no fake weights), on a stand-in checkout whose ``ci/`` scripts record how they are called; the zoo's own
scripts run in ``tests/test_bundle_packaging.py`` with ``DIFFMED_ZOO_DIR``."""

from __future__ import annotations

import json
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from .helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))  # the bundle tools are scripts, not part of the package

NAME = "diffmed_dinov3_brats_segmentation"

#: a ci/ script that logs its name and arguments; verify_bundle.py refuses a bundle without models/model.pt unless
#: ci/bundle_custom_data.py lists it in exclude_verify_preferred_files_list, as the zoo's does
RECORDER = textwrap.dedent("""\
    import os, sys
    with open("calls.log", "a") as f:  # the zoo root: the working directory of every step
        f.write(os.path.basename(__file__) + " " + " ".join(sys.argv[1:]) + "\\n")
    if os.path.basename(__file__) == "verify_bundle.py":
        name = sys.argv[sys.argv.index("-b" if "-b" in sys.argv else "--b") + 1]
        listed = open(os.path.join("ci", "bundle_custom_data.py")).read()
        excluded = name in listed.split("exclude_verify_preferred_files_list = [", 1)[1].split("]", 1)[0]
        if not excluded and not os.path.isfile(os.path.join("models", name, "models", "model.pt")):
            sys.exit("ValueError: necessary file models/model.pt is not existing.")
    if os.path.basename(__file__) == "get_bundle_requirements.py" and "--get_script" not in sys.argv:
        print("requirements_x.txt")
    """)


def _fake_zoo(root: Path) -> Path:
    (root / "ci" / "unit_tests").mkdir(parents=True)
    (root / "models").mkdir()
    for script in ("verify_bundle.py", "get_bundle_requirements.py", "prepare_schema.py", "unit_tests/runner.py"):
        (root / "ci" / script).write_text(RECORDER)
    (root / "ci" / "bundle_custom_data.py").write_text(
        "exclude_verify_torchscript_list = [\n]\nexclude_verify_preferred_files_list = [\n]\n")
    (root / "models" / "model_info.json").write_text("{}\n")
    for name in ("setup.cfg", "pyproject.toml", "requirements.txt", "requirements-dev.txt"):
        (root / name).write_text("")
    return root


def _zip(tmp_path: Path, weights: bool) -> Path:
    path = tmp_path / f"{NAME}_{weights}.zip"
    meta = (REPO / "bundle" / "configs" / "metadata.json").read_text()
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{NAME}/configs/metadata.json", meta)
        if weights:
            zf.writestr(f"{NAME}/models/model.pt", b"weights")
    return path


@pytest.mark.parametrize("weights, configs_only, ok", [(False, False, False), (True, False, True), (False, True, True)])
def test_zoo_verify_runs_the_premerge_steps_in_order_and_nothing_else(tmp_path, capsys, weights, configs_only, ok):
    from zoo_verify import zoo_verify

    zoo = _fake_zoo(tmp_path / "zoo")
    work = tmp_path / "work"
    code = zoo_verify(str(zoo), zip=str(_zip(tmp_path, weights)), work_dir=str(work), configs_only=configs_only,
                      jobs="premerge-cpu,premerge-gpu")
    out = capsys.readouterr().out
    assert code == (0 if ok else 1), out[-3000:]
    calls = [line.split() for line in (work / "model-zoo" / "calls.log").read_text().splitlines()]
    calls = [c for c in calls if c[0] != "prepare_schema.py"]  # it runs itself when the schema's address answers
    assert calls == [
        ["get_bundle_requirements.py", "--b", NAME],  # ci/run_premerge_cpu.sh at the zoo's dfae206
        ["verify_bundle.py", "-b", NAME, "-m", "min"],
        ["get_bundle_requirements.py", "--b", NAME],
        ["get_bundle_requirements.py", "--b", NAME, "--get_script", "True"],
        ["verify_bundle.py", "--b", NAME],
        ["runner.py", "--b", NAME],
    ], calls
    assert "fake" not in out.lower()
    assert not (work / "model-zoo" / "models" / NAME / "models" / "model.pt").exists() or weights
    summary = out.strip().splitlines()[-1]
    if weights:
        assert summary.startswith("weights: models/model.pt is in the zip")
    elif configs_only:
        assert "exclude_verify_preferred_files_list" in summary and "configs-only" in summary
    else:
        assert "FAIL  verify_bundle -m min" in out and "FAIL  verify_bundle (full)" in out
        assert "necessary file models/model.pt is not existing" in out and "--weights" in summary
    assert json.loads((work / "model-zoo" / "models" / "model_info.json").read_text()) == {}
