"""Case pictures: `save_png` makes inference write one PNG per case and evaluation one per case with the ground
truth beside the prediction (written and recognised as ours; the pixels are not checked)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from .helpers import BUNDLE, PRESETS, error_chain, workflow

INFER = BUNDLE / "configs" / "inference.json"
TINY = PRESETS / "tiny.json"
CONFIGS = [BUNDLE / "configs" / "train.json", BUNDLE / "configs" / "evaluate.json", TINY]

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def data_and_checkpoint(tmp_path_factory):
    from monai.bundle import ConfigParser

    from diffmed_monai.data import make_demo_data

    root = tmp_path_factory.mktemp("png")
    datalist = make_demo_data(str(root / "data"), num_cases=2, seed=6, val_fraction=0.5)
    parser = ConfigParser()
    parser.read_config([str(c) for c in CONFIGS])
    torch.manual_seed(0)
    ckpt = root / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    return root, datalist, ckpt


def test_inference_and_evaluation_write_one_png_per_case(data_and_checkpoint, tmp_path):
    from diffmed_monai.transforms import is_own_png

    root, datalist, ckpt = data_and_checkpoint
    wf = workflow([INFER, TINY], workflow_type="infer", bundle_root=str(root), dataset_dir=str(root / "data"),
                  datalist=datalist, output_dir=str(tmp_path / "pred"), ckpt_path=str(ckpt), num_workers=0,
                  save_png=True)
    wf.initialize()
    wf.run()
    wf.finalize()
    names = sorted(os.listdir(tmp_path / "pred"))
    case = names[0].split(".")[0]
    assert names == [f"{case}.png", f"{case}_seg.nii.gz"]
    assert is_own_png(str(tmp_path / "pred" / f"{case}.png"))

    # a second run does not replace the picture unless `overwrite` (the label map removed: only the picture is left)
    os.remove(tmp_path / "pred" / f"{case}_seg.nii.gz")
    wf = workflow([INFER, TINY], workflow_type="infer", bundle_root=str(root), dataset_dir=str(root / "data"),
                  datalist=datalist, output_dir=str(tmp_path / "pred"), ckpt_path=str(ckpt), num_workers=0,
                  save_png=True)
    wf.initialize()
    wf.run()
    with pytest.raises(SystemExit) as err:
        wf.finalize()
    assert f"{case}.png" in error_chain(err.value) and "save_png" in error_chain(err.value)

    wf = workflow(CONFIGS, workflow_type="eval", bundle_root=str(root), dataset_dir=str(root / "data"),
                  datalist=datalist, output_dir=str(tmp_path / "eval"), num_workers=0, save_png=True)
    wf.initialize()
    wf.run()
    pngs = sorted(p for p in os.listdir(tmp_path / "eval") if p.endswith(".png"))
    assert pngs == [f"{case}.png"] and is_own_png(str(tmp_path / "eval" / pngs[0]))
    assert os.path.getsize(tmp_path / "eval" / pngs[0]) > os.path.getsize(tmp_path / "pred" / f"{case}.png")


def test_lesion_centre_is_in_the_largest_component():
    from diffmed_monai.transforms import default_png_modalities, lesion_centre

    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:5, 2:5, 2:5] = 1
    labels[10:20, 12:22, 5:9] = 2
    assert labels[lesion_centre(labels)] == 2
    assert lesion_centre(np.zeros((4, 4, 4))) is None
    assert default_png_modalities(["t1", "t1ce", "t2", "flair"]) == ["flair", "t1ce"]
    assert default_png_modalities(["t1n", "t1c", "t2w", "t2f"]) == ["t2f", "t1c"]
    assert default_png_modalities(["dwi", "adc", "flair"]) == ["dwi", "adc"]


def test_pictures_turn_volumes_to_ras():
    from diffmed_monai.transforms.pictures import _ras_spacing, _to_ras

    volume = np.zeros((2, 4, 5, 6), np.float32)  # (C, X, Y, Z)
    volume[:, 0, 0, 0] = 1.0  # the right, anterior, inferior corner of an LPS image
    lps = np.diag([-1.0, -2.0, 3.0, 1.0])
    ras = _to_ras(volume, lps)
    assert ras.shape == (2, 4, 5, 6) and ras.flags.c_contiguous
    assert ras[:, -1, -1, 0].tolist() == [1.0, 1.0] and ras.sum() == 2
    # voxel axes toward P, S and R: the array is transposed to (R, A, S) and flipped along A
    asr = np.array([[0.0, 0.0, 3.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    ras = _to_ras(volume, asr)
    assert ras.shape == (2, 6, 4, 5) and ras[:, 0, -1, 0].tolist() == [1.0, 1.0] and ras.sum() == 2
    assert _ras_spacing(asr).tolist() == [3.0, 1.0, 2.0]
    assert _to_ras(volume, None) is volume
