"""The benchmark runs end to end on tiny sizes and writes a complete JSON report (no timing assertions)."""

from __future__ import annotations

import json
import math

import pytest

from diffmed_monai.benchmark import format_report, run_benchmark, segresnet_roi


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_benchmark_end_to_end_tiny(tmp_path, capsys):
    out = tmp_path / "sub" / "bench.json"
    result = run_benchmark(
        device="cpu", batch_size=2, image_size=64, teacher_arch="tiny", student="tiny", volume_shape=(64, 48, 3),
        warmup=0, steps=1, infer_warmup=0, infer_repeats=1, stacked_specific=True, output=str(out),
    )
    printed = capsys.readouterr().out
    assert "RANDOMLY INITIALISED" in printed and "Ratios" in printed
    saved = json.loads(out.read_text())
    assert set(saved) == {"meta", "matmul", "training", "inference", "ratios", "targets"}
    assert saved["meta"]["teacher_random_init"] is True
    assert saved["meta"]["volume_shape"] == [64, 48, 3] and saved["meta"]["image_size"] == 64
    assert _positive_finite(saved["matmul"]["flops_per_s"])
    assert set(saved["training"]) == {"diffmed", "swin_unetr_2d"}
    for entry in saved["training"].values():
        for key in ("steps_per_s", "slices_per_s", "flops_per_slice", "floor_slices_per_s", "fraction_of_floor"):
            assert _positive_finite(entry[key]), key
    assert set(saved["inference"]) == {"diffmed", "segresnet_3d", "swin_unetr_2d"}
    for name, entry in saved["inference"].items():
        for key in ("seconds_per_volume", "flops_per_volume", "floor_seconds_per_volume", "fraction_of_floor"):
            assert _positive_finite(entry[key]), (name, key)
    assert saved["inference"]["diffmed"]["windows_per_volume"] == 3  # one 64x64 window per slice
    assert saved["inference"]["segresnet_3d"]["inferer"]["roi_size"] == [64, 48, 16]
    assert saved["ratios"] and all(_positive_finite(v) for v in saved["ratios"].values())
    assert saved["targets"]["peak_train_mem_under_16gb"] is None  # not a GPU
    assert "RANDOMLY INITIALISED" in format_report(result)


def test_segresnet_roi_matches_brats_bundle():
    assert segresnet_roi((240, 240, 155)) == (240, 240, 160)


def test_benchmark_rejects_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="multiple of 32"):
        run_benchmark(device="cpu", image_size=32, output=None, verbose=False)
    with pytest.raises(ValueError, match="preset"):
        run_benchmark(device="cpu", student="huge", output=None, verbose=False)
