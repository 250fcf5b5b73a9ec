"""Demo data, dataset scanners, datalists and the case checks that refuse bad input (CPU, seconds)."""

from __future__ import annotations

import json
import logging
import os

import fire
import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from diffmed_monai.data import (
    DEMO_TISSUES,
    CaseError,
    check_case,
    check_datalist,
    demo_affine,
    make_demo_case,
    make_demo_dataset,
    scan_amos,
    scan_brats,
    scan_folder,
    scan_isles22,
    split_cases,
    write_datalist,
)
from diffmed_monai.data import make_demo_data, prepare_datalist

MODS = ["t1", "t1ce", "t2", "flair"]
BRATS_LABELS = [0, 1, 2, 4]
SHAPE = (64, 64, 40)


def _nifti(path, shape=(8, 8, 6), value=1.0, affine=None, dtype=np.float32):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype), np.eye(4) if affine is None else affine), str(path))


def _load(path):
    return np.asanyarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(str(root), num_cases=3, shape=SHAPE, spacing=(2.0, 2.0, 2.5), seed=0)
    return root


# ---------------------------------------------------------------------------------------------- demo data


def test_demo_files_shapes_labels_affines(demo):
    cases = sorted(os.listdir(demo))
    assert cases == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]
    expected_affine = demo_affine(SHAPE, (2.0, 2.0, 2.5))
    assert np.allclose(expected_affine[:3, :3], np.diag([-2.0, -2.0, 2.5]))
    for case in cases:
        for m in [*MODS, "seg"]:
            img = nib.load(str(demo / case / f"{case}_{m}.nii.gz"))
            assert img.shape == SHAPE
            assert np.allclose(img.affine, expected_affine)
            assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
            assert np.allclose(img.header.get_zooms(), (2.0, 2.0, 2.5))
            assert img.get_data_dtype() == (np.uint8 if m == "seg" else np.float32)
        seg = _load(demo / case / f"{case}_seg.nii.gz")
        assert set(np.unique(seg).tolist()) == set(BRATS_LABELS)  # 3 unused, every tumour part present
    # the demo cases pass the training checks with the BraTS label set
    found, skipped = scan_brats(str(demo))
    assert len(found) == 3 and not skipped
    ok, errors = check_datalist(found, str(demo), MODS, label_values=BRATS_LABELS, strict=True)
    assert len(ok) == 3 and errors == []


def test_demo_is_deterministic_and_refuses_overwrite(demo, tmp_path):
    make_demo_dataset(str(tmp_path), num_cases=1, shape=SHAPE, spacing=(2.0, 2.0, 2.5), seed=0)
    case = "BraTS2021_00000"
    for m in [*MODS, "seg"]:
        assert np.array_equal(_load(tmp_path / case / f"{case}_{m}.nii.gz"), _load(demo / case / f"{case}_{m}.nii.gz"))
    other, _ = make_demo_case(SHAPE, seed=1)
    assert not np.array_equal(other["t1"], _load(demo / case / f"{case}_t1.nii.gz"))
    with pytest.raises(ValueError, match=r"BraTS2021_00000 already exists.*overwrite=True"):
        make_demo_dataset(str(tmp_path), num_cases=1, shape=SHAPE)
    make_demo_dataset(str(tmp_path), num_cases=1, shape=SHAPE, seed=5, overwrite=True)
    assert not np.array_equal(_load(tmp_path / case / f"{case}_t1.nii.gz"), _load(demo / case / f"{case}_t1.nii.gz"))
    with pytest.raises(ValueError, match="shape"):
        make_demo_case((8, 64, 64))


def test_demo_is_plausible():
    images, seg, tissue = make_demo_case(SHAPE, seed=3, return_tissue=True)
    t = {name: tissue == i for i, name in enumerate(DEMO_TISSUES)}
    head = ~t["background"]
    assert 0.2 < head.mean() < 0.8
    brain = t["grey_matter"] | t["white_matter"] | t["csf"] | t["oedema"] | t["enhancing"] | t["necrosis"]
    assert t["skull"].any() and t["scalp"].any()
    for m in MODS:
        assert images[m].dtype == np.float32 and images[m].shape == SHAPE
        assert np.all(images[m][~head] == 0) and np.all(images[m][head] > 0)
    # the tumour lies in the brain and is nested: necrosis inside enhancing rim inside oedema
    assert np.all(brain[seg > 0])
    assert (seg == 1).sum() < (seg == 4).sum() < (seg == 2).sum() + (seg == 4).sum()
    com = [np.argwhere(seg == v).mean(0) for v in (1, 4)]
    assert np.linalg.norm(com[0] - com[1]) < 4  # core and rim share a centre

    def mean(m, name):
        return float(images[m][t[name]].mean())

    assert mean("t1", "white_matter") > mean("t1", "grey_matter") > mean("t1", "csf")  # T1: WM bright, CSF dark
    assert mean("t2", "csf") > mean("t2", "grey_matter") > mean("t2", "white_matter")  # T2: CSF bright
    assert mean("flair", "csf") < 0.5 * mean("flair", "white_matter")  # FLAIR: CSF suppressed
    assert mean("flair", "oedema") > 1.5 * mean("flair", "white_matter")  # FLAIR: oedema bright
    assert mean("t1ce", "enhancing") > 1.5 * mean("t1", "enhancing")  # T1ce: enhancing rim bright
    assert mean("t1ce", "enhancing") > mean("t1ce", "white_matter")
    assert mean("t1", "skull") < mean("t1", "csf") * 1.5 and mean("t1", "scalp") > mean("t1", "grey_matter")


def test_demo_defaults_write_full_size_cases(tmp_path):
    folders = make_demo_dataset(str(tmp_path), num_cases=2)  # default shape and spacing
    assert [os.path.basename(f) for f in folders] == ["BraTS2021_00000", "BraTS2021_00001"]
    for folder in folders:
        case = os.path.basename(folder)
        for m in [*MODS, "seg"]:
            img = nib.load(os.path.join(folder, f"{case}_{m}.nii.gz"))
            assert img.shape == (96, 96, 64)
            assert np.allclose(img.header.get_zooms(), (2.0, 2.0, 2.0))


# ---------------------------------------------------------------------------------------------- scanners


def test_scan_brats_layouts_and_skips(tmp_path):
    layouts = [("", "BraTS2021_00001", ".nii.gz"), ("HGG", "Brats18_2013_2_1", ".nii.gz"),
               ("LGG", "Brats18_2013_0_1", ".nii"), ("", "FeTS2022_00002", ".nii.gz")]
    for parent, case, ext in layouts:
        for m in [*MODS, "seg"]:
            _nifti(tmp_path / parent / case / f"{case}_{m}{ext}")
    for m in ["t1", "t2", "flair", "seg"]:  # no t1ce
        _nifti(tmp_path / "BraTS2021_00009" / f"BraTS2021_00009_{m}.nii.gz")
    for m in MODS:  # no seg, a misnamed label instead (as BraTS 2020 case 355)
        _nifti(tmp_path / "BraTS2021_00010" / f"BraTS2021_00010_{m}.nii.gz")
    _nifti(tmp_path / "BraTS2021_00010" / "W39_1998.09.19_Segm.nii")
    for m in [*MODS, "seg"]:  # same case id twice
        _nifti(tmp_path / "copy" / "BraTS2021_00001" / f"BraTS2021_00001_{m}.nii.gz")
    _nifti(tmp_path / "notes" / "something.nii.gz")  # not a case folder: ignored
    (tmp_path / "name_mapping.csv").write_text("x")

    cases, skipped = scan_brats(str(tmp_path))
    ids = [c["case_id"] for c in cases]
    assert sorted(ids) == ["BraTS2021_00001", "Brats18_2013_0_1", "Brats18_2013_2_1", "FeTS2022_00002"]
    reasons = {os.path.basename(folder): (folder, why) for folder, why in skipped}
    assert set(reasons) == {"BraTS2021_00009", "BraTS2021_00010", "BraTS2021_00001"}
    assert "BraTS2021_00009_t1ce.nii.gz" in reasons["BraTS2021_00009"][1]
    assert "BraTS2021_00010_seg.nii.gz" in reasons["BraTS2021_00010"][1]
    assert "W39_1998.09.19_Segm.nii" in reasons["BraTS2021_00010"][1]
    assert "already found" in reasons["BraTS2021_00001"][1] and "copy" in reasons["BraTS2021_00001"][0]
    hgg = next(c for c in cases if c["case_id"] == "Brats18_2013_2_1")
    assert hgg["image"] == [os.path.join("HGG", "Brats18_2013_2_1", f"Brats18_2013_2_1_{m}.nii.gz") for m in MODS]
    assert hgg["label"] == os.path.join("HGG", "Brats18_2013_2_1", "Brats18_2013_2_1_seg.nii.gz")
    lgg = next(c for c in cases if c["case_id"] == "Brats18_2013_0_1")
    assert lgg["image"][0].endswith("_t1.nii") and not os.path.isabs(lgg["image"][0])

    lenient, skipped = scan_brats(str(tmp_path), modalities=("flair", "t1"), require_label=False)
    no_label = next(c for c in lenient if c["case_id"] == "BraTS2021_00010")
    assert "label" not in no_label and no_label["image"][0].endswith("_flair.nii.gz")
    assert "BraTS2021_00009" in {c["case_id"] for c in lenient}  # t1ce not requested
    with pytest.raises(FileNotFoundError, match="dataset_dir"):
        scan_brats(str(tmp_path / "absent"))

    path = write_datalist(str(tmp_path / "out" / "list.json"), cases[:3], cases[3:])
    text = open(path).read()
    assert text.startswith('{\n    "training": [') and json.loads(text)["testing"] == []
    loaded = load_decathlon_datalist(path, data_list_key="training", base_dir=str(tmp_path))
    assert len(loaded) == 3 and all(os.path.isfile(p) for c in loaded for p in [*c["image"], c["label"]])
    val = load_decathlon_datalist(path, data_list_key="validation", base_dir=str(tmp_path))
    assert val[0]["case_id"] == cases[3]["case_id"]


def _isles(root, n, files=("dwi", "adc", "flair"), label=True):
    sub, ses = f"sub-strokecase{n:04d}", "ses-0001"
    where = {"dwi": ("dwi", "dwi"), "adc": ("dwi", "adc"), "flair": ("anat", "FLAIR")}
    for f in files:
        folder, suffix = where[f]
        _nifti(root / "rawdata" / sub / ses / folder / f"{sub}_{ses}_{suffix}.nii.gz")
    if label:
        _nifti(root / "derivatives" / sub / ses / f"{sub}_{ses}_msk.nii.gz", dtype=np.uint8, value=0)


def test_scan_isles22(tmp_path):
    _isles(tmp_path, 1)
    _isles(tmp_path, 2, label=False)
    _isles(tmp_path, 3, files=("dwi", "flair"))
    cases, skipped = scan_isles22(str(tmp_path))
    assert [c["case_id"] for c in cases] == ["sub-strokecase0001_ses-0001"]
    case = cases[0]
    assert case["image"] == [
        os.path.join("rawdata", "sub-strokecase0001", "ses-0001", "dwi", "sub-strokecase0001_ses-0001_dwi.nii.gz"),
        os.path.join("rawdata", "sub-strokecase0001", "ses-0001", "dwi", "sub-strokecase0001_ses-0001_adc.nii.gz"),
        os.path.join("rawdata", "sub-strokecase0001", "ses-0001", "anat", "sub-strokecase0001_ses-0001_FLAIR.nii.gz"),
    ]
    assert case["label"].startswith("derivatives") and case["label"].endswith("_msk.nii.gz")
    why = {f.split(os.sep)[-2]: r for f, r in skipped}
    assert "sub-strokecase0002_ses-0001_msk.nii.gz" in why["sub-strokecase0002"]
    assert "sub-strokecase0003_ses-0001_adc.nii.gz" in why["sub-strokecase0003"]
    two, _ = scan_isles22(str(tmp_path), modalities=("dwi", "flair"))
    assert [c["case_id"] for c in two] == ["sub-strokecase0001_ses-0001", "sub-strokecase0003_ses-0001"]
    assert len(scan_isles22(str(tmp_path), require_label=False)[0]) == 2
    with pytest.raises(ValueError, match="modalities"):
        scan_isles22(str(tmp_path), ["t1"])
    with pytest.raises(FileNotFoundError, match="rawdata"):
        scan_isles22(str(tmp_path / "derivatives"))


def test_scan_amos(tmp_path):
    for images, labels, cid in [("imagesTr", "labelsTr", "amos_0001"), ("imagesTr", "labelsTr", "amos_0507"),
                                ("imagesVa", "labelsVa", "amos_0008"), ("imagesVa", "labelsVa", "amos_0540")]:
        _nifti(tmp_path / images / f"{cid}.nii.gz")
        _nifti(tmp_path / labels / f"{cid}.nii.gz", dtype=np.uint8, value=0)
    _nifti(tmp_path / "imagesTr" / "amos_0002.nii.gz")  # no label
    ct, skipped = scan_amos(str(tmp_path), "ct")
    assert [c["case_id"] for c in ct] == ["amos_0001", "amos_0008"]
    assert ct[0] == {"case_id": "amos_0001", "image": [os.path.join("imagesTr", "amos_0001.nii.gz")],
                     "label": os.path.join("labelsTr", "amos_0001.nii.gz")}
    assert len(skipped) == 1 and "labelsTr/amos_0002.nii.gz" in skipped[0][1]
    mri, skipped = scan_amos(str(tmp_path), "MRI")
    assert [c["case_id"] for c in mri] == ["amos_0507", "amos_0540"] and not skipped
    assert len(scan_amos(str(tmp_path), "ct", require_label=False)[0]) == 3
    with pytest.raises(ValueError, match="'ct' or 'mri'"):
        scan_amos(str(tmp_path), "pet")


def test_scan_folder(tmp_path):
    for m in MODS:
        _nifti(tmp_path / "caseA" / f"caseA_{m}.nii.gz")
    _nifti(tmp_path / "caseB" / "caseB_t1.nii.gz")
    for name in ["x_t2.nii.gz", "y_t2.nii", "x_t1.nii.gz", "x_t1ce.nii.gz", "x_flair.nii.gz"]:
        _nifti(tmp_path / "caseC" / name)
    _nifti(tmp_path / "four_d.nii.gz", shape=(8, 8, 6, 4))
    (tmp_path / "readme.txt").write_text("x")
    cases, skipped = scan_folder(str(tmp_path), MODS)
    assert [c["case_id"] for c in cases] == ["caseA", "four_d"]
    assert cases[0]["image"] == [os.path.join("caseA", f"caseA_{m}.nii.gz") for m in MODS]
    assert cases[1]["image"] == "four_d.nii.gz"
    why = {os.path.basename(f): r for f, r in skipped}
    assert "t1ce" in why["caseB"] and "several *_t2" in why["caseC"]
    assert scan_folder(str(tmp_path), "t1,t1ce,t2,flair")[0] == cases  # comma-separated modalities


def test_scan_folder_reads_brats2023_names(tmp_path):
    mods = ["t1n", "t1c", "t2w", "t2f"]
    for m in [*mods, "seg"]:
        _nifti(tmp_path / "BraTS-GLI-00000-000" / f"BraTS-GLI-00000-000-{m}.nii.gz")
    _nifti(tmp_path / "BraTS-GLI-00001-000" / "BraTS-GLI-00001-000-t1n.nii.gz")
    cases, skipped = scan_folder(str(tmp_path), mods)
    assert cases == [{"case_id": "BraTS-GLI-00000-000",
                      "image": [os.path.join("BraTS-GLI-00000-000", f"BraTS-GLI-00000-000-{m}.nii.gz") for m in mods]}]
    assert "no *_t1c.nii.gz or *-t1c.nii.gz" in skipped[0][1]


def test_split_is_deterministic():
    cases = [{"case_id": f"c{i:02d}"} for i in range(10)]
    train, val = split_cases(cases, 0.2, seed=3)
    assert (train, val) == split_cases(list(reversed(cases)), 0.2, seed=3)  # independent of input order
    assert len(val) == 2 and len(train) == 8 and not {c["case_id"] for c in train} & {c["case_id"] for c in val}
    assert split_cases(cases, 0.2, seed=4) != (train, val)
    assert len(split_cases(cases[:2], 0.01)[1]) == 1 and split_cases(cases, 0.0)[1] == []
    with pytest.raises(ValueError, match="val_fraction"):
        split_cases(cases, 1.0)


# ---------------------------------------------------------------------------------------------- checks


def _case(tmp_path, name="c1", **kw):
    d = tmp_path / name
    for m in MODS:
        _nifti(d / f"{m}.nii.gz", **kw)
    _nifti(d / "seg.nii.gz", value=0, dtype=np.uint8)
    return {"case_id": name, "image": [f"{name}/{m}.nii.gz" for m in MODS], "label": f"{name}/seg.nii.gz"}


def test_check_case_accepts_good_3d_and_4d(tmp_path):
    info = check_case(_case(tmp_path), str(tmp_path), MODS, label_values=BRATS_LABELS)
    assert info["case_id"] == "c1" and info["shape"] == (8, 8, 6) and np.allclose(info["affine"], np.eye(4))
    assert info["spacing"] == (1.0, 1.0, 1.0)
    _nifti(tmp_path / "x4d.nii.gz", shape=(8, 8, 6, 4))
    _nifti(tmp_path / "x4d_seg.nii.gz", dtype=np.uint8, value=2)
    four_d = {"case_id": "x4d", "image": "x4d.nii.gz", "label": "x4d_seg.nii.gz"}
    assert check_case(four_d, str(tmp_path), MODS, label_values=BRATS_LABELS)["shape"] == (8, 8, 6)
    assert check_case({"image": ["x4d.nii.gz"]}, str(tmp_path), MODS)["case_id"] == "x4d"  # one case-id rule
    absolute = {"case_id": "abs", "image": [str(tmp_path / "c1" / f"{m}.nii.gz") for m in MODS]}
    assert check_case(absolute, None, MODS)["shape"] == (8, 8, 6)
    _nifti(tmp_path / "one.nii.gz", shape=(8, 8, 6, 1))  # trailing singleton axis is a 3D volume
    assert check_case({"case_id": "one", "image": "one.nii.gz"}, str(tmp_path), ["ct"])["shape"] == (8, 8, 6)


def _break(tmp_path, case, breakage):
    d = tmp_path / "c1"
    if breakage == "missing":
        os.remove(d / "t2.nii.gz")
    elif breakage == "truncated":
        raw = (d / "flair.nii.gz").read_bytes()
        (d / "flair.nii.gz").write_bytes(raw[: len(raw) * 2 // 3])
    elif breakage == "not_nifti":
        (d / "flair.nii.gz").write_bytes(b"this is not a NIfTI file")
    elif breakage == "2d":
        _nifti(d / "t1ce.nii.gz", shape=(8, 8))
    elif breakage == "5d":
        _nifti(d / "t1ce.nii.gz", shape=(8, 8, 6, 2, 2))
    elif breakage == "shape":
        _nifti(d / "t2.nii.gz", shape=(8, 8, 7))
    elif breakage == "affine":
        _nifti(d / "t2.nii.gz", affine=np.diag([1.0, 1.0, 1.01, 1.0]))
    elif breakage == "label_affine":
        shifted = np.eye(4)
        shifted[0, 3] = 0.5
        _nifti(d / "seg.nii.gz", affine=shifted, dtype=np.uint8, value=0)
    elif breakage == "nan":
        data = np.ones((8, 8, 6), np.float32)
        data[0, 0, :3] = np.nan
        data[1, 1, 1] = np.inf
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(d / "t1.nii.gz"))
    elif breakage == "label":
        data = np.zeros((8, 8, 6), np.uint8)
        data[0, 0, 0], data[1, 1, 1] = 3, 7
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(d / "seg.nii.gz"))
    elif breakage == "count":
        case["image"] = case["image"][:3]
    elif breakage == "4d_volumes":
        _nifti(d / "x4d.nii.gz", shape=(8, 8, 6, 3))
        case["image"] = "c1/x4d.nii.gz"
    return case


BAD = [
    ("missing", "t2.nii.gz", r"does not exist.*`dataset_dir`"),
    ("truncated", "flair.nii.gz", r"unreadable or truncated"),
    ("not_nifti", "flair.nii.gz", r"unreadable or truncated"),
    ("2d", "t1ce.nii.gz", r"is 2D with shape \(8, 8\).*`modalities`"),
    ("5d", "t1ce.nii.gz", r"is 5D"),
    ("shape", "t2.nii.gz", r"has shape \(8, 8, 7\) but .*t1.nii.gz has \(8, 8, 6\)"),
    ("affine", "t2.nii.gz", r"different affines.*co-registered"),
    ("label_affine", "seg.nii.gz", r"label file .* different affines"),
    ("nan", "t1.nii.gz", r"contains 4 NaN/inf voxel\(s\).*`check_finite`"),
    ("label", "seg.nii.gz", r"value\(s\) \[3, 7\] outside `label_values`=\[0, 1, 2, 4\]"),
    ("count", "c1/t2.nii.gz", r"3 image files .* for 4 modalities.*`modalities`"),
    ("4d_volumes", "x4d.nii.gz", r"shape \(8, 8, 6, 3\).*\(X, Y, Z, 4\).*`modalities`"),
]


@pytest.mark.parametrize("breakage, filename, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_cases_refused_naming_case_and_file(tmp_path, breakage, filename, expected):
    case = _break(tmp_path, _case(tmp_path), breakage)
    with pytest.raises(CaseError, match=expected) as err:
        check_case(case, str(tmp_path), MODS, label_values=BRATS_LABELS)
    message = str(err.value)
    assert message.startswith("Case c1: ") and filename in message
    assert isinstance(err.value, ValueError) and "`" in message  # names a config key


def test_check_switches(tmp_path):
    case = _break(tmp_path, _case(tmp_path), "nan")
    assert check_case(case, str(tmp_path), MODS, check_finite=False)["shape"] == (8, 8, 6)
    case = _break(tmp_path, _case(tmp_path), "label")
    assert check_case(case, str(tmp_path), MODS, label_values=None)["shape"] == (8, 8, 6)
    assert check_case(case, str(tmp_path), MODS, label_values=range(8))["shape"] == (8, 8, 6)
    renamed = {"case_id": "c1", "img": case["image"], "seg": "c1/t1.nii.gz"}
    with pytest.raises(CaseError, match=r"label file .*t1.nii.gz has value\(s\) \[1\]"):
        check_case(renamed, str(tmp_path), MODS, label_values=[0], image_key="img", label_key="seg")
    with pytest.raises(CaseError, match="no 'image' entry"):
        check_case({"case_id": "empty"}, str(tmp_path), MODS)


def test_check_datalist_strict_and_lenient(tmp_path, caplog):
    good = _case(tmp_path, "good")
    bad = _case(tmp_path, "bad")
    os.remove(tmp_path / "bad" / "t1.nii.gz")
    worse = _case(tmp_path, "worse")
    _nifti(tmp_path / "worse" / "flair.nii.gz", shape=(8, 8, 5))
    with pytest.raises(ValueError, match=r"(?s)2 of 3 case\(s\) cannot be used.*Case bad: .*t1.nii.gz.*Case worse: "):
        check_datalist([good, bad, worse], str(tmp_path), MODS, label_values=BRATS_LABELS)
    with caplog.at_level(logging.INFO, logger="diffmed_monai.data"):
        ok, errors = check_datalist([good, bad, worse], str(tmp_path), MODS, strict=False)
    assert ok == [good] and len(errors) == 2
    assert "bad" in errors[0] and "t1.nii.gz" in errors[0] and "flair.nii.gz" in errors[1]
    assert "Checked 3/3 case(s), 2 refused" in caplog.text


# ---------------------------------------------------------------------------------------------- CLI


def test_prepare_datalist_cli(demo, tmp_path, caplog):
    caplog.set_level("INFO", logger="diffmed_monai")
    path = prepare_datalist("brats", str(demo), output=str(tmp_path / "dl.json"), val_fraction=0.34)
    content = json.loads(open(path).read())
    assert len(content["training"]) == 2 and len(content["validation"]) == 1
    assert content["testing"] == content["validation"]
    assert "3 case(s)" in caplog.text
    with pytest.raises(ValueError, match="No usable case"):
        prepare_datalist("brats", str(tmp_path), output=str(tmp_path / "none.json"))
    with pytest.raises(ValueError, match="Unknown dataset"):
        prepare_datalist("kits", str(tmp_path))

    # through fire, as scripts/prepare_datalist.py parses its command line
    for m in ["t1", "t2"]:
        _nifti(tmp_path / "in" / "caseA" / f"caseA_{m}.nii.gz")
    _nifti(tmp_path / "in" / "caseB" / "caseB_t1.nii.gz")
    out = str(tmp_path / "folder.json")
    fire.Fire(prepare_datalist, command=["folder", "--root", str(tmp_path / "in"), "--output", out,
                                         "--modalities", "t1,t2"])
    content = json.loads(open(out).read())
    assert content["training"] == [] and [c["case_id"] for c in content["testing"]] == ["caseA"]
    assert "skipped" in caplog.text and "caseB" in caplog.text and "*_t2" in caplog.text

    _nifti(tmp_path / "amos" / "imagesTr" / "amos_0600.nii.gz")
    _nifti(tmp_path / "amos" / "labelsTr" / "amos_0600.nii.gz")
    fire.Fire(prepare_datalist, command=["amos", "--root", str(tmp_path / "amos"), "--modalities", "mri",
                                         "--val_fraction", "0"])
    content = json.loads(open(tmp_path / "amos" / "datalist.json").read())
    assert [c["case_id"] for c in content["training"]] == ["amos_0600"]


def test_make_demo_data_cli(tmp_path, caplog):
    caplog.set_level("INFO", logger="diffmed_monai")
    path = make_demo_data(str(tmp_path / "d"), num_cases=2, shape=(32, 32, 24), val_fraction=0.5)
    content = json.loads(open(path).read())
    assert len(content["training"]) == 1 and len(content["validation"]) == 1
    assert "Wrote 2 synthetic easy demo case(s)" in caplog.text
    with pytest.raises(ValueError, match="already exists"):
        make_demo_data(str(tmp_path / "d"), num_cases=2, shape=(32, 32, 24))
