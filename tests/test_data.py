"""Demo data, dataset scanners, datalists and the case checks that refuse bad input."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from diffmed_monai.data import (
    CaseError,
    check_case,
    check_datalist,
    make_demo_case,
    make_demo_dataset,
    scan_amos,
    scan_brats,
    scan_folder,
    scan_isles22,
    split_cases,
    write_datalist,
)
from diffmed_monai.data.cli import prepare_datalist

MODS = ["t1", "t1ce", "t2", "flair"]


def _nifti(path, shape=(8, 8, 6), value=1.0, affine=None, dtype=np.float32):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype), np.eye(4) if affine is None else affine), path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(str(root), num_cases=3, shape=(48, 48, 32), seed=0)
    return root


def test_demo_cases_are_plausible_and_deterministic(demo):
    images, seg = make_demo_case((48, 48, 32), seed=0)
    again, seg2 = make_demo_case((48, 48, 32), seed=0)
    assert np.array_equal(seg, seg2) and all(np.array_equal(images[m], again[m]) for m in MODS)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}
    brain = images["t1"] > 0
    assert not brain.all() and brain.any()
    for m in MODS:
        assert np.all(images[m][~brain] == 0) and images[m].dtype == np.float32
    # plausible contrast: oedema bright on FLAIR vs white-matter-like tissue, enhancing rim bright on T1ce
    assert images["flair"][seg == 2].mean() > 1.3 * images["flair"][brain & (seg == 0)].mean()
    assert images["t1ce"][seg == 4].mean() > images["t1"][seg == 4].mean() * 1.5
    case = sorted(os.listdir(demo))[0]
    img = nib.load(demo / case / f"{case}_flair.nii.gz")
    assert img.shape == (48, 48, 32) and np.allclose(img.header.get_zooms(), (2, 2, 2))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert nib.load(demo / case / f"{case}_seg.nii.gz").get_data_dtype() == np.uint8
    with pytest.raises(ValueError, match="exists"):
        make_demo_dataset(str(demo), num_cases=1)


def test_scan_brats_layouts_and_skips(tmp_path):
    for parent, case in [("", "BraTS2021_00001"), ("HGG", "Brats18_A_1"), ("LGG", "Brats18_B_1"),
                         ("", "FeTS2022_00002")]:
        for m in [*MODS, "seg"]:
            _nifti(str(tmp_path / parent / case / f"{case}_{m}.nii.gz"))
    for m in ["t1", "t2", "flair", "seg"]:  # no t1ce
        _nifti(str(tmp_path / "BraTS2021_00009" / f"BraTS2021_00009_{m}.nii.gz"))
    cases, skipped = scan_brats(str(tmp_path))
    assert sorted(c["case_id"] for c in cases) == ["BraTS2021_00001", "Brats18_A_1", "Brats18_B_1", "FeTS2022_00002"]
    assert len(skipped) == 1 and "BraTS2021_00009_t1ce" in skipped[0][1]
    first = next(c for c in cases if c["case_id"] == "Brats18_A_1")
    assert first["image"][1] == os.path.join("HGG", "Brats18_A_1", "Brats18_A_1_t1ce.nii.gz")
    path = write_datalist(str(tmp_path / "list.json"), cases[:3], cases[3:])
    loaded = load_decathlon_datalist(path, data_list_key="training", base_dir=str(tmp_path))
    assert len(loaded) == 3 and os.path.isfile(loaded[0]["image"][0])


def test_scan_isles_amos_folder(tmp_path):
    isles = tmp_path / "isles"
    for n in (1, 2):
        sub, ses = f"sub-strokecase000{n}", "ses-0001"
        _nifti(str(isles / "rawdata" / sub / ses / "dwi" / f"{sub}_{ses}_dwi.nii.gz"))
        _nifti(str(isles / "rawdata" / sub / ses / "dwi" / f"{sub}_{ses}_adc.nii.gz"))
        _nifti(str(isles / "rawdata" / sub / ses / "anat" / f"{sub}_{ses}_FLAIR.nii.gz"))
        if n == 1:
            _nifti(str(isles / "derivatives" / sub / ses / f"{sub}_{ses}_msk.nii.gz"))
    cases, skipped = scan_isles22(str(isles))
    assert [c["case_id"] for c in cases] == ["sub-strokecase0001_ses-0001"] and "msk" in skipped[0][1]
    with pytest.raises(ValueError, match="modalities"):
        scan_isles22(str(isles), ["t1"])
    amos = tmp_path / "amos"
    for cid in ("amos_0001", "amos_0507"):
        _nifti(str(amos / "imagesTr" / f"{cid}.nii.gz"))
        _nifti(str(amos / "labelsTr" / f"{cid}.nii.gz"))
    assert [c["case_id"] for c in scan_amos(str(amos), "ct")[0]] == ["amos_0001"]
    assert [c["case_id"] for c in scan_amos(str(amos), "mri")[0]] == ["amos_0507"]
    folder = tmp_path / "infer"
    for m in MODS:
        _nifti(str(folder / "caseA" / f"caseA_{m}.nii.gz"))
    _nifti(str(folder / "caseB" / "caseB_t1.nii.gz"))
    _nifti(str(folder / "four_d.nii.gz"), shape=(8, 8, 6, 4))
    cases, skipped = scan_folder(str(folder), MODS)
    assert [c["case_id"] for c in cases] == ["caseA", "four_d"] and cases[1]["image"] == "four_d.nii.gz"
    assert "caseB" in skipped[0][1] and "t1ce" in skipped[0][1]


def test_split_is_deterministic():
    cases = [{"case_id": str(i)} for i in range(10)]
    a, b = split_cases(cases, 0.2, seed=3), split_cases(cases, 0.2, seed=3)
    assert a == b and len(a[1]) == 2 and not {c["case_id"] for c in a[0]} & {c["case_id"] for c in a[1]}


def _case(tmp_path, name="c1", **kw):
    d = tmp_path / name
    for m in MODS:
        _nifti(str(d / f"{m}.nii.gz"), **kw)
    _nifti(str(d / "seg.nii.gz"), value=0, dtype=np.uint8)
    return {"case_id": name, "image": [f"{name}/{m}.nii.gz" for m in MODS], "label": f"{name}/seg.nii.gz"}


def test_check_case_accepts_good_and_4d(tmp_path):
    info = check_case(_case(tmp_path), str(tmp_path), MODS, label_values=[0, 1, 2, 4])
    assert info["shape"] == (8, 8, 6)
    _nifti(str(tmp_path / "x4d.nii.gz"), shape=(8, 8, 6, 4))
    assert check_case({"image": "x4d.nii.gz"}, str(tmp_path), MODS)["shape"] == (8, 8, 6)


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("missing", r"t2.nii.gz does not exist"),
        ("truncated", r"flair.nii.gz is unreadable or truncated"),
        ("2d", r"2D"),
        ("5d", r"5D"),
        ("shape", r"has shape"),
        ("affine", r"different affines"),
        ("nan", r"3 NaN/inf voxel"),
        ("label", r"values \[3\] outside `label_values`"),
        ("count", r"3 image files for 4 modalities"),
    ],
)
def test_bad_cases_refused_naming_case_and_file(tmp_path, breakage, expected):
    case = _case(tmp_path)
    d = tmp_path / "c1"
    if breakage == "missing":
        os.remove(d / "t2.nii.gz")
    elif breakage == "truncated":
        raw = (d / "flair.nii.gz").read_bytes()
        (d / "flair.nii.gz").write_bytes(raw[: len(raw) // 2])
    elif breakage == "2d":
        _nifti(str(d / "t1ce.nii.gz"), shape=(8, 8))
    elif breakage == "5d":
        _nifti(str(d / "t1ce.nii.gz"), shape=(8, 8, 6, 2, 2))
    elif breakage == "shape":
        _nifti(str(d / "t2.nii.gz"), shape=(8, 8, 7))
    elif breakage == "affine":
        _nifti(str(d / "t2.nii.gz"), affine=np.diag([2.0, 1, 1, 1]))
    elif breakage == "nan":
        data = np.ones((8, 8, 6), np.float32)
        data[0, 0, :3] = np.nan
        nib.save(nib.Nifti1Image(data, np.eye(4)), d / "t1.nii.gz")
    elif breakage == "label":
        _nifti(str(d / "seg.nii.gz"), value=3, dtype=np.uint8)
    elif breakage == "count":
        case["image"] = case["image"][:3]
    with pytest.raises(CaseError, match=expected) as err:
        check_case(case, str(tmp_path), MODS, label_values=[0, 1, 2, 4])
    assert "c1" in str(err.value)


def test_check_datalist_strict_and_lenient(tmp_path):
    good = _case(tmp_path, "good")
    bad = _case(tmp_path, "bad")
    os.remove(tmp_path / "bad" / "t1.nii.gz")
    with pytest.raises(ValueError, match=r"(?s)1 of 2 case\(s\).*Case bad"):
        check_datalist([good, bad], str(tmp_path), MODS)
    ok, errors = check_datalist([good, bad], str(tmp_path), MODS, strict=False)
    assert ok == [good] and len(errors) == 1 and "t1.nii.gz" in errors[0]


def test_prepare_datalist_cli(demo, tmp_path, capsys):
    path = prepare_datalist("brats", str(demo), output=str(tmp_path / "dl.json"), val_fraction=0.34)
    content = json.loads(open(path).read())
    assert len(content["training"]) == 2 and len(content["validation"]) == 1
    assert "3 case(s)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="No usable case"):
        prepare_datalist("brats", str(tmp_path), output=str(tmp_path / "none.json"))
