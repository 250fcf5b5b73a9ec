"""The README's main command: ``diffmed-monai demo`` runs data -> store -> training -> inference -> evaluation and
prints where its outputs are, the pictures included (here shortened to 1 epoch on 4 cases)."""

from __future__ import annotations

import csv
import itertools
import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest


@pytest.mark.slow
def test_demo_command_writes_label_maps_metrics_and_pictures(tmp_path):
    exe = shutil.which("diffmed-monai")
    cmd = [exe] if exe else [sys.executable, "-m", "diffmed_monai.cli"]
    work = tmp_path / "demo_run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [*cmd, "demo", "--workdir", str(work), "--num_cases", "4", "--epochs", "1"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in out
    assert "RANDOMLY INITIALISED" in done.stdout + done.stderr  # the tiny teacher says it is untrained

    datalist = json.loads((work / "data" / "datalist.json").read_text())
    val_ids = sorted(os.path.basename(os.path.dirname(c["label"])) for c in datalist["validation"])
    labels = sorted((work / "predictions").glob("*_seg.nii.gz"))
    assert [p.name for p in labels] == [f"{cid}_seg.nii.gz" for cid in val_ids]
    assert str(work / "predictions") in out and str(work / "bundle_run" / "eval" / "metrics.csv") in out
    for path, cid in zip(labels, val_ids):
        seg, ref = nib.load(str(path)), nib.load(str(work / "data" / cid / f"{cid}_flair.nii.gz"))
        assert seg.shape == ref.shape and np.array_equal(seg.affine, ref.affine)
        assert seg.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1, 2, 4}

    with open(work / "bundle_run" / "eval" / "metrics.csv") as f:
        means = dict(csv.reader(f))
    assert 0.0 <= float(means["val_mean_dice"]) <= 1.0
    assert {"dice_ed", "hd95_ed", "dice_region_wt", "hd95_region_wt"} <= set(means)
    assert (work / "bundle_run" / "models" / "model.pt").is_file()

    # pictures: one PNG per case from inference and from evaluation, and the training curves; all printed
    pictures = sorted((work / "predictions").glob("*.png"))
    evaluation = sorted((work / "bundle_run" / "eval").glob("BraTS*.png"))
    assert [p.name for p in pictures] == [p.name for p in evaluation] == [f"{cid}.png" for cid in val_ids]
    progress = work / "bundle_run" / "eval" / "progress.png"
    assert progress.is_file()
    for path in [*pictures, *evaluation, progress]:
        assert path.read_bytes().startswith(b"\x89PNG") and str(path) in out
    lines = out.split("  evaluation pictures (", 1)[1].splitlines()[1:]
    listed = [line.strip() for line in itertools.takewhile(lambda line: line.startswith("    "), lines)]
    assert listed == [str(p) for p in evaluation]  # the training curves are not listed as a case picture
