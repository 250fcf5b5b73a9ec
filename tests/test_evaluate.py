"""evaluate.json reports exactly what MONAI's metrics give on the same arrays, per case and as a mean, with the
BraTS empty-structure rules (default) or MONAI's own (``metric_empty_rule``)."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses
import pytest

from .helpers import BUNDLE, PRESETS, workflow

BRATS = [0, 1, 2, 4]


def _case(rng, shape):
    labels = np.zeros(shape, np.uint8)
    c = [rng.integers(8, s - 8) for s in shape]
    labels[c[0] - 6 : c[0] + 6, c[1] - 6 : c[1] + 6, c[2] - 4 : c[2] + 4] = 2
    labels[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, c[2] - 2 : c[2] + 2] = 4
    labels[c[0] - 1 : c[0] + 1, c[1] - 1 : c[1] + 1, c[2] - 1 : c[2] + 1] = 1
    pred = np.roll(labels, shift=(1, -2, 1), axis=(0, 1, 2))  # an imperfect "prediction"
    pred[c[0] + 2, c[1] : c[1] + 3, c[2]] = 1
    return labels, pred


def _brats_hd95(distances, pred, ref, diagonal):
    """The BraTS rule on MONAI's (B, C) HD95: both masks empty -> 0, exactly one empty -> the image diagonal."""
    pred_empty = pred.flatten(2).sum(-1) == 0
    ref_empty = ref.flatten(2).sum(-1) == 0
    out = distances.clone()
    out[pred_empty ^ ref_empty] = diagonal
    out[pred_empty & ref_empty] = 0.0
    return out


@pytest.mark.parametrize("rule", ["brats", "monai"])
def test_evaluation_numbers_equal_monai_metrics(tmp_path, rule):
    rng = np.random.default_rng(1)
    shape, spacing = (32, 32, 24), (2.0, 2.0, 2.0)
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))  # 102.45 mm
    affine = np.diag([*spacing, 1.0])
    data = tmp_path / "data"
    cases, arrays = [], {}
    for i in range(2):
        cid = f"case{i}"
        (data / cid).mkdir(parents=True)
        labels, pred = _case(rng, shape)
        if i == 1:  # NCR absent from both reference and prediction; ET (and so TC) missed by the prediction
            labels[labels == 1] = 4
            pred[pred == 1] = 4
            pred[pred == 4] = 2
        arrays[cid] = (labels, pred)
        nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32) + 5, affine), data / cid / "t1.nii.gz")
        pred_index = np.searchsorted(BRATS, pred).astype(np.float32)  # the oracle network reads class indices
        nib.save(nib.Nifti1Image(pred_index, affine), data / cid / "pred.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), data / cid / "seg.nii.gz")
        cases.append(
            {"case_id": cid, "image": [f"{cid}/t1.nii.gz", f"{cid}/pred.nii.gz"], "label": f"{cid}/seg.nii.gz"}
        )
    (data / "datalist.json").write_text(json.dumps({"training": cases, "validation": cases}))
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save({}, ckpt)
    out = tmp_path / "eval"
    wf = workflow(
        [BUNDLE / "configs" / "train.json", BUNDLE / "configs" / "evaluate.json", PRESETS / "tiny.json"],
        workflow_type="eval", bundle_root=str(tmp_path), dataset_dir=str(data), output_dir=str(out),
        modalities=["t1", "pred"], intensity_transforms=[], pixdim=list(spacing), roi_size=[32, 32],
        network_def={"_target_": "tests.helpers.OracleNet", "num_classes": 4}, num_workers=0,
        metric_empty_rule=rule,
    )
    wf.initialize()
    wf.run()

    dice = DiceMetric(include_background=True, ignore_empty=rule == "monai")
    hd95 = HausdorffDistanceMetric(include_background=True, percentile=95)
    regions = ConvertToMultiChannelBasedOnBratsClasses(et_label=3)
    expected = {}
    for cid, (labels, pred) in arrays.items():
        y = torch.as_tensor(np.searchsorted(BRATS, labels))[None, None]
        p = torch.as_tensor(np.searchsorted(BRATS, pred))[None, None]
        yo, po = one_hot(y, 4), one_hot(p, 4)
        d = dice(po, yo)[0]
        h = hd95(po, yo, spacing=list(spacing))
        h = (_brats_hd95(h, po, yo, diagonal) if rule == "brats" else h)[0]
        yr, pr = regions(y[0])[None], regions(p[0])[None]
        dr = dice(pr.float(), yr.float())[0]
        hr = hd95(pr.float(), yr.float(), spacing=list(spacing))
        hr = (_brats_hd95(hr, pr.float(), yr.float(), diagonal) if rule == "brats" else hr)[0]
        expected[cid] = {
            **{f"dice_{n}": float(d[i]) for i, n in enumerate(["bg", "ncr", "ed", "et"]) if i},
            **{f"hd95_{n}": float(h[i]) for i, n in enumerate(["bg", "ncr", "ed", "et"]) if i},
            **{f"dice_region_{n}": float(dr[i]) for i, n in enumerate(["tc", "wt", "et"])},
            **{f"hd95_region_{n}": float(hr[i]) for i, n in enumerate(["tc", "wt", "et"])},
        }
    for metric in expected["case0"]:
        with open(out / f"{metric}_raw.csv") as f:
            rows = list(csv.reader(f))[1:]
        assert len(rows) == 2
        for row in rows:
            cid = next(c for c in arrays if f"/{c}/" in row[0])
            assert np.isclose(float(row[1]), expected[cid][metric], atol=1e-4, equal_nan=True), (metric, cid, row)
        means = dict(r for r in csv.reader(open(out / "metrics.csv")))
        assert np.isclose(float(means[metric]), np.nanmean([expected[c][metric] for c in arrays]), atol=1e-4), metric
    assert 0 < float(means["dice_ed"]) < 1  # an imperfect prediction, not a trivial score
    case1 = expected["case1"]
    if rule == "brats":  # absent from both: a perfect score; missed: Dice 0 and HD95 = the diagonal
        assert case1["dice_ncr"] == 1.0 and case1["hd95_ncr"] == 0.0
        assert case1["dice_et"] == 0.0 and np.isclose(case1["hd95_et"], diagonal)
        assert np.isclose(case1["hd95_region_tc"], diagonal) and np.isclose(diagonal, 102.45, atol=0.01)
    else:  # MONAI's defaults leave empty references out (NaN) and give an empty prediction NaN distance
        assert math.isnan(case1["dice_ncr"]) and math.isnan(case1["hd95_ncr"]) and math.isnan(case1["hd95_et"])


def test_unknown_empty_rule_is_refused_with_its_config_key():
    from diffmed_monai.metrics import HausdorffDistance95, dice_ignores_empty, segmentation_metrics

    for make in (lambda: HausdorffDistance95(empty="nan"), lambda: segmentation_metrics(["bg", "a"], empty="nan")):
        with pytest.raises(ValueError, match=r"'nan' is not one of \('brats', 'monai'\).*`metric_empty_rule`"):
            make()
    assert dice_ignores_empty("monai") and not dice_ignores_empty("brats")
