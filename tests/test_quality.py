"""scripts/quality.py: the equal-budget comparison trains every model through the bundle, segments held-out cases on
their original grid and scores them per region (tiny sizes; no quality assertions)."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest

from .helpers import PRESETS, REPO

sys.path.insert(0, str(REPO / "scripts"))
import quality  # noqa: E402


def _save(path, array):
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([-1.0, -1.0, 1.0, 1.0])), str(path))
    return str(path)


def test_score_case_regions_and_false_positive_components(tmp_path):
    label = np.zeros((20, 20, 20), np.uint8)
    label[5:10, 5:10, 5:10] = 2  # oedema
    label[6:9, 6:9, 6:9] = 4  # enhancing inside it
    pred = label.copy()
    pred[15:17, 15:17, 15:17] = 2  # one spurious speck, away from the tumour
    pred[0, 0, 0] = 4  # and a one-voxel enhancing speck
    scores = quality.score_case(_save(tmp_path / "p.nii.gz", pred), _save(tmp_path / "l.nii.gz", label),
                                (0, 1, 2, 4))
    assert scores["et"]["fp_components"] == 1 and scores["wt"]["fp_components"] == 2
    assert scores["tc"]["fp_components"] == 1
    assert scores["et"]["dice"] == pytest.approx(2 * 27 / (28 + 27))
    assert scores["wt"]["dice"] == pytest.approx(2 * 125 / (125 + 8 + 1 + 125))
    exact = quality.score_case(_save(tmp_path / "q.nii.gz", label), _save(tmp_path / "l.nii.gz", label),
                               (0, 1, 2, 4))
    assert all(exact[r]["dice"] == 1.0 and exact[r]["hd95"] == 0.0 and exact[r]["fp_components"] == 0
               for r in quality.REGIONS)
    # necrosis is absent from both: TC is ET here, and an empty region in both scores Dice 1
    with pytest.raises(ValueError, match="grid"):
        nib.save(nib.Nifti1Image(pred, np.eye(4)), str(tmp_path / "moved.nii.gz"))
        quality.score_case(str(tmp_path / "moved.nii.gz"), str(tmp_path / "l.nii.gz"), (0, 1, 2, 4))


def test_quality_trains_segments_and_scores_every_model(tmp_path):
    report = quality.main(
        workdir=str(tmp_path / "q"), presets=[str(PRESETS / "tiny.json")], budget_s=2, num_cases=3, num_test=1,
        shape=(96, 96, 32), rim_mm=(1.0, 2.0), slices_per_volume=2, patch_3d=(32, 32, 32),
    )
    assert set(report["results"]) == set(quality.MODELS)
    written = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert written["settings"]["test_cases"] == report["settings"]["test_cases"] and len(written["settings"]["test_cases"]) == 1
    table = (tmp_path / "q" / "quality.md").read_text()
    for model, result in report["results"].items():
        assert result["training"]["iterations"] >= 1 and result["training"]["cpu_s"] >= 2
        assert result["label"] in table
        for region in quality.REGIONS:
            mean = result["mean"][region]
            assert 0.0 <= mean["dice"] <= 1.0 and mean["hd95"] >= 0.0 and mean["fp_components"] >= 0
        case = report["settings"]["test_cases"][0]
        pred = nib.load(str(tmp_path / "q" / model / "predictions" / f"{case}_seg.nii.gz"))
        ref = nib.load(str(tmp_path / "q" / "data" / case / f"{case}_seg.nii.gz"))
        assert pred.shape == ref.shape and np.allclose(pred.affine, ref.affine)
    # a rerun with the same settings reuses every model's result instead of training again
    stamps = {m: (tmp_path / "q" / m / "models" / "model.pt").stat().st_mtime_ns for m in quality.MODELS}
    again = quality.main(
        workdir=str(tmp_path / "q"), presets=[str(PRESETS / "tiny.json")], budget_s=2, num_cases=3, num_test=1,
        shape=(96, 96, 32), rim_mm=(1.0, 2.0), slices_per_volume=2, patch_3d=(32, 32, 32),
    )
    assert again["results"] == json.loads(json.dumps(report["results"]))
    assert stamps == {m: (tmp_path / "q" / m / "models" / "model.pt").stat().st_mtime_ns for m in quality.MODELS}
