"""The default slice store: one folder per set of settings under ``store_root`` (never shared by two presets), and
the same case in two lists of the datalist stored once."""

from __future__ import annotations

import os

import pytest
from monai.bundle import ConfigParser

from diffmed_monai.data import make_demo_data, make_demo_dataset, scan_brats

from .helpers import BUNDLE, PRESETS, workflow

TRAIN = BUNDLE / "configs" / "train.json"
TINY = PRESETS / "tiny.json"


def _store_dir(bundle_root, **overrides) -> str:
    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(TINY)])
    parser.update({"bundle_root": str(bundle_root), **overrides})
    return parser.get_parsed_content("store_dir")


def test_default_store_dir_is_keyed_by_the_settings(tmp_path):
    tiny = _store_dir(tmp_path)
    assert os.path.dirname(tiny) == os.path.join(str(tmp_path), "store")
    assert _store_dir(tmp_path) == tiny  # the same settings: the same folder
    assert _store_dir(tmp_path, pixdim=[1.0, 1.0, 1.0]) != tiny
    assert _store_dir(tmp_path, modalities=["t1", "t2"]) != tiny
    assert _store_dir(tmp_path, crop_foreground=False) != tiny
    assert _store_dir(tmp_path, roi_size=[64, 64]) == tiny  # not a store setting
    assert os.path.dirname(_store_dir(tmp_path, store_root=str(tmp_path / "elsewhere"))) == str(tmp_path / "elsewhere")
    assert _store_dir(tmp_path, store_dir=str(tmp_path / "mine")) == str(tmp_path / "mine")  # explicit wins


def test_a_case_in_two_lists_is_stored_once(tmp_path):
    root = tmp_path / "data"
    make_demo_dataset(str(root), num_cases=2, shape=(24, 24, 16), spacing=(2.0, 2.0, 2.0), seed=1)
    cases, _ = scan_brats(str(root))
    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(TINY)])
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(root)})
    store = parser.get_parsed_content("store")
    twice = cases + [dict(cases[0])]  # case 0 in training and validation
    summary = store.preprocess(twice, base_dir=str(root), progress=False)
    assert (summary.total, summary.written, summary.failed) == (2, 2, [])
    assert sorted(os.listdir(os.path.join(store.store_dir, "cases"))) == sorted(c["case_id"] for c in cases)

    other = dict(cases[1], case_id=cases[0]["case_id"])  # another case's files under the same id: refused
    summary = store.preprocess(cases + [other], base_dir=str(root), progress=False,
                               raise_on_failure=False)
    assert summary.present == 2 and len(summary.failed) == 1 and "other files" in summary.failed[0][1]


@pytest.mark.slow
def test_two_presets_train_in_one_bundle_folder_with_default_stores(tmp_path):
    """tiny (2 mm) and tiny at 3 mm, one after the other in the same ``bundle_root``, both with the default
    ``store_dir``: each writes its own store, neither is refused."""
    datalist = make_demo_data(str(tmp_path / "data"), num_cases=2, seed=0, overwrite=True, val_fraction=0.5)
    common = {"bundle_root": str(tmp_path / "run"), "dataset_dir": str(tmp_path / "data"), "datalist": datalist,
              "epochs": 1, "resume": False}
    stores = []
    for extra in ({}, {"pixdim": [3.0, 3.0, 3.0]}):
        wf = workflow([TRAIN, TINY], **common, **extra)
        wf.initialize()
        stores.append(wf.parser.get_parsed_content("store_dir"))
        wf.run()
        wf.finalize()
    assert stores[0] != stores[1]
    assert sorted(os.listdir(tmp_path / "run" / "store")) == sorted(os.path.basename(s) for s in stores)
    for store in stores:
        assert len(os.listdir(os.path.join(store, "cases"))) == 2
