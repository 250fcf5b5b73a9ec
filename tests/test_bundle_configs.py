"""The bundle configs read like a Model Zoo bundle's: short ``$`` expressions, one ``$import diffmed_monai``; and the
package functions the configs name instead of long expressions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from tests.helpers import BUNDLE, PRESETS, REPO

CONFIGS = sorted((BUNDLE / "configs").glob("*.json"))
TRAIN, INFER, EVALUATE = (BUNDLE / "configs" / f"{name}.json" for name in ("train", "inference", "evaluate"))
TINY = PRESETS / "tiny.json"
MAX_EXPRESSION = 80


def _expressions(value):
    """Every ``$`` expression string in a parsed config, in order."""
    if isinstance(value, str):
        if value.startswith("$"):
            yield value
    elif isinstance(value, list):
        for item in value:
            yield from _expressions(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _expressions(item)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_no_long_expressions(path):
    """A computation longer than a line belongs in the package (a named, tested function), not in the JSON."""
    long = [e for e in _expressions(json.loads(path.read_text())) if len(e) > MAX_EXPRESSION]
    assert not long, f"{path.name}: $ expressions over {MAX_EXPRESSION} characters: {long}"


def test_importing_the_package_is_cheap_and_reaches_every_subpackage():
    """``$import diffmed_monai`` is the configs' one import: the subpackages load on first use, and the bare import
    pulls in neither torch nor MONAI (the command line and the bundle tools import it too)."""
    code = ("import sys, diffmed_monai as d; heavy = sorted({'torch', 'monai'} & set(sys.modules)); "
            "print(heavy, d.utils.as_bool('no', 'k'), d.metrics.segmentation_metrics.__module__, "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False", "diffmed_monai.metrics.segmentation", "True"]
    import diffmed_monai

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        diffmed_monai.nope  # noqa: B018
    assert {"data", "engines", "metrics", "networks", "transforms", "utils"} <= set(dir(diffmed_monai))


def _parser(*files, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(overrides)
    return parser


def _types(compose) -> list:
    """Class names of a ``Compose``'s transforms, nested ``Compose`` as a sub-list."""
    return [_types(t) if type(t).__name__ == "Compose" else type(t).__name__ for t in compose.transforms]


# ------------------------------------------------------------------------------------- training slice sampler

@pytest.fixture(scope="module")
def slice_dataset(tmp_path_factory):
    """train.json's slice dataset over 3 stored phantoms: 2 labelled training cases and 1 unlabelled."""
    from diffmed_monai.data import make_demo_dataset, scan_brats, write_datalist

    root = tmp_path_factory.mktemp("sampler")
    data = root / "data"
    make_demo_dataset(str(data), num_cases=4, shape=(48, 48, 32), spacing=(2.0, 2.0, 2.0), seed=3)
    cases, _ = scan_brats(str(data))
    os.remove(data / cases[2]["label"])
    unlabelled = [{k: v for k, v in cases[2].items() if k != "label"}]
    write_datalist(str(data / "datalist.json"), cases[:2], cases[3:], unlabelled=unlabelled)
    parser = _parser(TRAIN, TINY, dataset_dir=str(data), bundle_root=str(root), preprocess_workers=0)
    parser.get_parsed_content("store").preprocess(parser.get_parsed_content("store_cases"), progress=False)
    return parser.get_parsed_content("train#dataset"), parser


@pytest.mark.parametrize("slices_per_volume, world_size", [(4, 1), (4, 2), (3, 5)])
def test_weighted_slice_sampler_draws_slices_per_volume_for_every_case(slice_dataset, slices_per_volume,
                                                                       world_size):
    """Labelled and unlabelled cases count; the ranks share the epoch's draws, rounded up per rank."""
    from monai.data import DistributedWeightedRandomSampler

    from diffmed_monai.data import weighted_slice_sampler

    dataset, _ = slice_dataset
    samplers = [weighted_slice_sampler(dataset, slices_per_volume, 3.0, 0.5, num_replicas=world_size, rank=rank)
                for rank in range(world_size)]
    per_rank = -(-3 * slices_per_volume // world_size)
    assert all(isinstance(s, DistributedWeightedRandomSampler) for s in samplers)
    assert [len(list(s)) for s in samplers] == [per_rank] * world_size
    for sampler in samplers:  # by the store's slice weights
        np.testing.assert_array_equal(sampler.weights, dataset.sampling_weights(3.0, 0.5))
    drawn = [set(s) for s in samplers]  # each rank from its own shard of the slices
    assert all(not a & b for i, a in enumerate(drawn) for b in drawn[i + 1:])
    with pytest.raises(ValueError, match="`slices_per_volume`"):
        weighted_slice_sampler(dataset, 0, 3.0)


def test_train_json_sampler_is_the_weighted_slice_sampler(slice_dataset):
    _, parser = slice_dataset
    parser.update({"slices_per_volume": 5})
    sampler = parser.get_parsed_content("train#sampler")
    assert len(list(sampler)) == 3 * 5 and sampler.num_replicas == 1


# ----------------------------------------------------------------------------------------------- metrics

def _run_metrics(metrics: dict, outputs: list) -> dict:
    from ignite.engine import Engine

    engine = Engine(lambda e, batch: batch)
    for name, handler in metrics.items():
        handler.attach(engine, name)
    return engine.run([outputs], max_epochs=1).metrics


def test_brats_region_metrics_read_each_region_and_follow_the_empty_rule():
    from diffmed_monai.metrics import BRATS_REGIONS, brats_region_metrics

    mask = torch.zeros(1, 8, 8, 4)
    mask[:, 2:6, 2:6, 1:3] = 1
    item = {"pred_regions_tc": mask, "label_regions_tc": mask,  # perfect
            "pred_regions_wt": torch.zeros_like(mask), "label_regions_wt": mask,  # missed
            "pred_regions_et": torch.zeros_like(mask), "label_regions_et": torch.zeros_like(mask)}  # both empty
    metrics = brats_region_metrics(spacing=(1.0, 1.0, 1.0))
    assert list(metrics) == [f"{m}_region_{r}" for r in BRATS_REGIONS for m in ("dice", "hd95")]
    scores = _run_metrics(metrics, [item])
    assert scores["dice_region_tc"] == pytest.approx(1.0) and scores["hd95_region_tc"] == pytest.approx(0.0)
    assert scores["dice_region_wt"] == pytest.approx(0.0)
    assert scores["dice_region_et"] == pytest.approx(1.0)  # BraTS: both empty scores 1
    monai_rule = _run_metrics(brats_region_metrics(hd95=False, empty="monai"), [item])
    assert list(monai_rule) == [f"dice_region_{r}" for r in BRATS_REGIONS]
    assert monai_rule["dice_region_et"] == pytest.approx(0.0)  # MONAI: an empty reference is left out (no score)
    with pytest.raises(ValueError, match="metric_empty_rule"):
        brats_region_metrics(empty="nope")


@pytest.mark.parametrize("brats_regions", [True, False])
def test_evaluate_json_metrics_per_class_and_region(brats_regions):
    metrics = _parser(TRAIN, EVALUATE, TINY, brats_regions=brats_regions).get_parsed_content(
        "validate#additional_metrics")
    per_class = [f"{m}_{c}" for c in ("ncr", "ed", "et") for m in ("dice", "hd95")]
    regions = [f"{m}_region_{r}" for r in ("tc", "wt", "et") for m in ("dice", "hd95")]
    assert list(metrics) == per_class + (regions if brats_regions else [])
    assert list(_parser(TRAIN, TINY).get_parsed_content("validate#additional_metrics")) == [
        "dice_ncr", "dice_ed", "dice_et"]  # training's validation: Dice only


# ------------------------------------------------------------------------------- optional post-processing

@pytest.mark.parametrize("save_png, et_min_volume", [(False, 0.0), (True, 100.0)])
def test_inference_postprocessing_leaves_out_disabled_steps(tmp_path, save_png, et_min_volume):
    chain = _parser(INFER, TINY, bundle_root=str(tmp_path), save_png=str(save_png).lower(),
                    et_min_volume=et_min_volume).get_parsed_content("postprocessing")
    relabel = ["RelabelSmallComponentsd"] if et_min_volume else []
    copy, png = (["CopyItemsd"], [["Invertd", "SaveCasePNGd"]]) if save_png else ([], [])
    assert _types(chain) == ["Activationsd", "Invertd", "AsDiscreted", *relabel, *copy, "MapLabelValued",
                             "SaveLabelNiftid", *png]


@pytest.mark.parametrize("save_png, brats_regions", [(False, True), (True, False)])
def test_evaluate_postprocessing_leaves_out_disabled_steps(tmp_path, save_png, brats_regions):
    chain = _parser(TRAIN, EVALUATE, TINY, bundle_root=str(tmp_path), save_png=save_png, brats_regions=brats_regions,
                    et_min_volume=50.0).get_parsed_content("validate#postprocessing")
    relabel = ["RelabelSmallComponentsd"] if brats_regions else []
    png = [["Invertd", "SaveCasePNGd"]] if save_png else []
    regions = [["CopyItemsd", "ConvertToMultiChannelBasedOnBratsClassesd", "SplitDimd"]] if brats_regions else []
    assert _types(chain) == ["Invertd", "AsDiscreted", *relabel, *png, *regions, "AsDiscreted"]


def test_training_validation_inverts_then_applies_the_training_postprocessing(tmp_path):
    parser = _parser(TRAIN, TINY, bundle_root=str(tmp_path))
    chain = parser.get_parsed_content("validate#postprocessing")
    assert _types(chain) == ["Invertd", ["AsDiscreted"]]
    assert chain.transforms[1] is parser.get_parsed_content("train#postprocessing")
    assert _types(parser.get_parsed_content("validate#invert").transform) == ["DivisiblePadd"]
