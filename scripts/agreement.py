#!/usr/bin/env python
"""Does a speed setting change DiffMedDINOv3's segmentations? Two settings of the bundle's inference compared with
trained weights, case by case.

    python scripts/agreement.py --checkpoint models/model.pt --dataset_dir DATA --presets "['brats']" \
        --devices "['cpu', 'cuda']" --baseline "{'amp': False, 'cpu_bf16': False}" --variant "{'amp': True, 'cpu_bf16': True}"
    python scripts/agreement.py ... --baseline "{'crop_slices': False}" --variant "{'crop_slices': True}"

For every case of the datalist section ``key`` and every device, ``inference.json`` (+ presets) runs the case
from its files to its label map -- ``preprocessing``, ``inferer`` over ``network`` with the checkpoint's weights,
``postprocessing`` without the file writer (:func:`benchmark.diffmed_case_runner`) -- once with the ``baseline``
overrides and once with the ``variant`` ones (the defaults: float32 against bf16; on a CPU bf16 is the inferer's
``cpu_bf16`` key, on CUDA autocast as the bundle's evaluator does with ``amp``). It reports the Dice between the two
label maps for every BraTS region (ET, TC, WT; the bar of docs/benchmarks.md: within 0.005 of 1), the voxels of
each region, and the seconds per volume of each setting. Random weights say nothing here: their logits are near
ties almost everywhere, so give a trained checkpoint.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import fire
import torch
from monai.data import load_decathlon_datalist
from monai.metrics import compute_dice

from diffmed_monai.engines import check_checkpoint
from diffmed_monai.utils import parse_flags

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import bundle_parser, cpu_name, diffmed_case_runner  # noqa: E402
from quality import REGIONS, brats_regions  # noqa: E402

logger = logging.getLogger("agreement")

#: the default comparison: float32 against bf16 (CPU: the inferer's ``cpu_bf16``; CUDA: the evaluator's ``amp``)
FLOAT32 = {"amp": False, "cpu_bf16": False}
BF16 = {"amp": True, "cpu_bf16": True}


def load_weights(network: torch.nn.Module, checkpoint: str) -> None:
    """Load ``model.pt`` (a state dict) or a training checkpoint's ``model`` entry into ``network``, after
    :func:`~diffmed_monai.engines.check_checkpoint` (a file that does not fit is an error naming each parameter)."""
    network.load_state_dict(check_checkpoint(checkpoint, {"model": network}, key="checkpoint")["model"])


def region_dice(a: torch.Tensor, b: torch.Tensor, label_values: Sequence[int]) -> dict[str, float]:
    """Dice between two label maps (original label values) for each BraTS region; 1.0 where both are empty."""
    regions_a = brats_regions(a.cpu().numpy(), label_values)
    regions_b = brats_regions(b.cpu().numpy(), label_values)
    dice = {}
    for name in REGIONS:
        x, y = (torch.as_tensor(regions[name])[None, None] for regions in (regions_a, regions_b))
        dice[name] = float(compute_dice(x, y, include_background=True, ignore_empty=False))
    return dice


def measure(
    checkpoint: str,
    dataset_dir: str,
    datalist: str | None = None,
    key: str = "testing",
    presets: Sequence[str] = ("brats",),
    devices: Sequence[str] = ("cpu",),
    baseline: dict | None = None,
    variant: dict | None = None,
    threads: int | None = None,
    max_cases: int | None = None,
    output: str | None = "agreement.json",
    **overrides,
) -> dict:
    """Dice per region between the label maps of ``baseline`` and ``variant`` (config overrides; default float32
    against bf16) and their seconds per volume; ``overrides`` go to both (e.g. ``--teacher_arch vitb16``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if threads:
        torch.set_num_threads(int(threads))
    presets = [presets] if isinstance(presets, str) else list(presets)
    devices = [devices] if isinstance(devices, str) else list(devices)
    settings = {"baseline": dict(FLOAT32 if baseline is None else baseline),
                "variant": dict(BF16 if variant is None else variant)}
    datalist = datalist or str(Path(dataset_dir) / "datalist.json")
    cases = load_decathlon_datalist(datalist, data_list_key=key, base_dir=dataset_dir)[: max_cases or None]
    result: dict = {"meta": {"checkpoint": str(checkpoint), "presets": presets, "cases": len(cases), **settings,
                             "overrides": overrides, "threads": torch.get_num_threads(), "torch": torch.__version__,
                             "cpu": cpu_name()},
                    "devices": {}}
    for name in devices:
        device = torch.device(name)
        parsers = {}
        for setting, keys in settings.items():
            parser = bundle_parser("inference", presets, **{**overrides, **keys}, device=device)
            load_weights(parser.get_parsed_content("network"), checkpoint)
            parsers[setting] = parser
        label_values = [int(v) for v in parsers["baseline"].get_parsed_content("label_values")]
        if not parsers["baseline"].get_parsed_content("brats_regions") or len(label_values) != 4:
            raise ValueError(f"agreement.py scores the BraTS regions ET, TC and WT; presets {presets} are not a BraTS "
                             f"data set (`brats_regions`, `label_values`={label_values}).")
        per_case, seconds = [], {setting: [] for setting in settings}
        for i, case in enumerate(cases):
            maps = {}
            for setting, parser in parsers.items():
                run = diffmed_case_runner(parser, case["image"], amp=bool(parser.get_parsed_content("amp")))
                if i == 0:
                    run()  # warm-up: first-call allocations and kernel selection stay out of the times
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                maps[setting] = run()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                seconds[setting].append(time.perf_counter() - start)
            dice = region_dice(maps["baseline"], maps["variant"], label_values)
            voxels = {r: int(v.sum()) for r, v in brats_regions(maps["baseline"].cpu().numpy(), label_values).items()}
            per_case.append({**dice, "voxels_baseline": voxels})  # Dice 1 of two empty maps is no agreement
            logger.info("%s case %d/%d: Dice variant vs baseline %s (%.1f s / %.1f s)", name, i + 1, len(cases),
                        {k: round(v, 5) for k, v in dice.items()}, seconds["baseline"][-1], seconds["variant"][-1])
        entry = result["devices"][str(device)] = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
            "dice_min": {r: min(c[r] for c in per_case) for r in REGIONS},
            "dice_mean": {r: statistics.mean(c[r] for c in per_case) for r in REGIONS},
            "seconds_per_volume": {k: statistics.median(v) for k, v in seconds.items()},
            "per_case": per_case,
        }
        entry["speedup"] = entry["seconds_per_volume"]["baseline"] / entry["seconds_per_volume"]["variant"]
        if output:
            Path(output).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_report(result: dict) -> str:
    meta = result["meta"]
    lines = [f"{meta['cases']} cases, checkpoint {meta['checkpoint']}: variant {meta['variant']} against baseline "
             f"{meta['baseline']}", "",
             "| device | min Dice variant vs baseline ET / TC / WT | s/volume baseline | s/volume variant | speed-up |",
             "|---|---|---|---|---|"]
    for entry in result["devices"].values():
        dice = " / ".join(f"{entry['dice_min'][r]:.4f}" for r in REGIONS)
        s = entry["seconds_per_volume"]
        lines.append(f"| {entry['device']} | {dice} | {s['baseline']:.2f} | {s['variant']:.2f} | {entry['speedup']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    fire.Fire(parse_flags(measure), serialize=format_report)  # prints the table; the JSON goes to `output`
