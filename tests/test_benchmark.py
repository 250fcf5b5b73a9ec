"""The benchmark builds DiffMedDINOv3's training step, inference and data pipelines from the bundle configs and runs
end to end on tiny sizes (no timing assertions)."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from monai.bundle import ConfigParser

from diffmed_monai.engines import DiffMedTrainer
from diffmed_monai.losses import DiffMedLoss
from diffmed_monai.networks import DiffMedDINOv3

from .helpers import BUNDLE, PRESETS, REPO

sys.path.insert(0, str(REPO / "scripts"))
import benchmark  # noqa: E402


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_benchmark_trains_with_the_bundles_trainer_and_network():
    batches = benchmark.synthetic_batches(1, 2, 4, 4, 32)
    trainer = benchmark.build_diffmed_trainer(["tiny"], batches, torch.device("cpu"), amp=False)
    assert type(trainer) is DiffMedTrainer
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / "configs" / "train.json"), str(PRESETS / "tiny.json")])
    parser["teacher_random_init"] = True
    expected = parser.get_parsed_content("network_def")
    assert isinstance(trainer.network, DiffMedDINOv3)
    assert {k: v.shape for k, v in trainer.network.state_dict().items()} == {
        k: v.shape for k, v in expected.state_dict().items()
    }
    assert trainer.network.shared_student.swin.layers1[0].blocks[0].attn.use_flash_attention  # as shipped
    assert isinstance(trainer.total_loss, DiffMedLoss)


def test_training_flops_per_slice_do_not_depend_on_the_number_of_steps():
    per_slice = []
    for steps in (1, 3):
        batches = benchmark.synthetic_batches(steps, 2, 4, 4, 32)
        trainer = benchmark.build_diffmed_trainer(["tiny"], batches, torch.device("cpu"), amp=False)
        timed = benchmark.time_training(trainer, 2, repeats=1, warmup=0, precision="float32")
        per_slice.append(timed["flops_per_slice"])
    assert per_slice[0] > 0
    assert per_slice[1] == pytest.approx(per_slice[0], rel=0.01)


def test_flop_count_includes_attention_on_a_cpu_as_the_explicit_products_count():
    """The CPU kernel of ``scaled_dot_product_attention`` is counted like ``q @ k^T`` then ``@ v`` (forward), and
    its backward too (FlopCounterMode alone counts 0 there)."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    q, k, v = (torch.randn(2, 3, 64, 16, requires_grad=True) for _ in range(3))
    explicit = benchmark.count_flops(lambda: (q @ k.transpose(-2, -1)).softmax(-1) @ v)
    fused = benchmark.count_flops(lambda: sdpa(q, k, v))
    assert fused == explicit == 4 * 2 * 3 * 64 * 64 * 16
    with torch.autocast("cpu", torch.bfloat16):  # with an additive mask, as the Swin blocks' inference call
        masked = benchmark.count_flops(lambda: sdpa(q, k, v, attn_mask=torch.zeros(64, 64)))
    assert masked == explicit
    with_backward = benchmark.count_flops(lambda: sdpa(q, k, v).sum().backward())
    assert with_backward > 2 * fused


def test_training_parts_cover_each_part_of_both_models():
    batches = benchmark.synthetic_batches(1, 2, 4, 4, 64)
    parts = benchmark.time_training_parts(["tiny"], batches, torch.device("cpu"), False, {}, 4, repeats=1, warmup=0)
    assert all(_positive_finite(e["flops_per_step"]) and _positive_finite(e["seconds_per_step"])
               for e in parts.values())
    flops = {name: e["flops_per_step"] for name, e in parts.items()}
    # one Swin student architecture: the shared one on B x M slices does the arithmetic of the M specific ones on B
    # (their stacked call, vmap's batching rules, counts 0.6 % more here: not a different network)
    assert flops["diffmed: specific students (M x B slices)"] == pytest.approx(
        flops["diffmed: shared student (B x M slices)"], rel=0.02)
    assert flops["swin_unetr_2d: Swin encoder (swinViT)"] < flops["swin_unetr_2d: whole network"]
    assert {e["precision"] for e in parts.values()} == {"float32"}  # the tiny preset trains float32 on a CPU
    report = benchmark.format_report({"meta": {"device": "cpu", "threads": 1, "torch": "", "presets": [], "amp": False,
                                               "batch_size": 2, "image_size": 64,
                                               "matmul_flops_per_s": {"float32": 1e11, "bfloat16": 4e11}},
                                      "training_parts": {k: {**e, "fraction_of_floor": 0.5} for k, e in parts.items()},
                                      "ratios": {}})
    assert all(name in report for name in parts)


def test_benchmark_end_to_end_tiny(tmp_path):
    out = tmp_path / "sub" / "bench.json"
    result = benchmark.run_benchmark(
        presets=["tiny"], device="cpu", batch_size=2, steps=1, image_size=64, volume_shape=(64, 64, 10), repeats=1,
        warmup=0, inference_flops=True, output=str(out),
    )
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["meta"]["teacher_random_init"] is True and saved["meta"]["presets"] == ["tiny"]
    assert set(saved["training"]) == {"diffmed", "swin_unetr_2d"}
    assert set(saved["inference"]) == {"diffmed", "segresnet_3d", "swin_unetr_2d"}
    for section in ("training", "inference"):
        for name, entry in saved[section].items():
            assert entry.pop("precision") == "float32", (section, name)  # the tiny preset: float32 on a CPU
            for key, value in entry.items():
                ok = value >= 0 if key == "peak_mem_gb" else _positive_finite(value)
                assert ok and math.isfinite(value), (section, name, key)
    assert all(_positive_finite(v) for v in saved["ratios"].values())
    assert "RANDOMLY INITIALISED" in benchmark.format_report(result)


def test_cpu_bf16_training_is_compared_with_the_peer_as_shipped_and_in_bf16_each_against_its_own_floor(tmp_path):
    result = benchmark.run_benchmark(
        presets=["tiny"], device="cpu", batch_size=2, steps=1, image_size=64, repeats=1, warmup=0,
        sections=["training"], overrides={"cpu_bf16": True}, output=None,
    )
    training, rates = result["training"], result["meta"]["matmul_flops_per_s"]
    assert result["meta"]["train_cpu_bf16"] is True
    assert {name: e["precision"] for name, e in training.items()} == {
        "diffmed": "bfloat16", "swin_unetr_2d": "float32", "swin_unetr_2d_bf16": "bfloat16"}
    for e in training.values():
        assert e["fraction_of_floor"] == pytest.approx(e["slices_per_s"] * e["flops_per_slice"] / rates[e["precision"]])
    # the same network and loss: the arithmetic does not depend on the precision
    assert training["swin_unetr_2d_bf16"]["flops_per_slice"] == training["swin_unetr_2d"]["flops_per_slice"]
    assert set(result["ratios"]) == {f"train_{what}_diffmed_over_{peer}" for what in ("slices_per_s", "share_of_floor")
                                     for peer in ("swin_unetr_2d", "swin_unetr_2d_bf16")}
    assert "| swin_unetr_2d_bf16 | bfloat16 |" in benchmark.format_report(result)


def test_peer_trainer_autocasts_forward_and_loss_on_a_cpu_only_when_asked():
    batches = benchmark.synthetic_batches(1, 2, 4, 4, 64)
    for cpu_bf16 in (False, True):
        trainer = benchmark.build_peer_trainer(batches, torch.device("cpu"), False, 4, cpu_bf16=cpu_bf16)
        dtypes: list[torch.dtype] = []
        trainer.network.out.register_forward_hook(lambda m, i, o, seen=dtypes: seen.append(o.dtype) and None)
        trainer.run()
        assert dtypes == [torch.bfloat16 if cpu_bf16 else torch.float32]
        assert all(p.dtype == torch.float32 for p in trainer.network.parameters())


@pytest.mark.slow
def test_data_benchmark_end_to_end_tiny(tmp_path):
    out = tmp_path / "data.json"
    result = benchmark.run_data_benchmark(
        num_cases=(2, 3), distinct=2, old_cases=(1,), workers=0, slices=8, old_slices=8, presets=["tiny"],
        workdir=str(tmp_path / "work"), shape=(32, 32, 24), output=str(out),
    )
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["preprocess"]["cases_written"] == 4  # 3 training cases and 1 validation case, written once
    assert set(saved["store_loader"]) == {"2", "3"} and set(saved["cache_loader"]) == {"1"}
    for entry in [*saved["store_loader"].values(), *saved["cache_loader"].values()]:
        assert _positive_finite(entry["slices_per_s"]) and _positive_finite(entry["memory_mb"]["peak_rss"])
        assert entry["slice_shape"] == [4, 96, 96]  # the tiny preset's roi_size: the bundle's own pipeline
    for name in ("npy_mmap", "npz_compressed_case", "zlib_per_slice"):
        assert _positive_finite(saved["formats"][name]["bytes"])
    assert saved["first_step_second_start"]["first_batch"][0] == 4
    assert _positive_finite(saved["summary"]["first_step_s"])
    assert "time to the first training step" in benchmark.format_data_report(result)


def test_brats_like_case_is_zero_outside_an_ellipsoidal_brain(tmp_path):
    import nibabel as nib
    import numpy as np

    shape = (48, 60, 31)
    files = benchmark.brats_like_case(str(tmp_path), shape, ["t1", "t2"])
    volume = np.stack([np.asarray(nib.load(f).dataobj) for f in files])
    assert volume.shape == (2, *shape)
    brain = volume.any(0)
    assert (volume[:, brain] > 0).all() and (volume[:, ~brain] == 0).all()
    for axis, (n, semi) in enumerate(zip(shape, benchmark.BRAIN_SEMI_AXES)):
        extent = np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))
        assert abs(len(extent) - 2 * semi * n) <= 2 and abs(extent.mean() - (n - 1) / 2) <= 0.5  # centred


def test_training_precision_runs_float32_and_cpu_bf16_from_the_same_weights_on_the_same_batches():
    result = benchmark.run_benchmark(
        presets=["tiny"], device="cpu", batch_size=2, steps=2, image_size=64, repeats=1, warmup=0,
        sections=["training_precision"], precision_epochs=2, output=None,
    )
    e = result["training_precision"]
    a, b = e["float32"]["losses"], e["bfloat16"]["losses"]
    assert len(a) == len(b) == 4
    assert set(a[0]) == {"loss", "loss_seg", "loss_kd", "loss_mse", "loss_kl"}
    # the same start: the first losses differ only by the precision, and they do differ (bf16 really ran)
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=0.05) and a[0]["loss"] != b[0]["loss"]
    assert e["max_relative_difference"]["loss"] == pytest.approx(
        max(abs(y["loss"] - x["loss"]) / abs(x["loss"]) for x, y in zip(a, b)))
    assert "| training precision" in benchmark.format_report(result)


def test_blob_batches_have_labels_that_follow_the_image():
    (batch,) = benchmark.blob_batches(1, 2, 4, 4, 32)
    image, label = batch["image"], batch["label"]
    assert image.shape == (2, 4, 32, 32) and label.shape == (2, 1, 32, 32)
    assert set(label.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}
    assert bool((label == 3).eq(image[:, 2:3] > 0.4).all())  # the last class wins where its modality is bright


@pytest.mark.slow
def test_training_variants_of_the_gpu_run_work_on_a_cpu_at_tiny_size():
    """``scripts/gpu_run.sh``'s training variants through the same code: MONAI's compile switch
    (``train#trainer#compile``; the ``eager`` backend here, dynamo without code generation) with activation
    checkpointing, each step's FLOPs and aten operations counted."""
    result = benchmark.run_benchmark(
        presets=["tiny"], device="cpu", batch_size=2, steps=2, image_size=64, repeats=1, warmup=0,
        sections=["training"], output=None,
        overrides={"compile": True, "compile_kwargs": {"backend": "eager"}, "network_def#use_checkpoint": True},
    )
    for name, entry in result["training"].items():
        assert entry["ops_per_step"] > 0 and _positive_finite(entry["slices_per_s"]), name
    assert "aten ops/step" in benchmark.format_report(result)
