"""The teacher probe (diffmed_monai.metrics.probe, ``diffmed-monai probe-teacher``, bundle ``configs/probe.json``):
token-resolution targets, Dice rules, a probe that separates informative from random features, and the command on
tiny data."""

from __future__ import annotations

import json

import pytest
import torch

from diffmed_monai import cli
from diffmed_monai.data.demo import make_demo_data
from diffmed_monai.metrics.probe import (
    fit_linear_probe,
    probe_dice,
    probe_teacher,
    region_masks,
    token_fractions,
)
from diffmed_monai.networks.teacher import DINOv3Teacher

from .helpers import BUNDLE, workflow


def test_region_masks_and_token_fractions():
    label = torch.zeros(1, 32, 32)
    label[0, :16, :16] = 4  # ET fills the first patch
    label[0, :8, 16:] = 1  # necrosis: half of the second patch
    label[0, 16:, :4] = 2  # oedema: a quarter of the third
    masks = region_masks(label, (0, 1, 2, 4))
    assert masks.shape == (1, 3, 32, 32)
    fractions = token_fractions(masks)
    assert fractions.shape == (1, 3, 2, 2)
    assert fractions[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.0]]  # ET
    assert fractions[0, 1].tolist() == [[1.0, 0.5], [0.0, 0.0]]  # TC = necrosis + ET
    assert fractions[0, 2].tolist() == [[1.0, 0.5], [0.25, 0.0]]  # WT
    assert torch.equal(region_masks(label, (0, 1, 2, 3))[:, 0], torch.zeros(1, 32, 32))  # BraTS 2023 values


def test_probe_dice_rules():
    fractions = torch.zeros(1, 3, 2, 2)
    fractions[0, 2, 0, 0] = 1.0
    fractions[0, 2, 0, 1] = 0.25  # a patch a quarter inside (a thin rim)
    logits = torch.full((1, 3, 2, 2), -8.0)
    scores = probe_dice(logits, fractions)
    assert scores["et"] == scores["tc"] == 1.0  # absent and (almost) not predicted: 1
    assert scores["wt"] < 0.01  # present, not predicted
    exact = torch.logit(fractions.clamp(1e-9, 1 - 1e-9).double())
    assert probe_dice(exact, fractions)["wt"] == pytest.approx(1.0, abs=1e-6)  # the fractions themselves: 1
    logits[0, 0] = 3.0  # ET predicted everywhere, absent in the case: 0
    assert probe_dice(logits, fractions)["et"] == 0.0
    half = torch.full((1, 3, 2, 2), -30.0)
    half[0, 2, 0, 0] = 0.0  # p = 0.5 where r = 1, nothing where r = 0.25
    assert probe_dice(half, fractions)["wt"] == pytest.approx(2 * 0.5 / (0.5 + 1.25), abs=1e-6)


def test_linear_probe_separates_informative_from_random_features():
    gen = torch.Generator().manual_seed(0)
    fractions = (torch.rand(40, 3, 6, 6, generator=gen) > 0.7).float()
    informative = torch.cat([fractions * 2 - 1 + 0.3 * torch.randn(40, 3, 6, 6, generator=gen),
                             torch.randn(40, 5, 6, 6, generator=gen)], dim=1)
    random = torch.randn(40, 8, 6, 6, generator=gen)
    for features, good in ((informative, True), (random, False)):
        probe = fit_linear_probe(features[:30], fractions[:30])
        dice = probe_dice(probe(features[30:]), fractions[30:])
        assert all((d > 0.9) == good for d in dice.values()), dice


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    datalist = make_demo_data(str(root / "data"), num_cases=2, shape=(60, 60, 39), spacing=(4.0, 4.0, 4.0),
                              difficulty="hard", val_fraction=0.5)
    torch.manual_seed(3)
    teacher = DINOv3Teacher(None, arch="tiny", backend="timm", random_init=True)
    weights = root / "teacher.pth"
    torch.save(teacher.model.state_dict(), weights)
    return root, datalist, weights


def test_probe_teacher_writes_the_table_and_refuses_to_overwrite(tiny_data, capsys):
    root, datalist, weights = tiny_data
    out = root / "probe.json"
    report = probe_teacher(str(root / "data"), teacher_weights=str(weights), pixdim=(4, 4, 4), roi_size=(64, 64),
                           num_fit=1, num_eval=1, output=str(out))
    assert "| given (teacher.pth)" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["settings"]["fit_cases"] == 1 and written["fit_tokens"] > 0
    for name in ("teacher", "random"):
        assert set(written[name]["mean"]) == {"et", "tc", "wt"}
        assert all(0.0 <= v <= 1.0 for v in written[name]["mean"].values())
        assert written[name]["mean"] == report[name]["mean"]
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        probe_teacher(str(root / "data"), teacher_weights=str(weights), pixdim=(4, 4, 4), roi_size=(64, 64),
                      num_fit=1, num_eval=1, output=str(out))
    assert out.read_bytes() == before
    with pytest.raises(ValueError, match="teacher_weights"):
        probe_teacher(str(root / "data"), teacher_weights=None)
    unlabelled = root / "unlabelled.json"
    lists = json.loads(open(datalist).read())
    lists["training"] = [{"image": c["image"]} for c in lists["training"]]
    unlabelled.write_text(json.dumps(lists))
    with pytest.raises(ValueError, match="label"):
        probe_teacher(str(root / "data"), datalist=str(unlabelled), teacher_weights=str(weights),
                      pixdim=(4, 4, 4), roi_size=(64, 64), num_fit=1, num_eval=1)


def test_probe_command_and_bundle_entry(tiny_data, tmp_path):
    root, datalist, weights = tiny_data
    coarse = tmp_path / "coarse.json"  # a preset after tiny: the data's 4 mm and small slices keep the test quick
    coarse.write_text(json.dumps({"pixdim": [4.0, 4.0, 4.0], "roi_size": [64, 64]}))
    result = cli.probe_teacher(str(root / "data"), teacher_weights=str(weights), presets=["tiny", str(coarse)],
                               num_cases=1, output=str(tmp_path / "cli.json"))
    assert set(result) == {"teacher", "random", "output"} and (tmp_path / "cli.json").is_file()
    settings = json.loads((tmp_path / "cli.json").read_text())["settings"]
    assert settings["roi_size"] == [64, 64] and settings["pixdim"] == [4.0, 4.0, 4.0]  # read from the presets
    wf = workflow([BUNDLE / "configs" / "train.json", BUNDLE / "configs" / "probe.json",
                   BUNDLE / "configs" / "presets" / "tiny.json", coarse], workflow_type=None, run_id="probe",
                  bundle_root=str(tmp_path / "bundle_run"), dataset_dir=str(root / "data"), teacher_arch="tiny",
                  teacher_weights=str(weights), probe_cases=1)
    wf.initialize()
    wf.run()
    bundle_report = json.loads((tmp_path / "bundle_run" / "probe.json").read_text())
    assert bundle_report["teacher"]["mean"] == json.loads((tmp_path / "cli.json").read_text())["teacher"]["mean"]
