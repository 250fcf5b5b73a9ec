"""Cases with a subset of the modality files: refused unless `allow_missing_modalities`, then segmented with the
modality mask (zeros on the present modalities' grid in place of the missing ones); the report and the per-case
metrics CSV say which modalities were there. Also the training warm-up before modality dropout."""

from __future__ import annotations

import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from .helpers import BUNDLE, PRESETS, error_chain, workflow

INFER = BUNDLE / "configs" / "inference.json"
TRAIN = BUNDLE / "configs" / "train.json"
EVALUATE = BUNDLE / "configs" / "evaluate.json"
TINY = PRESETS / "tiny.json"
MODS = ["t1", "t1ce", "t2", "flair"]


@pytest.fixture(scope="module")
def brats_case(tmp_path_factory):
    """One BraTS-2021-layout demo case whose T1 file was removed, and a tiny random checkpoint."""
    from monai.bundle import ConfigParser

    from diffmed_monai.data import make_demo_dataset

    root = tmp_path_factory.mktemp("missing_t1")
    (folder,) = make_demo_dataset(str(root / "cases"), num_cases=1, seed=5)
    case = os.path.basename(folder)
    os.remove(os.path.join(folder, f"{case}_t1.nii.gz"))
    parser = ConfigParser()
    parser.read_config([str(INFER), str(TINY)])
    torch.manual_seed(0)
    ckpt = root / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    return root, case, ckpt


def _infer(root, out, ckpt, run=True, **override):
    wf = workflow([INFER, TINY], workflow_type="infer", bundle_root=str(root), dataset_dir=str(root / "cases"),
                  output_dir=str(out), ckpt_path=str(ckpt), num_workers=0, **override)
    wf.initialize()
    if run:
        wf.run()
    return wf


def test_case_without_t1_is_refused_naming_the_key(brats_case, tmp_path):
    root, case, ckpt = brats_case
    wf = _infer(root, tmp_path / "pred", ckpt)
    with pytest.raises(SystemExit) as err:
        wf.finalize()
    message = error_chain(err.value)
    assert case in message and "allow_missing_modalities" in message and "t1" in message
    assert not (tmp_path / "pred").exists() or not os.listdir(tmp_path / "pred")


def test_case_without_t1_is_segmented_with_the_mask(brats_case, tmp_path, capsys):
    """With the key, the case runs: label map on the input grid; the network got the mask marking T1 absent."""
    root, case, ckpt = brats_case
    masks = []
    wf = _infer(root, tmp_path / "pred", ckpt, run=False, allow_missing_modalities=True)
    network = wf.parser.get_parsed_content("network")  # the instance the evaluator runs
    network.register_forward_pre_hook(lambda module, args, kwargs: masks.append(kwargs.get("modality_mask")),
                                      with_kwargs=True)
    wf.run()
    wf.finalize()
    out = nib.load(tmp_path / "pred" / f"{case}_seg.nii.gz")
    ref = nib.load(root / "cases" / case / f"{case}_flair.nii.gz")
    assert out.shape == ref.shape and np.array_equal(out.affine, ref.affine)
    assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2, 4}
    assert masks and all(m is not None and m.shape[1] == 4 for m in masks)
    assert all(torch.equal(m.cpu(), torch.tensor([[0.0, 1.0, 1.0, 1.0]]).expand(len(m), -1)) for m in masks)
    assert f"{case}: t1ce+t2+flair (missing: t1)" in capsys.readouterr().out  # the per-case report


def test_missing_channel_is_zero_on_the_grid_of_the_present_ones(tmp_path):
    from monai.transforms import LoadImaged

    from diffmed_monai.transforms import FillMissingModalitiesd, SelectPresentModalitiesd

    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    paths = []
    for i, m in enumerate(MODS):
        path = tmp_path / f"c_{m}.nii.gz"
        if m != "t2":
            nib.save(nib.Nifti1Image(np.full((4, 5, 6), i + 1.0, np.float32), affine), path)
        paths.append(str(path))
    with pytest.raises(ValueError, match="allow_missing_modalities"):
        SelectPresentModalitiesd("image", MODS)({"image": paths})
    d = SelectPresentModalitiesd("image", MODS, allow_missing=True)({"image": paths})
    assert d["modalities_present"] == "t1+t1ce+flair" and d["modality_mask"].tolist() == [1, 1, 0, 1]
    d = FillMissingModalitiesd("image")(LoadImaged("image", ensure_channel_first=True)(d))
    image = d["image"]
    assert isinstance(image, MetaTensor) and image.shape == (4, 4, 5, 6)
    assert [float(image[c].mean()) for c in range(4)] == [1.0, 2.0, 0.0, 4.0]
    assert np.allclose(image.affine.numpy(), affine)


def test_inferer_passes_the_mask_only_when_a_modality_is_missing():
    from diffmed_monai.inferers import ForegroundSliceInferer

    seen = []

    def net(x, modality_mask=None):
        seen.append(modality_mask)
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    inferer = ForegroundSliceInferer(num_classes=2, max_batch_pixels=3 * 16 * 16)
    volume = torch.ones(1, 4, 16, 16, 5)
    inferer(volume, net, modality_mask=torch.ones(1, 4))
    assert seen and all(m is None for m in seen)
    seen.clear()
    inferer(volume, net, modality_mask=torch.tensor([[1.0, 0.0, 1.0, 1.0]]))
    assert [m.shape for m in seen] == [(3, 4), (2, 4)]  # expanded to each slice batch
    assert all(m[:, 1].eq(0).all() and m[:, [0, 2, 3]].eq(1).all() for m in seen)


def test_evaluation_records_the_modalities_of_each_case(tmp_path):
    """Evaluation of a case without T1 (datalist path to a removed file): refused without the key; with it the
    per-case CSV names the modalities present and missing beside the metrics."""
    from diffmed_monai.data import make_demo_data

    data = tmp_path / "data"
    datalist = make_demo_data(str(data), num_cases=2, seed=4, val_fraction=0.5)
    content = json.loads(open(datalist).read())
    val = content["validation"][0]
    os.remove(data / val["image"][0])  # its t1
    from monai.bundle import ConfigParser

    configs = [TRAIN, EVALUATE, TINY]
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    common = dict(workflow_type="eval", bundle_root=str(tmp_path), dataset_dir=str(data), datalist=str(datalist),
                  output_dir=str(tmp_path / "eval"), num_workers=0)
    with pytest.raises(Exception) as err:
        workflow(configs, **common).initialize()
    assert "allow_missing_modalities" in error_chain(err.value)
    wf = workflow(configs, allow_missing_modalities=True, **common)
    wf.initialize()
    wf.run()
    with open(tmp_path / "eval" / "cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["case_id"] == val["case_id"]
    assert rows[0]["modalities_present"] == "t1ce+t2+flair" and rows[0]["modalities_missing"] == "t1"
    assert 0.0 <= float(rows[0]["dice_region_wt"]) <= 1.0


def test_scan_folder_keeps_a_case_with_a_missing_modality_only_when_allowed(tmp_path):
    from diffmed_monai.data import scan_folder

    case = tmp_path / "c1"
    case.mkdir()
    for m in ("t1ce", "t2", "flair"):
        (case / f"c1_{m}.nii.gz").write_bytes(b"")
    cases, skipped = scan_folder(str(tmp_path), MODS)
    assert not cases and "allow_missing_modalities" in skipped[0][1]
    cases, skipped = scan_folder(str(tmp_path), MODS, allow_missing=True)
    assert cases[0]["image"][0] is None and cases[0]["image"][1] == "c1/c1_t1ce.nii.gz" and not skipped


@pytest.mark.parametrize("warmup", [1, 3])
def test_modality_dropout_starts_after_the_warmup_epochs(warmup):
    from ignite.engine import Events

    from diffmed_monai.engines import DiffMedTrainer

    teacher = torch.nn.Identity()
    net = torch.nn.Linear(1, 1)
    trainer = DiffMedTrainer(
        device=torch.device("cpu"), max_epochs=5, train_data_loader=[0], network=net, teacher=teacher,
        loss_function=torch.nn.Identity(), optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        modality_dropout=0.5, modality_dropout_warmup_epochs=warmup,
    )
    active = []
    for epoch in range(1, 6):  # what Ignite does at the start of each epoch
        trainer.state.epoch = epoch
        trainer.fire_event(Events.EPOCH_STARTED)
        active.append(trainer.prepare_batch.dropout_active)
    assert active == [epoch > warmup for epoch in range(1, 6)]
