"""scripts/distillation_ablation.py end to end at a tiny budget: hard phantoms, a made teacher, KD variants with and
without unlabelled cases, a peer, the probe; the table; cached reruns; the KD-path diagnosis."""

from __future__ import annotations

import json
import sys

import pytest

from diffmed_monai.utils import parse_flags

from .helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
import distillation_ablation  # noqa: E402

ARGS = {"labelled": [1], "num_unlabelled": 1, "num_test": 1, "seeds": [0], "budget_s": 2.0, "teacher_steps": 2,
        "teacher_pool_cases": 1, "slices_per_volume": 2,
        "variants": ["no_kd", "reg_made_unl", "diff_made_unl", "swinunetr2d"]}


@pytest.mark.slow
def test_ablation_runs_end_to_end_and_writes_the_table(tmp_path):
    work = tmp_path / "ablation"
    report = distillation_ablation.main(workdir=str(work), **ARGS)
    table = (work / "ablation.md").read_text()
    for variant in ARGS["variants"]:
        assert distillation_ablation.VARIANTS[variant][0] in table
        run = report["runs"][f"{variant}_L1_s0"]
        assert run["training"]["iterations"] > 0 and run["training"]["cpu_s"] >= ARGS["budget_s"]
        assert set(run["mean"]) == {"et", "tc", "wt"}
        assert all(0 <= run["mean"][r]["dice"] <= 1 for r in run["mean"])
        assert bool(run["agreement"]) == (variant != "swinunetr2d")
    assert "linear probe of the made teacher" in table and "random twin" in table
    assert report["settings"]["teacher"]["pool_case_seeds"] == [24000]  # disjoint from the students' cases
    datalist = json.loads((work / "data" / "datalist_L1.json").read_text())
    assert len(datalist["training"]) == 1 and len(datalist["unlabelled"]) == 1
    assert not any("label" in c for c in datalist["unlabelled"])
    # a rerun with the same settings reuses every run's result (nothing retrained)
    stamps = {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*/result.json")}
    again = distillation_ablation.main(workdir=str(work), **ARGS)
    assert again["runs"] == json.loads(json.dumps(report["runs"]))
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert "| Δ vs (a) |" in table and "Mean Dice per seed: no_kd s0 " in table
    assert "| false-positive components ET / TC / WT |" in table
    # the table of what is cached, a seed not run listed, nothing trained ("false" as typed on a command line)
    command_line = parse_flags(distillation_ablation.main)  # as the script's entry point calls it
    partial = command_line(workdir=str(work), **{**ARGS, "seeds": [0, 1]}, train_missing="false")
    assert partial["settings"]["missing"] == [f"{v}_L1_s1" for v in ARGS["variants"]]
    assert "Not run (left out of the means): no_kd_L1_s1" in (work / "ablation.md").read_text()
    assert sorted(p.name for p in (work / "runs").iterdir()) == sorted(f"{v}_L1_s0" for v in ARGS["variants"])

    students = distillation_ablation.probe_students(workdir=str(work), labelled=1, seeds=[0], labelled_pool=1,
                                                    num_unlabelled=1, num_test=1, slice_step=8,
                                                    variants=["no_kd", "diff_made_unl"])
    for variant in ("no_kd", "diff_made_unl"):
        for measure in ("probe", "segmentation"):
            assert 0 <= students["students"][variant][0][measure]["mean_dice"] <= 1
    assert "made teacher (frozen)" in students["table"] and (work / "student_probe_L1_fit1.json").is_file()

    diagnosis = distillation_ablation.diagnose(workdir=str(work), steps=1, labelled_pool=1, num_unlabelled=1,
                                               num_test=1, slice_step=8, modes=["seg_only", "diffusion_feature"])
    grads = diagnosis["diffusion_feature"]["grad_norms_step0"]
    assert grads["seg"]["decoder"] > 0 and grads["feature term (u0)"]["decoder"] == 0
    assert grads["feature term (u0)"]["students"] > 0
    by_t = diagnosis["diffusion_feature"]["grad_u0_by_t"]
    assert by_t[999]["grad_norm"] < by_t[1]["grad_norm"]
    assert -1 <= diagnosis["seg_only"]["cos_u0"] <= 1 and "ridge_r2_fused_to_teacher" in diagnosis["seg_only"]
    for teacher in ("made", "random"):
        content = diagnosis["token_content"][teacher]
        assert len(content) == 4 and all(c["channel_std_max_over_min"] >= 1 for c in content)
        assert all(c["r2_regions_raw"] <= 1 and c["r2_regions_standardised"] <= 1 for c in content)
    with pytest.raises(ValueError, match="Unknown variants"):
        distillation_ablation.main(workdir=str(work), **{**ARGS, "variants": ["nope"]})
