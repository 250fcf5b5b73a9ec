"""Semi-supervised distillation: unlabelled cases (the datalist's ``unlabelled`` list) through the datalist, the
preprocessing into the store, the slice dataset and its sampler (DDP included), the loss and the trainer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DistributedWeightedRandomSampler
from monai.engines import IterationEvents
from monai.utils import CommonKeys

from diffmed_monai.data import (
    StoreError,
    StoreSliceDataset,
    load_unlabelled_datalist,
    make_demo_dataset,
    scan_brats,
    write_datalist,
)
from diffmed_monai.losses import DiffMedLoss

from .helpers import BUNDLE, PRESETS, workflow

TRAIN = BUNDLE / "configs" / "train.json"
TINY = PRESETS / "tiny.json"
SHAPE = (48, 48, 32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """5 phantoms: 2 labelled training cases, 2 unlabelled (their seg files deleted), 1 validation case."""
    root = tmp_path_factory.mktemp("unlabelled_data")
    make_demo_dataset(str(root), num_cases=5, shape=SHAPE, spacing=(2.0, 2.0, 2.0), seed=5)
    cases, _ = scan_brats(str(root))
    unlabelled = []
    for case in cases[2:4]:
        os.remove(root / case["label"])
        unlabelled.append({k: v for k, v in case.items() if k != "label"})
    write_datalist(str(root / "datalist.json"), cases[:2], cases[4:], test=cases[4:], unlabelled=unlabelled)
    return root


def _parser(data, tmp_path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(TINY)])
    parser.update({"dataset_dir": str(data), "bundle_root": str(tmp_path), **overrides})
    return parser


def test_datalist_unlabelled_list_is_read_and_refuses_labels(data, tmp_path):
    entries = load_unlabelled_datalist(str(data / "datalist.json"), base_dir=str(data))
    assert len(entries) == 2 and all(e["unlabelled"] and "label" not in e for e in entries)
    assert all(os.path.isabs(p) and os.path.isfile(p) for e in entries for p in e["image"])
    content = json.loads((data / "datalist.json").read_text())
    assert "unlabelled" not in json.dumps(content["unlabelled"][0])  # the flag is added on reading, not stored
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"training": content["training"], "validation": content["validation"]}))
    assert load_unlabelled_datalist(str(plain), base_dir=str(data)) == []
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**content, "unlabelled": content["training"][:1]}))
    with pytest.raises(ValueError, match="bad.json.*no 'label'"):
        load_unlabelled_datalist(str(bad), base_dir=str(data))
    with pytest.raises(ValueError, match="no 'label'"):
        write_datalist(str(tmp_path / "x.json"), content["training"], [], unlabelled=content["training"][:1])


def test_unlabelled_cases_are_preprocessed_into_the_store_and_sampled(data, tmp_path):
    parser = _parser(data, tmp_path)
    store, cases = parser.get_parsed_content("store"), parser.get_parsed_content("store_cases")
    assert len(cases) == 5
    summary = store.preprocess(cases, progress=False)
    assert (summary.written, summary.failed) == (5, [])
    unlabelled = parser.get_parsed_content("train#unlabelled")
    records = store.records(unlabelled)
    assert [r.has_label for r in records] == [False, False]
    labelled_records = store.records(parser.get_parsed_content("train#datalist"))
    assert all(r.has_label for r in labelled_records)
    for record in records:
        image, label = store.read_volume(record.case_id)
        assert image.shape == record.shape and label.shape == (record.shape[0], *record.shape[2:])
        assert not label.any() and np.abs(image).max() > 0  # image kept, label all background
        assert not record.labelled.any()
    # an entry without label and without the `unlabelled` mark is still refused (a forgotten label)
    forgotten = {k: v for k, v in unlabelled[0].items() if k != "unlabelled"}
    forgotten["case_id"] = "forgotten"
    with pytest.raises(StoreError, match="forgotten: no `label` file"):
        store.preprocess([forgotten], progress=False)

    dataset = parser.get_parsed_content("train#dataset")
    flags = dataset.data.has_label
    assert flags.sum() == sum(r.num_slices for r in labelled_records) and (~flags).sum() == sum(
        r.num_slices for r in records)
    item = dataset[int(np.nonzero(~flags)[0][0])]
    assert item["labelled"] == 0 and dataset[int(np.nonzero(flags)[0][0])]["labelled"] == 1
    for share in (0.0, 0.3, 1.0):
        weights = dataset.sampling_weights(3.0, share)
        assert weights.sum() == pytest.approx(1.0)
        assert weights[~flags].sum() == pytest.approx(share)
        assert np.allclose(weights[~flags], share / (~flags).sum())
    # the labelled part keeps the tumour-weighted choice of slice
    labelled_only = StoreSliceDataset(parser.get_parsed_content("train#datalist"), store)
    np.testing.assert_allclose(dataset.sampling_weights(3.0, 0.4)[flags], 0.6 * labelled_only.sampling_weights(3.0))
    with pytest.raises(ValueError, match="unlabelled_share"):
        dataset.sampling_weights(3.0, 1.5)

    # DDP: each rank samples from its own shard of the slices, unlabelled ones included
    weights = dataset.sampling_weights(3.0, 0.5)
    drawn = []
    for rank in (0, 1):
        sampler = DistributedWeightedRandomSampler(dataset, weights, num_samples_per_rank=64, even_divisible=False,
                                                   num_replicas=2, rank=rank)
        sampler.set_epoch(0)
        drawn.append(set(sampler))
    assert drawn[0] and drawn[1] and not drawn[0] & drawn[1]
    assert all(not flags[list(d)].all() for d in drawn)  # both ranks draw unlabelled slices

    off = _parser(data, tmp_path, use_unlabelled=False)
    assert off.get_parsed_content("train#unlabelled") == [] and len(off.get_parsed_content("store_cases")) == 3


def test_loss_masks_segmentation_of_unlabelled_samples_not_kd():
    torch.manual_seed(0)
    loss = DiffMedLoss(2, 8, modalities=["a", "b"])
    b, c, h = 3, 3, 16
    pred = torch.randn(b, c, h, h, requires_grad=True)
    outputs = {"pred": pred, "u0": torch.randn(b, 2, 8, 2, 2)}
    outputs["denoised"], outputs["denoised_noisy"] = (torch.randn(b, 2, 8, 2, 2, requires_grad=True) for _ in "12")
    label = torch.randint(0, c, (b, 1, h, h))
    teacher = torch.randn(b, 2, 8, 2, 2)
    labelled = torch.tensor([1, 0, 1])
    parts = loss(outputs, label, teacher, labelled=labelled)
    reference = loss.seg(pred[[0, 2]], label[[0, 2]])
    assert torch.isclose(parts["loss_seg"], reference)
    parts["loss"].backward()
    assert pred.grad[1].abs().max() == 0 and pred.grad[0].abs().max() > 0  # no seg gradient for sample 1
    assert outputs["denoised"].grad[1].abs().max() > 0  # its KD term still trains the network
    # the unlabelled sample's label does not matter; through `outputs["labelled"]` too
    label2 = label.clone()
    label2[1] = (label2[1] + 1) % c
    parts2 = loss({**outputs, "labelled": labelled}, label2, teacher)
    assert torch.isclose(parts2["loss_seg"], parts["loss_seg"])
    # a batch of unlabelled samples only: seg 0, KD as usual, backward still works
    none = loss(outputs, label, teacher, labelled=torch.zeros(b))
    assert float(none["loss_seg"]) == 0 and float(none["loss_kd"]) > 0
    none["loss"].backward()
    with pytest.raises(ValueError, match="labelled"):
        loss(outputs, label, teacher, labelled=torch.ones(b + 1))


@pytest.mark.slow
def test_trainer_gives_unlabelled_slices_kd_only(data, tmp_path):
    wf = workflow([TRAIN, TINY], bundle_root=str(tmp_path), dataset_dir=str(data), epochs=1, val_interval=1,
                  slices_per_volume=6)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen = []

    def record(engine):  # between FORWARD_COMPLETED and LOSS_COMPLETED `pred` is the dict the loss reads
        outputs = engine.state.output[CommonKeys.PRED]
        seen.append((outputs["labelled"].tolist(), outputs["pred"].shape[0]))

    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, record)
    wf.run()
    wf.finalize()
    flags = [f for batch, _ in seen for f in batch]
    assert seen and all(len(batch) == n for batch, n in seen)
    assert 0 in flags and 1 in flags
    validator = wf.parser.get_parsed_content("validate#evaluator")
    agreement = {k: v for k, v in validator.state.metrics.items() if k.startswith("kd_cosine_")}
    assert set(agreement) == {f"kd_cosine_{m}" for m in ("t1", "t1ce", "t2", "flair")}
    assert all(-1 <= v <= 1 for v in agreement.values())
