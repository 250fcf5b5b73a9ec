"""BraTS 2023+ data (GLI naming, labels 1 NETC / 2 SNFH / 3 ET): demo data, datalist, and the bundle end to end."""

from __future__ import annotations

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from diffmed_monai.data import make_demo_data

from .helpers import BUNDLE, PRESETS, workflow

CONFIGS = BUNDLE / "configs"


@pytest.fixture(scope="module")
def gli_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gli")
    datalist = make_demo_data(str(root), num_cases=3, shape=(48, 48, 32), layout="brats2023", val_fraction=0.34)
    return root, datalist


def test_brats2023_layout_and_datalist(gli_data):
    root, datalist = gli_data
    content = json.loads(open(datalist).read())
    case = content["training"][0]
    assert case["case_id"].startswith("BraTS-GLI-") and case["case_id"].endswith("-000")
    assert [os.path.basename(p) for p in case["image"]] == [f"{case['case_id']}-{m}.nii.gz" for m in
                                                           ("t1n", "t1c", "t2w", "t2f")]
    seg = np.asarray(nib.load(root / case["label"]).dataobj)
    assert set(np.unique(seg).tolist()) <= {0, 1, 2, 3} and 3 in seg  # ET is 3 from 2023 on


@pytest.mark.slow
def test_brats2023_preset_trains_segments_and_evaluates(gli_data, tmp_path):
    root, datalist = gli_data
    presets = [PRESETS / "brats2023.json", PRESETS / "tiny.json"]
    common = dict(bundle_root=str(tmp_path), dataset_dir=str(root), datalist=datalist, roi_size=[48, 48])
    train = workflow([CONFIGS / "train.json", *presets], epochs=1, **common)
    train.initialize()
    train.run()
    assert (tmp_path / "models" / "model.pt").is_file()

    infer = workflow([CONFIGS / "inference.json", *presets], workflow_type="infer", output_dir=str(tmp_path / "pred"),
                     num_workers=0, **common)
    infer.initialize()
    infer.run()
    infer.finalize()
    (written,) = os.listdir(tmp_path / "pred")
    assert set(np.unique(np.asarray(nib.load(tmp_path / "pred" / written).dataobj)).tolist()) <= {0, 1, 2, 3}

    evaluate = workflow([CONFIGS / "train.json", CONFIGS / "evaluate.json", *presets], workflow_type="eval",
                        output_dir=str(tmp_path / "eval"), num_workers=0, **common)
    evaluate.initialize()
    evaluate.run()
    means = dict(csv.reader(open(tmp_path / "eval" / "metrics.csv")))
    for name in ("dice_netc", "dice_snfh", "dice_et", "dice_region_tc", "dice_region_wt", "dice_region_et",
                 "lesion_dice_tc", "lesion_dice_wt", "lesion_dice_et"):
        assert 0.0 <= float(means[name]) <= 1.0, name
    for region in ("tc", "wt", "et"):  # lesion-wise HD95 lies between a perfect 0 and the challenge's 374 mm
        assert 0.0 <= float(means[f"lesion_hd95_{region}"]) <= 374.0
    assert torch.load(tmp_path / "models" / "model.pt", weights_only=True)
