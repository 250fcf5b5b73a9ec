"""Inference on NIfTI volumes: outputs keep the input geometry, inverse transforms are exact, bad cases isolated."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from .helpers import BUNDLE, PRESETS, error_chain, workflow

INFER = BUNDLE / "configs" / "inference.json"
TINY = PRESETS / "tiny.json"
BRATS_LABELS = {0, 1, 2, 4}


def _tiny_checkpoint(path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(INFER), str(TINY)])
    net = parser.get_parsed_content("network_def")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(net.state_dict(), path)


def _run_inference(dataset_dir, output_dir, ckpt, **override):
    wf = workflow([INFER, TINY], workflow_type="infer", bundle_root=str(output_dir.parent),
                  dataset_dir=str(dataset_dir), output_dir=str(output_dir), ckpt_path=str(ckpt), num_workers=0,
                  **override)
    wf.initialize()
    wf.run()
    return wf


@pytest.fixture(scope="module")
def demo_cases(tmp_path_factory):
    from diffmed_monai.data import make_demo_dataset

    root = tmp_path_factory.mktemp("cases")
    make_demo_dataset(str(root), num_cases=2, seed=3)
    return root


def test_inference_writes_label_per_case_with_input_geometry(demo_cases, tmp_path):
    ckpt = tmp_path / "models" / "model.pt"
    _tiny_checkpoint(ckpt)
    out_dir = tmp_path / "pred"
    wf = _run_inference(demo_cases, out_dir, ckpt)
    assert not wf.check_properties()
    wf.finalize()
    cases = sorted(d for d in os.listdir(demo_cases) if os.path.isdir(demo_cases / d))
    written = sorted(os.listdir(out_dir))
    assert written == [f"{c}_seg.nii.gz" for c in cases]
    for case in cases:
        ref = nib.load(demo_cases / case / f"{case}_t1.nii.gz")
        out = nib.load(out_dir / f"{case}_seg.nii.gz")
        assert out.shape == ref.shape
        assert np.array_equal(out.affine, ref.affine)
        assert out.get_data_dtype() == np.uint8
        assert out.header.get_sform(coded=True)[1] == ref.header.get_sform(coded=True)[1]
        assert out.header.get_qform(coded=True)[1] == ref.header.get_qform(coded=True)[1]
        assert np.allclose(out.header.get_zooms(), ref.header.get_zooms())
        assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= BRATS_LABELS
    for case in cases:  # inputs untouched
        assert sorted(os.listdir(demo_cases / case)) == sorted(
            f"{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair", "seg"))


BRATS_REGIONS = {"wt": (1, 2, 4), "tc": (1, 4), "et": (4,), "ncr": (1,), "ed": (2,)}


def test_cropped_inference_agrees_with_uncropped_on_demo_phantoms(demo_cases, tmp_path):
    """The bundle's inference with ``crop_foreground`` (crop to the head on the network's grid, empty slices skipped)
    and without it, same tiny fixed-seed network, one demo phantom: every region agrees to Dice >= 0.995 on the
    voxels of the head (its in-plane crop is whole 16-px tiles, so a crop off the grid would fail).

    ``crop_slices`` is off here: a slice's own box moves the Swin windows relative to its content, which flips
    near-tie voxels of an untrained network (with trained weights the agreement is >= 0.999, docs/benchmarks.md);
    its geometry is exact (``test_inverse_preprocessing_is_exact_for_non_ras_anisotropic_case``).
    Where every modality is zero the cropped path predicts background without computing; the untrained network's
    output there is arbitrary, so the comparison leaves those voxels out and checks that the empty slices are
    background instead.
    """
    torch.manual_seed(0)
    ckpt = tmp_path / "models" / "model.pt"
    _tiny_checkpoint(ckpt)
    case = sorted(os.listdir(demo_cases))[0]
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / case).symlink_to(demo_cases / case)
    for crop in (True, False):
        _run_inference(tmp_path / "cases", tmp_path / f"pred_{crop}", ckpt, crop_foreground=crop,
                       crop_slices=False).finalize()
    image = np.stack([np.asarray(nib.load(demo_cases / case / f"{case}_{m}.nii.gz").dataobj)
                      for m in ("t1", "t1ce", "t2", "flair")])
    occupied = image.any(axis=(0, 1, 2))
    assert 0 < occupied.sum() < len(occupied)  # there are empty slices to skip
    pred = {c: np.asarray(nib.load(tmp_path / f"pred_{c}" / f"{case}_seg.nii.gz").dataobj) for c in (True, False)}
    assert not pred[True][..., ~occupied].any()
    head = image.any(axis=0)
    cropped, full = pred[True][head], pred[False][head]
    for name, labels in BRATS_REGIONS.items():
        x, y = np.isin(cropped, labels), np.isin(full, labels)
        assert y.any(), name  # the network predicts this region somewhere: the comparison means something
        assert 2.0 * (x & y).sum() / (x.sum() + y.sum()) >= 0.995, name


@pytest.mark.parametrize("background", ["noise", "zero", "shrinking"])
def test_inverse_preprocessing_is_exact_for_non_ras_anisotropic_case(tmp_path, background):
    """LPS-ordered, 2 x 2 x 3 mm case -> RAS for the network -> back: every voxel returns to its place.

    ``noise``: no zero voxel, nothing cropped or skipped, resampled to 1 mm. ``zero``: the image is zero outside a
    box and on one slice inside it, so the volume is cropped in-plane and across slices, padded to the network's
    stride, the empty slice skipped, and all of it inverted. ``shrinking``: the same, with a box that shrinks from
    slice to slice, so each slice runs on its own box of whole 16-px tiles (``crop_slices``).
    """
    rng = np.random.default_rng(0)
    shape = (48, 64, 10) if background == "shrinking" else (20, 24, 10)
    labels = np.zeros(shape, np.uint8)
    labels[4:15, 5:18, 2:8] = 2
    labels[6:12, 8:14, 3:7] = 1
    labels[8:10, 9:12, 4:6] = 4
    image = rng.normal(size=shape).astype(np.float32)
    if background == "noise":
        labels[0, 0, 0] = 4  # a corner voxel must survive too
        pixdim = [1.0, 1.0, 1.0]
    else:
        inside = np.zeros(shape, bool)
        inside[3:17, 4:21, 1:9] = True
        if background == "shrinking":
            inside[:] = False
            for z in range(1, 9):
                inside[2 + 2 * z:46 - 2 * z, 2 + 3 * z:62 - 3 * z, z] = True
        inside[..., 6] = False  # an empty slice between foreground slices
        labels[~inside] = 0
        image[~inside] = 0.0
        pixdim = [2.0, 2.0, 3.0]  # no resampling: the empty slice stays exactly zero
    affine = np.array([[-2.0, 0, 0, 90], [0, -2.0, 0, 120], [0, 0, 3.0, -20], [0, 0, 0, 1]])
    case = tmp_path / "cases" / "case_001"
    case.mkdir(parents=True)
    class_index = np.searchsorted([0, 1, 2, 4], labels).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), case / "case_001_t1.nii.gz")
    nib.save(nib.Nifti1Image(class_index, affine), case / "case_001_seg.nii.gz")  # the oracle reads this channel
    ckpt = tmp_path / "models" / "model.pt"
    os.makedirs(ckpt.parent)
    torch.save({}, ckpt)
    oracle = {"_target_": "tests.helpers.OracleNet", "num_classes": 4}
    _run_inference(tmp_path / "cases", tmp_path / "pred", ckpt, modalities=["t1", "seg"], network_def=oracle,
                   intensity_transforms=[], pixdim=pixdim)
    out = nib.load(tmp_path / "pred" / "case_001_seg.nii.gz")
    assert np.array_equal(out.affine, affine)
    assert np.array_equal(np.asarray(out.dataobj), labels)


def test_bad_cases_are_refused_while_good_cases_are_written(demo_cases, tmp_path):
    import shutil

    data = tmp_path / "cases"
    shutil.copytree(demo_cases, data)
    good, bad = sorted(d for d in os.listdir(data))
    # a second bad case: truncated file; a third: 2D image
    os.remove(data / bad / f"{bad}_t2.nii.gz")
    trunc = data / "BraTS2021_09998"
    shutil.copytree(data / good, trunc)
    for name in os.listdir(trunc):
        os.rename(trunc / name, trunc / name.replace(good, "BraTS2021_09998"))
    raw = (trunc / "BraTS2021_09998_flair.nii.gz").read_bytes()
    (trunc / "BraTS2021_09998_flair.nii.gz").write_bytes(raw[: len(raw) // 3])
    flat = data / "BraTS2021_09999"
    flat.mkdir()
    for m in ("t1", "t1ce", "t2", "flair"):
        nib.save(nib.Nifti1Image(np.ones((16, 16), np.float32), np.eye(4)), flat / f"BraTS2021_09999_{m}.nii.gz")
    ckpt = tmp_path / "models" / "model.pt"
    _tiny_checkpoint(ckpt)
    wf = _run_inference(data, tmp_path / "pred", ckpt)
    with pytest.raises(SystemExit) as err:  # the summary is the last output, exit status 1, no traceback
        wf.finalize()
    message = error_chain(err.value)
    for case in (bad, "BraTS2021_09998", "BraTS2021_09999"):
        assert case in message
    assert "t2" in message and "flair" in message
    assert sorted(os.listdir(tmp_path / "pred")) == [f"{good}_seg.nii.gz"]  # no temp or partial files


def test_output_equal_to_input_is_refused(demo_cases, tmp_path):
    from diffmed_monai.data import InferenceCases

    case = sorted(os.listdir(demo_cases))[0]
    datalist = tmp_path / "list.json"
    image = [str(demo_cases / case / f"{case}_{m}.nii.gz") for m in ("t1", "t1ce", "t2", "flair")]
    datalist.write_text(json.dumps({"testing": [{"case_id": f"{case}_t1", "image": image}]}))
    link = tmp_path / "out"  # another name for the case folder: the realpath check still sees the input
    link.symlink_to(demo_cases / case)
    with pytest.raises(ValueError, match="output_dir"):
        InferenceCases(str(tmp_path / "elsewhere"), ["t1", "t1ce", "t2", "flair"], output_dir=str(link),
                       datalist=str(datalist), output_postfix="")


def _checksums(folder) -> dict:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}


@pytest.mark.parametrize("where", ["dataset_dir", "inside_dataset_dir", "case_folder"])
def test_output_dir_in_the_inputs_is_refused_before_any_case_runs(demo_cases, tmp_path, where):
    import shutil

    data = tmp_path / "cases"
    shutil.copytree(demo_cases, data)
    case = sorted(os.listdir(data))[0]
    out = {"dataset_dir": data, "inside_dataset_dir": data / "predictions", "case_folder": data / case}[where]
    ckpt = tmp_path / "models" / "model.pt"
    _tiny_checkpoint(ckpt)
    before = _checksums(data)
    with pytest.raises(Exception) as err:
        _run_inference(data, out, ckpt)
    assert "`output_dir`" in error_chain(err.value) and str(data) in error_chain(err.value)
    assert _checksums(data) == before


def test_existing_outputs_are_never_replaced_unless_overwrite_and_own(demo_cases, tmp_path):
    ckpt = tmp_path / "models" / "model.pt"
    _tiny_checkpoint(ckpt)
    out = tmp_path / "pred"
    first, second = sorted(os.listdir(demo_cases))
    out.mkdir()
    foreign = out / f"{first}_seg.nii.gz"  # e.g. a ground-truth label someone keeps there
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), foreign)
    foreign_bytes = foreign.read_bytes()

    wf = _run_inference(demo_cases, out, ckpt)
    with pytest.raises(SystemExit) as err:  # the summary is the last output, exit status 1, no traceback
        wf.finalize()
    assert first in error_chain(err.value) and "overwrite" in error_chain(err.value)
    assert foreign.read_bytes() == foreign_bytes  # left as it was
    own = out / f"{second}_seg.nii.gz"
    assert own.is_file() and (own.stat().st_mode & 0o777) == 0o666 & ~_umask()

    # a second run refuses the earlier prediction too, unless `overwrite`; even then the foreign file stays
    own_bytes = own.read_bytes()
    with pytest.raises(SystemExit):  # `--overwrite false` as typed on the command line arrives as a string
        _run_inference(demo_cases, out, ckpt, overwrite="false").finalize()
    assert own.read_bytes() == own_bytes and foreign.read_bytes() == foreign_bytes
    os.utime(own, (0, 0))
    wf = _run_inference(demo_cases, out, ckpt, overwrite="True")
    with pytest.raises(SystemExit) as err:  # the summary is the last output, exit status 1, no traceback
        wf.finalize()
    assert first in error_chain(err.value)
    assert own.stat().st_mtime > 0 and foreign.read_bytes() == foreign_bytes  # own prediction rewritten
    assert sorted(os.listdir(out)) == [f"{first}_seg.nii.gz", f"{second}_seg.nii.gz"]  # no temporary files


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
