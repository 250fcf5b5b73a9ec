"""The slice store: written once from the bundle's own transforms, atomic and resumable, keyed by its settings, read
one slice at a time by the training and validation datasets."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose

from diffmed_monai.data import (
    SliceStore,
    StoreError,
    StoreSliceDataset,
    StoreVolumeDataset,
    make_demo_dataset,
    scan_brats,
    split_cases,
    write_datalist,
)

from .helpers import BUNDLE, PRESETS, REPO

TRAIN = BUNDLE / "configs" / "train.json"
TINY = PRESETS / "tiny.json"
SHAPE = (48, 48, 32)  # voxels at 2 mm, as the tiny preset resamples


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("store_data")
    make_demo_dataset(str(root), num_cases=5, shape=SHAPE, spacing=(2.0, 2.0, 2.0), seed=3)
    cases, _ = scan_brats(str(root))
    train, val = split_cases(cases, val_fraction=0.4, seed=0)
    write_datalist(str(root / "datalist.json"), train, val, test=val)
    return root


def _parser(data, store_dir, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(TINY)])
    parser.update({"dataset_dir": str(data), "bundle_root": str(store_dir.parent), "store_dir": str(store_dir),
                   **overrides})
    return parser


def _store(data, store_dir, **overrides) -> tuple[SliceStore, list[dict]]:
    parser = _parser(data, store_dir, **overrides)
    return parser.get_parsed_content("store"), parser.get_parsed_content("store_cases")


def _arrays(store_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cases = os.path.join(store_dir, "cases")
    return {
        cid: (np.load(os.path.join(cases, cid, "image.npy")), np.load(os.path.join(cases, cid, "label.npy")))
        for cid in sorted(os.listdir(cases)) if not cid.startswith(".")
    }


def test_store_holds_the_bundle_transforms_output_slice_by_slice(data, tmp_path):
    parser = _parser(data, tmp_path / "store")
    store, cases = parser.get_parsed_content("store"), parser.get_parsed_content("store_cases")
    summary = store.preprocess(cases, progress=False)
    assert (summary.total, summary.written, summary.present, summary.failed) == (5, 5, 0, [])

    reference = Compose(
        parser.get_parsed_content("train#load_transforms") + parser.get_parsed_content("crop_transforms")
        + parser.get_parsed_content("intensity_transforms")
    )
    case = cases[0]
    expected = reference(dict(case))
    image, label = np.asarray(expected["image"]), np.asarray(expected["label"])  # (M, X, Y, Z), (1, X, Y, Z)
    records = store.records(cases)
    record = records[0]
    assert record.shape == (image.shape[3], image.shape[0], image.shape[1], image.shape[2])
    for z in (0, image.shape[3] // 2, image.shape[3] - 1):
        got_image, got_label = store.read_slice(record.case_id, z)
        assert got_image.dtype == np.float16 and got_label.dtype == np.uint8
        np.testing.assert_allclose(got_image.astype(np.float32), image[..., z], rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(got_label, label[0, ..., z])
        np.testing.assert_array_equal(record.label_counts[z], np.bincount(got_label.ravel(), minlength=4))
    assert record.labelled.any() and not record.labelled.all()  # tumour slices and tumour-free slices

    train = StoreSliceDataset(parser.get_parsed_content("train#datalist"), store,
                              transform=parser.get_parsed_content("train#preprocessing"))
    assert len(train) == sum(r.num_slices for r in records[: len(parser.get_parsed_content("train#datalist"))])
    item = train[3]
    assert tuple(item["image"].shape) == (4, 96, 96) and tuple(item["label"].shape) == (1, 96, 96)
    weights = train.sampling_weights(3.0)  # RandCropByPosNegLabeld(pos=3, neg=1)'s choice of slice
    fg, bg = train.data.foreground, train.data.background
    assert weights.sum() == pytest.approx(1.0)
    assert weights[fg == 0].sum() == pytest.approx(0.25 * bg[fg == 0].sum() / bg.sum())
    z = int(np.argmax(fg))
    assert weights[z] == pytest.approx(0.75 * fg[z] / fg.sum() + 0.25 * bg[z] / bg.sum())

    val = StoreVolumeDataset(parser.get_parsed_content("validate#datalist"), store,
                             transform=parser.get_parsed_content("validate#preprocessing"))
    volume = val[0]
    assert volume["image"].shape[0] == 4 and volume["label"].shape[0] == 1
    assert volume["image"].shape[1:] == volume["label"].shape[1:]


@pytest.mark.parametrize(
    "override, setting",
    [
        ({"pixdim": [3.0, 3.0, 3.0]}, "pixdim"),
        ({"modalities": ["t1", "t1ce", "flair", "t2"]}, "modalities"),
        ({"label_values": [0, 1, 2, 3]}, "label_values"),
        ({"intensity_transforms#0#nonzero": False}, "intensity_transforms[0].normalizer.nonzero"),
        ({"crop_transforms": []}, "crop_transforms"),
    ],
)
def test_changed_settings_refuse_the_stale_store_naming_the_setting(data, tmp_path, override, setting):
    store, cases = _store(data, tmp_path / "store")
    store.preprocess(cases[:1], progress=False)
    before = _arrays(tmp_path / "store")
    changed, _ = _store(data, tmp_path / "store", **override)
    for attempt in (lambda: changed.preprocess(cases[:1], progress=False), lambda: changed.records(cases[:1])):
        with pytest.raises(StoreError) as err:
            attempt()
        assert f"`{setting}`" in str(err.value) and str(tmp_path / "store") in str(err.value)
    after = _arrays(tmp_path / "store")
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k][0], after[k][0]) for k in before)  # nothing overwritten
    same, _ = _store(data, tmp_path / "store")
    assert len(same.records(cases[:1])) == 1


def test_a_folder_that_is_not_a_store_is_refused(data, tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "notes.txt").write_text("mine")
    store, cases = _store(data, tmp_path / "store")
    with pytest.raises(StoreError, match="not a store"):
        store.preprocess(cases[:1], progress=False)
    assert sorted(os.listdir(tmp_path / "store")) == ["notes.txt"]  # nothing written there


def test_bad_cases_are_reported_with_file_and_the_others_written(data, tmp_path):
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    store, cases = _store(broken, tmp_path / "store")
    missing = cases[1]["image"][2]
    os.remove(missing)
    with open(cases[3]["image"][0], "wb") as f:
        f.write(b"not a nifti file")
    with pytest.raises(StoreError) as err:
        store.preprocess(cases, progress=False)
    message = str(err.value)
    assert "2 of 5 case(s) could not be preprocessed" in message and "the 3 others are in the store" in message
    assert os.path.basename(missing) in message and os.path.basename(cases[3]["image"][0]) in message
    summary = store.preprocess(cases, progress=False, raise_on_failure=False)
    assert (summary.written, summary.present, len(summary.failed)) == (0, 3, 2)
    good = [c for i, c in enumerate(cases) if i not in (1, 3)]
    assert len(store.records(good)) == 3
    with pytest.raises(StoreError, match="2 of 5 case"):
        store.records(cases)


def test_rerun_skips_complete_cases_and_redoes_changed_ones(data, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    store, cases = _store(copy, tmp_path / "store")
    store.preprocess(cases, progress=False)
    again = store.preprocess(cases, progress=False)
    assert (again.written, again.present) == (0, 5)

    import nibabel as nib

    path = cases[2]["image"][0]
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy() * 2, img.affine), path)  # new content
    with pytest.raises(StoreError, match="source file"):
        store.records(cases)
    redo = store.preprocess(cases, progress=False)
    assert (redo.written, redo.present) == (1, 4)
    assert len(store.records(cases)) == 5


def test_partial_or_corrupt_cases_never_read_as_valid(data, tmp_path):
    store, cases = _store(data, tmp_path / "store")
    store.preprocess(cases, progress=False)
    reference = _arrays(tmp_path / "store")
    ids = sorted(reference)
    case_dir = tmp_path / "store" / "cases"
    # a truncated array, a missing marker, a leftover temporary folder of a killed run
    with open(case_dir / ids[0] / "image.npy", "r+b") as f:
        f.truncate(1000)
    os.remove(case_dir / ids[1] / "case.json")
    shutil.copytree(case_dir / ids[2], case_dir / f".tmp-{ids[2]}-1-deadbeef")
    with pytest.raises(StoreError) as err:
        store.records(cases)
    assert f"{ids[0]}: stale: image.npy has 1000 bytes" in str(err.value)
    assert f"{ids[1]}: stale: unreadable" in str(err.value) or f"{ids[1]}: missing" in str(err.value)
    assert "2 of 5" in str(err.value)
    shutil.rmtree(case_dir / ids[1])  # a folder without its marker only exists by hand; the store redoes cases
    summary = store.preprocess(cases, progress=False)
    assert (summary.written, summary.present) == (2, 3)
    assert not any(n.startswith(".") for n in os.listdir(case_dir))
    repaired = _arrays(tmp_path / "store")
    assert all(np.array_equal(reference[k][0], repaired[k][0]) for k in ids)


def _kill_when_writing(cmd, store_dir, env, timeout=240.0) -> tuple[list[str], list[str]]:
    """Start ``cmd``; SIGKILL its whole process group as soon as a case is being written (a ``.tmp-`` folder under
    ``cases/``), or at the latest once two cases are complete. Returns (complete cases, temporary folders) seen."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    cases_dir = os.path.join(store_dir, "cases")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            names = os.listdir(cases_dir) if os.path.isdir(cases_dir) else []
            tmp = [n for n in names if n.startswith(".tmp-")]
            done = [n for n in names if not n.startswith(".")]
            if tmp or len(done) >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return done, tmp
            if proc.poll() is not None:
                raise AssertionError(f"preprocessing ended before it could be killed: {proc.stderr.read()[-2000:]}")
            time.sleep(0.001)
        raise AssertionError("preprocessing wrote nothing in time")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_kill_during_preprocessing_then_rerun_completes(data, tmp_path):
    reference_dir = tmp_path / "reference"
    store, cases = _store(data, reference_dir)
    store.preprocess(cases, progress=False)
    reference = _arrays(reference_dir)

    store_dir = tmp_path / "store"
    cmd = [sys.executable, "-m", "diffmed_monai.cli", "preprocess", "--dataset_dir", str(data), "--store_dir",
           str(store_dir), "--presets", "tiny", "--workers", "2"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore"}
    done, tmp = _kill_when_writing(cmd, str(store_dir), env)
    killed, _ = _store(data, store_dir)
    # whatever reads as complete after the kill is exactly the uninterrupted result; the rest is refused, not read
    survivors = _arrays(store_dir)
    for cid, (image, label) in survivors.items():
        assert len(killed.records([c for c in cases if c["case_id"].endswith(cid)])) == 1
        assert np.array_equal(image, reference[cid][0]) and np.array_equal(label, reference[cid][1])
    assert len(survivors) < len(cases)
    with pytest.raises(StoreError, match=f"{len(cases) - len(survivors)} of {len(cases)} case"):
        StoreSliceDataset(cases, killed)

    rerun = subprocess.run([*cmd[:-1], "0"], capture_output=True, text=True, env=env, timeout=240)  # in-process
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(cases) - len(survivors)} written, {len(survivors)} already there, 0 failed" in rerun.stdout
    final = _arrays(store_dir)
    assert final.keys() == reference.keys()
    assert all(np.array_equal(final[k][0], reference[k][0]) and np.array_equal(final[k][1], reference[k][1])
               for k in final)
    assert not any(n.startswith(".tmp-") for n in os.listdir(store_dir / "cases"))
    assert len(StoreSliceDataset(cases, killed)) == sum(r.num_slices for r in killed.records(cases))
    print(f"killed with {len(done)} complete case(s) and temporary folder(s) {tmp}")


def test_records_of_a_missing_store_say_how_to_preprocess(data, tmp_path):
    store, cases = _store(data, tmp_path / "nowhere")
    with pytest.raises(StoreError, match="run preprocess"):
        store.records(cases)
