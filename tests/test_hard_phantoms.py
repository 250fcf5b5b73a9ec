"""The hard phantoms (``make_demo_case(..., difficulty="hard")``): each BraTS feature is present, the easy phantoms
are unchanged, the output is deterministic per seed, and the dataset/CLI plumbing writes them."""

import json
import sys

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from diffmed_monai.data.demo import (
    DEMO_MODALITIES,
    HARD_FEATURES,
    HARD_TISSUES,
    make_demo_case,
    make_demo_data,
    make_demo_dataset,
)

SHAPE = (64, 64, 48)
SPACING = (3.0, 3.0, 3.0)  # a whole head in few voxels: the tests stay fast


def _hard(seed, **kwargs):
    return make_demo_case(SHAPE, seed=seed, spacing=SPACING, difficulty="hard", skull_stripped=True,
                          return_tissue=True, return_info=True, **kwargs)


@pytest.fixture(scope="module")
def cases():
    return {seed: _hard(seed) for seed in range(8)}


def test_hard_cases_are_deterministic_per_seed_and_differ_between_seeds(cases):
    images, seg, tissue, info = _hard(2)
    ref_images, ref_seg, ref_tissue, ref_info = cases[2]
    for m in DEMO_MODALITIES:
        assert images[m].dtype == np.float32 and images[m].shape == SHAPE
        np.testing.assert_array_equal(images[m], ref_images[m])
    np.testing.assert_array_equal(seg, ref_seg)
    np.testing.assert_array_equal(tissue, ref_tissue)
    assert info == ref_info
    assert not np.array_equal(cases[3][0]["flair"], ref_images["flair"])
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and seg.dtype == np.uint8


def test_easy_phantoms_do_not_depend_on_the_hard_option():
    easy = make_demo_case((32, 32, 24), seed=5)
    again = make_demo_case((32, 32, 24), seed=5, difficulty="easy")
    hard = make_demo_case((32, 32, 24), seed=5, difficulty="hard")
    for m in DEMO_MODALITIES:
        np.testing.assert_array_equal(easy[0][m], again[0][m])
        assert not np.array_equal(easy[0][m], hard[0][m])
    with pytest.raises(ValueError, match="difficulty"):
        make_demo_case((32, 32, 24), difficulty="medium")
    with pytest.raises(ValueError, match="feature"):
        make_demo_case((32, 32, 24), difficulty="hard", hard_features=["texture", "glitter"])


def test_some_cases_have_no_enhancing_tumour_and_some_are_multifocal(cases):
    no_et = [s for s, c in cases.items() if not (c[1] == 4).any()]
    assert no_et, "no lower-grade-like case (without ET) among the seeds"
    for s in no_et:
        seg, info = cases[s][1], cases[s][3]
        assert info["grade"] == "lgg" and not info["has_et"]
        assert (seg == 1).any() and (seg == 2).any()  # a non-enhancing core inside oedema
    multifocal = [s for s, c in cases.items() if c[3]["lesions"] > 1]
    assert multifocal, "no multifocal case among the seeds"
    for s in multifocal:
        _, count = ndimage.label(cases[s][1] > 0, structure=np.ones((3, 3, 3), bool))
        assert count >= 2  # separate whole-tumour components
    # glioblastoma-like cases: the rim enhances only in patches, the rest of the rim is non-enhancing core (label 1)
    hgg = [s for s, c in cases.items() if c[3]["grade"] == "hgg"]
    assert hgg and all((cases[s][1] == 4).any() for s in hgg)
    assert all(cases[s][3]["et_fraction"] < 1.0 for s in hgg)
    # multifocality off: the same seed, one lesion
    single = make_demo_case(SHAPE, seed=multifocal[0], spacing=SPACING, difficulty="hard", return_info=True,
                            hard_features=[f for f in HARD_FEATURES if f != "multifocal"])
    assert single[2]["lesions"] == 1


def test_t1c_lookalikes_outside_the_label(cases):
    kinds = [HARD_TISSUES.index(t) for t in ("vessel", "choroid_plexus", "dura")]
    for _images, seg, tissue, _ in cases.values():
        look = np.isin(tissue, kinds)
        assert look.any() and not (look & (seg > 0)).any()
    # the same case without look-alikes (every other draw unchanged): they brighten T1c only where they are
    seed = 0
    images, seg, tissue, _ = cases[seed]
    look = np.isin(tissue, kinds)
    off_images, off_seg, off_tissue = make_demo_case(
        SHAPE, seed=seed, spacing=SPACING, difficulty="hard", skull_stripped=True, return_tissue=True,
        hard_features=[f for f in HARD_FEATURES if f != "lookalikes"])
    assert not np.isin(off_tissue, kinds).any()
    np.testing.assert_array_equal(seg, off_seg)
    assert np.median(images["t1ce"][look] / np.maximum(off_images["t1ce"][look], 1.0)) > 1.3
    far = ~ndimage.binary_dilation(look, iterations=3)
    np.testing.assert_allclose(images["t1ce"][far], off_images["t1ce"][far], rtol=2e-3, atol=1e-2)
    # and on the T1c of a 1 mm case the vessels are as bright as the enhancing tumour, above white matter
    images, seg, tissue, _ = make_demo_case((96, 96, 64), seed=0, spacing=(1.0, 1.0, 1.0), difficulty="hard",
                                            return_tissue=True, return_info=True, hard_features=["lookalikes"])
    t1c = images["t1ce"]
    vessel = (tissue == HARD_TISSUES.index("vessel")) & (seg == 0)
    white = tissue == HARD_TISSUES.index("white_matter")
    assert np.median(t1c[vessel]) > 1.1 * np.median(t1c[white])
    if (seg == 4).any():
        assert np.median(t1c[vessel]) > 0.8 * np.median(t1c[seg == 4])


def _shift_between(moved: np.ndarray, still: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Integer translation ``s`` (|s| <= 2 voxels per axis) for which ``roll(still, s)`` best matches ``moved``."""
    candidates = [np.array(s) for s in np.ndindex(5, 5, 5)]
    errors = [float(np.square(moved - np.roll(still, tuple(s - 2), axis=(0, 1, 2)))[inside].mean()) for s in candidates]
    return candidates[int(np.argmin(errors))] - 2


def test_modalities_are_misregistered_against_t1c_and_the_label():
    shape, spacing = (64, 64, 48), (1.0, 1.0, 1.0)  # at 1 mm the 1-2 mm residual is at least one voxel
    common = {"seed": 1, "spacing": spacing, "difficulty": "hard", "return_info": True}
    no_misreg = [f for f in HARD_FEATURES if f != "misregistration"]
    moved, seg, info = make_demo_case(shape, **common)
    still, seg_still, info_still = make_demo_case(shape, hard_features=no_misreg, **common)
    np.testing.assert_array_equal(seg, seg_still)  # the label stays on the T1c grid
    np.testing.assert_array_equal(moved["t1ce"], still["t1ce"])  # T1c is the reference
    inside = ndimage.binary_erosion(still["t1ce"] > 0, iterations=4)  # away from the shared skull-strip edge
    for m in ("t1", "t2", "flair"):
        shift = np.asarray(info["shift_mm"][m])
        assert 1.0 <= np.linalg.norm(shift) <= 2.0 + 1e-6 and abs(info["rotation_deg"][m]) <= 1.5
        assert info_still["shift_mm"][m] == [0.0, 0.0, 0.0]
        measured = _shift_between(moved[m], still[m], inside)
        assert np.any(measured != 0)
        assert np.all(np.abs(measured - shift) <= 1.0)  # the drawn shift, to the voxel (rotation <= 1.5 degrees)


def test_oedema_signal_fades_across_the_label_boundary_and_thick_slices():
    images, seg, tissue, info = make_demo_case((64, 64, 48), seed=0, spacing=(3.0, 3.0, 3.0), difficulty="hard",
                                               return_tissue=True, return_info=True,
                                               hard_features=["oedema_gradient"])  # no noise, texture or curves
    flair = images["flair"]
    white = tissue == HARD_TISSUES.index("white_matter")
    oedema = seg == 2
    ring = ndimage.binary_dilation(seg > 0, iterations=2) & (seg == 0) & white  # just outside the label
    far = white & ~ndimage.binary_dilation(seg > 0, iterations=8)
    # FLAIR is brighter inside the oedema than just outside, and brighter just outside than far away
    assert np.median(flair[oedema]) > np.median(flair[ring]) > np.median(flair[far]) * 1.02
    assert info["thick_slice_mm"] is None
    # T2/FLAIR from thick slabs: less detail between neighbouring axial slices than T1c
    thick = make_demo_case((64, 64, 48), seed=0, spacing=(1.0, 1.0, 1.0), difficulty="hard", return_info=True,
                           hard_features=["thick_slices"])
    assert 3.0 <= thick[2]["thick_slice_mm"] <= 6.0

    def z_detail(v):
        return float(np.abs(np.diff(v, axis=2)).mean() / np.abs(np.diff(v, axis=0)).mean())

    assert z_detail(thick[0]["flair"]) < 0.8 * z_detail(thick[0]["t1ce"])


def test_make_demo_data_writes_hard_cases_in_the_brats2021_layout(tmp_path):
    path = make_demo_data(str(tmp_path / "hard"), num_cases=2, shape=(48, 48, 32), difficulty="hard",
                          val_fraction=0.5)
    datalist = json.loads(open(path).read())
    assert len(datalist["training"]) == 1 and len(datalist["validation"]) == 1
    folder = tmp_path / "hard" / "BraTS2021_00000"
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"BraTS2021_00000_{m}.nii.gz" for m in ("flair", "seg", "t1", "t1ce", "t2")]
    flair = nib.load(str(folder / "BraTS2021_00000_flair.nii.gz"))
    assert flair.shape == (48, 48, 32) and np.allclose(flair.header.get_zooms(), 1.0)  # hard default: 1 mm
    direct, _ = make_demo_case((48, 48, 32), seed=0, spacing=(1, 1, 1), difficulty="hard", skull_stripped=True)
    np.testing.assert_array_equal(np.asarray(flair.dataobj), direct["flair"])
    with pytest.raises(ValueError, match="difficulty"):
        make_demo_dataset(str(tmp_path / "x"), num_cases=1, shape=(32, 32, 24), difficulty="extreme")


def test_cli_make_demo_data_difficulty_hard(tmp_path, monkeypatch):
    from diffmed_monai import cli

    out = tmp_path / "cli"
    monkeypatch.setattr(sys, "argv", ["diffmed-monai", "make-demo-data", "--output_dir", str(out), "--num_cases", "2",
                                      "--shape", "[40,40,28]", "--difficulty", "hard", "--val_fraction", "0.5"])
    cli.main()
    seg = nib.load(str(out / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"))
    direct = make_demo_case((40, 40, 28), seed=1, spacing=(1, 1, 1), difficulty="hard", skull_stripped=True)[1]
    np.testing.assert_array_equal(np.asarray(seg.dataobj), direct)
    assert (out / "datalist.json").is_file()
