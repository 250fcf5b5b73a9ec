#!/usr/bin/env python
"""Speed of DiffMedDINOv3 as the bundle runs it, against the MONAI models a user would otherwise run.

    python scripts/benchmark.py                                   # default network; CPU: a small volume
    python scripts/benchmark.py --presets "['tiny']" --image_size 64 --volume_shape "[64,64,4]"   # seconds
    python scripts/benchmark.py --device cuda --volume_shape "[240,240,155]" --output benchmark_gpu.json

Everything DiffMedDINOv3 runs is built from the bundle configs, not from a copy:

* training: ``train#trainer`` of ``train.json`` (+ presets) -- :class:`~diffmed_monai.engines.DiffMedTrainer`
  with the config's network, frozen teacher (always randomly initialised here: only its speed matters), loss and
  optimiser -- fed synthetic slice batches; against MONAI ``SwinUNETR`` (2D, feature_size 48, ``DiceCELoss``,
  AdamW) in MONAI's ``SupervisedTrainer`` on the same batches;
* inference: ``network`` and ``inferer`` (``SliceInferer``) of ``inference.json`` (+ presets) on one volume;
  against MONAI ``SegResNet`` with the ``brats_mri_segmentation`` bundle's network and sliding window, and
  ``SwinUNETR``-2D through the same ``SliceInferer``.

Timing uses ``torch.utils.benchmark.Timer`` (median over repeats, after a warm-up; on CUDA the timer
synchronises). Beside each figure stands its arithmetic floor: FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode`` divided by the matmul rate measured in the same process. Results go to
a JSON file and a table on stdout; see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

BUNDLE_CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"

#: MONAI Model Zoo ``brats_mri_segmentation``: its network and sliding-window settings (the 3D peer).
SEGRESNET_BUNDLE = dict(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, out_channels=3, dropout_prob=0.2)
SEGRESNET_WINDOW = dict(sw_batch_size=1, overlap=0.5)

logger = logging.getLogger("benchmark")


def bundle_parser(config: str, presets: Sequence[str] = (), **overrides: Any) -> ConfigParser:
    """``ConfigParser`` over ``bundle/configs/<config>.json`` and ``bundle/configs/presets/<preset>.json``."""
    files = [BUNDLE_CONFIGS / f"{config}.json", *(BUNDLE_CONFIGS / "presets" / f"{p}.json" for p in presets)]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(overrides)
    return parser


def synthetic_batches(num_batches: int, batch_size: int, modalities: int, num_classes: int, size: int) -> list:
    """``num_batches`` dicts of ``image`` ``(B, M, size, size)`` and ``label`` ``(B, 1, size, size)`` class indices."""
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(batch_size, modalities, size, size, generator=gen),
            "label": torch.randint(0, num_classes, (batch_size, 1, size, size), generator=gen).float(),
        }
        for _ in range(num_batches)
    ]


def build_diffmed_trainer(presets: Sequence[str], batches: list, device: torch.device, amp: bool):
    """The bundle's ``train#trainer`` (a ``DiffMedTrainer``) over ``batches``, without handlers or metrics."""
    parser = bundle_parser("train", presets, device=device, amp=amp, teacher_random_init=True, teacher_weights=None)
    parser["train#trainer#train_data_loader"] = batches
    parser["train#trainer#max_epochs"] = 1
    for key in ("train_handlers", "key_train_metric", "postprocessing"):
        parser[f"train#trainer#{key}"] = None
    return parser.get_parsed_content("train#trainer")


def build_peer_trainer(batches: list, device: torch.device, amp: bool, num_classes: int):
    """MONAI ``SupervisedTrainer`` training ``SwinUNETR``-2D with ``DiceCELoss`` and AdamW over ``batches``."""
    from monai.engines import SupervisedTrainer
    from monai.losses import DiceCELoss
    from monai.networks.nets import SwinUNETR

    network = SwinUNETR(
        in_channels=batches[0]["image"].shape[1], out_channels=num_classes, feature_size=48, spatial_dims=2
    ).to(device)
    return SupervisedTrainer(
        device=device, max_epochs=1, train_data_loader=batches, network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=1e-4),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True), amp=amp, amp_kwargs={"dtype": torch.bfloat16},
    )


def median_seconds(fn, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs (``torch.utils.benchmark.Timer``)."""
    timer = Timer(stmt="fn()", globals={"fn": fn})
    if warmup:
        timer.timeit(warmup)
    return statistics.median(timer.timeit(1).mean for _ in range(repeats))


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype) -> float:
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / Timer(stmt="a @ b", globals={"a": a, "b": b}).blocked_autorange(min_run_time=1.0).median


class PeakMemory:
    """Peak memory in GB of a section: ``torch.cuda.max_memory_allocated`` on CUDA, else the process's peak RSS
    (``getrusage``; it never decreases, so on a CPU each figure is the peak so far in the run)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gb: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.gb = torch.cuda.max_memory_allocated(self.device) / 1e9
        else:
            self.gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux


def time_training(trainer, batch_size: int, repeats: int, warmup: int) -> dict:
    """Slices/s of one epoch of ``trainer`` (its loader's batches), and FLOPs per slice of one iteration."""
    loader = trainer.data_loader
    steps = len(loader)
    trainer.data_loader = loader[:1]
    flops = count_flops(trainer.run)
    trainer.data_loader = loader
    with PeakMemory(trainer.state.device) as mem:
        seconds = median_seconds(trainer.run, repeats, warmup)
    return {
        "slices_per_s": steps * batch_size / seconds,
        "seconds_per_step": seconds / steps,
        "flops_per_slice": flops / batch_size,
        "peak_mem_gb": mem.gb,
    }


def time_inference(network, inferer, volume: torch.Tensor, amp: bool, repeats: int, warmup: int) -> dict:
    """Seconds per volume of ``inferer(volume, network)`` under ``inference_mode`` (bf16 autocast when ``amp``)."""
    network.eval()

    def run() -> None:
        with torch.inference_mode(), torch.autocast(volume.device.type, torch.bfloat16, enabled=amp):
            inferer(volume, network)

    def count() -> None:  # FlopCounterMode + inference_mode breaks einsum under autocast (torch 2.14)
        with torch.no_grad(), torch.autocast(volume.device.type, torch.bfloat16, enabled=amp):
            inferer(volume, network)

    flops = count_flops(count)
    with PeakMemory(volume.device) as mem:
        seconds = median_seconds(run, repeats, warmup)
    return {"seconds_per_volume": seconds, "flops_per_volume": flops, "peak_mem_gb": mem.gb}


def run_benchmark(
    presets: Sequence[str] = (),
    device: str = "auto",
    batch_size: int = 4,
    steps: int = 3,
    image_size: int | None = None,
    volume_shape: Sequence[int] = (128, 128, 16),
    repeats: int = 3,
    warmup: int = 1,
    amp: bool | None = None,
    output: str | None = "benchmark.json",
) -> dict:
    """Time training and inference of DiffMedDINOv3 (from the bundle configs) and the MONAI peers; return the dict.

    Args:
        presets: names in ``bundle/configs/presets`` merged over the bundle configs (e.g. ``["tiny"]``).
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda[:N]"``.
        batch_size: training slices per step, the same for both trained models. steps: steps per timed epoch.
        image_size: training slice size (default: the config's ``roi_size``).
        volume_shape: ``(H, W, D)`` of the inference volume (M channels, random intensities).
        repeats, warmup: timed and untimed repetitions of each measurement.
        amp: bf16 autocast (default: on for CUDA, as the configs).
        output: JSON path (``None``: do not write).
    """
    from monai.networks.nets import SegResNet, SwinUNETR

    presets = [presets] if isinstance(presets, str) else list(presets)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    amp = dev.type == "cuda" if amp is None else bool(amp)
    infer_parser = bundle_parser("inference", presets, device=dev, amp=amp)
    modalities, num_classes = len(infer_parser["modalities"]), infer_parser.get_parsed_content("num_classes")
    size = int(image_size or bundle_parser("train", presets)["roi_size"][0])
    if size % 32 or size < 64:
        raise ValueError(f"`image_size`={size} must be a multiple of 32 and >= 64 (SwinUNETR-2D downsamples by 32).")
    batches = synthetic_batches(steps, batch_size, modalities, num_classes, size)
    rate = matmul_flops_per_s(dev, torch.bfloat16 if amp else torch.float32)

    logger.info("training: DiffMedDINOv3 (bundle train#trainer) and SwinUNETR-2D, batch %d, %dx%d", batch_size, size, size)
    training = {
        "diffmed": time_training(build_diffmed_trainer(presets, batches, dev, amp), batch_size, repeats, warmup),
        "swin_unetr_2d": time_training(build_peer_trainer(batches, dev, amp, num_classes), batch_size, repeats, warmup),
    }
    volume = torch.randn(1, modalities, *volume_shape, generator=torch.Generator().manual_seed(1)).to(dev)
    slice_inferer = infer_parser.get_parsed_content("inferer")
    segresnet_roi = [max(16, -(-s // 16) * 16) for s in volume_shape]  # the bundle's [240, 240, 160] for BraTS
    from monai.inferers import SlidingWindowInferer

    logger.info("inference: one %s volume", list(volume_shape))
    inference = {
        "diffmed": time_inference(infer_parser.get_parsed_content("network"), slice_inferer, volume, amp, repeats, warmup),
        "segresnet_3d": time_inference(
            SegResNet(spatial_dims=3, in_channels=modalities, **SEGRESNET_BUNDLE).to(dev),
            SlidingWindowInferer(roi_size=segresnet_roi, progress=False, **SEGRESNET_WINDOW), volume, amp, repeats,
            warmup,
        ),
        "swin_unetr_2d": time_inference(
            SwinUNETR(in_channels=modalities, out_channels=num_classes, feature_size=48, spatial_dims=2).to(dev),
            slice_inferer, volume, amp, repeats, warmup,
        ),
    }
    for entry in training.values():
        entry["fraction_of_floor"] = entry["slices_per_s"] * entry["flops_per_slice"] / rate
    for entry in inference.values():
        entry["fraction_of_floor"] = entry["flops_per_volume"] / rate / entry["seconds_per_volume"]
    result = {
        "meta": {
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "presets": presets, "amp": amp,
            "batch_size": batch_size, "steps": steps, "image_size": size, "volume_shape": list(volume_shape),
            "segresnet_roi": segresnet_roi, "repeats": repeats, "warmup": warmup, "teacher_random_init": True,
            "matmul_flops_per_s": rate,
        },
        "training": training,
        "inference": inference,
        "ratios": {
            "train_slices_per_s_diffmed_over_swin_unetr_2d":
                training["diffmed"]["slices_per_s"] / training["swin_unetr_2d"]["slices_per_s"],
            "infer_s_per_volume_diffmed_over_segresnet_3d":
                inference["diffmed"]["seconds_per_volume"] / inference["segresnet_3d"]["seconds_per_volume"],
            "infer_s_per_volume_diffmed_over_swin_unetr_2d":
                inference["diffmed"]["seconds_per_volume"] / inference["swin_unetr_2d"]["seconds_per_volume"],
        },
    }
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_report(result: dict) -> str:
    """Markdown tables of a :func:`run_benchmark` result."""
    meta = result["meta"]
    lines = [
        f"Device: {meta['device']} ({meta['threads']} threads), torch {meta['torch']}, presets {meta['presets']}, "
        f"amp {meta['amp']}; DINOv3 teacher RANDOMLY INITIALISED (speed only).",
        "",
        f"| training, batch {meta['batch_size']} at {meta['image_size']}^2 | slices/s | GFLOP/slice | "
        "share of FLOP floor | peak memory (GB) |",
        "|---|---|---|---|---|",
    ]
    for name, e in result["training"].items():
        lines.append(f"| {name} | {e['slices_per_s']:.3g} | {e['flops_per_slice'] / 1e9:.3g} | "
                     f"{e['fraction_of_floor']:.1%} | {e['peak_mem_gb']:.2f} |")
    lines += ["", f"| inference, volume {meta['volume_shape']} | s/volume | GFLOP/volume | share of FLOP floor | "
              "peak memory (GB) |", "|---|---|---|---|---|"]
    for name, e in result["inference"].items():
        lines.append(f"| {name} | {e['seconds_per_volume']:.3g} | {e['flops_per_volume'] / 1e9:.3g} | "
                     f"{e['fraction_of_floor']:.1%} | {e['peak_mem_gb']:.2f} |")
    lines += ["", *(f"{k}: {v:.3g}" for k, v in result["ratios"].items())]
    return "\n".join(lines)


def main(**kwargs: Any) -> None:
    print(format_report(run_benchmark(**kwargs)))


if __name__ == "__main__":
    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("diffmed_monai.networks.teacher").setLevel(logging.ERROR)  # the table says it is random
    fire.Fire(main)
