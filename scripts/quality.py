#!/usr/bin/env python
"""Segmentation quality at equal budget: DiffMed (the bundle as shipped) against MONAI SwinUNETR-2D and SegResNet-3D.

    python scripts/quality.py --workdir quality_run                      # 12 generated phantoms, 600 s per model
    python scripts/quality.py --workdir q --dataset_dir /data/brats --datalist /data/brats/datalist.json \\
        --presets "['cpu']" --budget_s 3600

Every model is trained through the bundle's own ``train.json`` (+ ``--presets``) from the same slice store (same
resampling, brain crop and normalisation), with the same loss family (Dice + CE), batch size, slice size and slice
sampling for the 2D models, for the same budget of **process CPU seconds** (``--threads`` torch threads, data
loading in the process: on a shared machine CPU time is the fair clock; wall time is reported beside it). The peers
replace ``network_def``, ``loss`` and ``train#trainer`` (a plain MONAI ``SupervisedTrainer``); SegResNet-3D also
reads 3D patches (``--patch_3d``) from the store's volumes. Every model then segments the held-out cases with the
bundle's ``inference.json`` (inverse resampling to the input grid), and the label maps are scored on the original
grid per case and region (ET, TC, WT): Dice, HD95 in mm (BraTS empty-case rule) and the number of false-positive
connected components (26-connected predicted components that touch no reference voxel of the region).

Without ``--dataset_dir`` it generates ``--num_cases`` BraTS-2021-layout phantoms of 240 x 240 x 155 voxels at 1 mm,
by default the hard ones (``--difficulty hard``: textured, partly non-enhancing, multifocal lesions, oedema fading
into the background, T1c look-alikes, thick T2/FLAIR slices, misregistration, docs/distillation.md; ``--difficulty
easy``: the earlier phantoms with thin enhancing rims, ``--rim_mm``), skull-stripped as BraTS images are (zero
outside the intracranial space; ``--skull_stripped False`` keeps scalp and skull), the last ``--num_test`` held out. With
``--dataset_dir`` the datalist's ``training`` cases train and its ``--test_key`` cases (with labels) are scored.
There are no DINOv3 weights offline: ``--teacher tiny`` (default) distils from a tiny RANDOMLY INITIALISED teacher,
so this measures the students, denoisers, decoder and recipe, not distillation; ``--teacher vits16 --teacher_weights
PATH`` uses a real one.

Each model's result is kept in ``<workdir>/<model>/result.json``; a rerun with the same settings reuses it (so models
can also be run one per process, ``--models "['swinunetr2d']"``, and a last call with all of them writes the
table). Writes ``<workdir>/quality.json`` (settings, per-model training cost, per-case and mean scores) and
``<workdir>/quality.md`` (the table), and prints the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import fire
import nibabel as nib
import numpy as np
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.metrics import compute_dice
from scipy import ndimage

from diffmed_monai.cli import BUNDLE_DIR, PRESETS_DIR
from diffmed_monai.data import make_demo_dataset, prepare_datalist
from diffmed_monai.utils import parse_flags
from diffmed_monai.data import case_id_of
from diffmed_monai.metrics import HausdorffDistance95
from diffmed_monai.transforms.io import output_path_for

logger = logging.getLogger("quality")

MODELS = ("diffmed", "swinunetr2d", "segresnet3d")
REGIONS = ("et", "tc", "wt")

#: peers' config overrides (merged over train.json + presets); ``@`` references resolve in the bundle's configs
_SUPERVISED_TRAINER = {
    "_target_": "SupervisedTrainer",
    "max_epochs": "@epochs",
    "device": "@device",
    "train_data_loader": "@train#dataloader",
    "network": "@network",
    "loss_function": "@loss",
    "optimizer": "@optimizer",
    "inferer": {"_target_": "SimpleInferer"},
    "postprocessing": "@train#postprocessing",
    "key_train_metric": "@train#key_metric",
    "amp": "@amp",
}
_DICE_CE = {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True}


def _peer_overrides(model: str, patch_3d: Sequence[int], feature_size: int, init_filters: int) -> tuple[dict, dict]:
    """``(training overrides, inference overrides)`` of a MONAI peer."""
    if model == "swinunetr2d":
        net = {
            "_target_": "SwinUNETR", "in_channels": "$len(@modalities)", "out_channels": "@num_classes",
            "feature_size": feature_size, "spatial_dims": 2,
        }
        # SwinUNETR-2D needs slices divisible by 32 (four patch mergings after the stride-2 embedding) and at least
        # 2 x 2 at its deepest level (instance norm), so it runs whole slices of the brain's box, as MONAI would,
        # not DiffMed's per-slice boxes of 16-px tiles
        train = {"network_def": net, "loss": _DICE_CE, "train#trainer": _SUPERVISED_TRAINER, "crop_slices": False}
        infer = {"network_def": net, "pad_to_network": {"_target_": "DivisiblePadd", "keys": "image", "k": [32, 32, 1]},
                 "crop_slices": False}
        return train, infer
    if model == "segresnet3d":  # the brats_mri_segmentation bundle's network, narrower
        net = {
            "_target_": "SegResNet", "spatial_dims": 3, "in_channels": "$len(@modalities)",
            "out_channels": "@num_classes", "init_filters": init_filters, "blocks_down": [1, 2, 2, 4],
            "blocks_up": [1, 1, 1], "dropout_prob": 0.2,
        }
        patch = [int(p) for p in patch_3d]
        volume_transforms = [
            "@train#ensure_type",
            {"_target_": "SpatialPadd", "keys": ["image", "label"], "spatial_size": patch},
            {"_target_": "RandSpatialCropd", "keys": ["image", "label"], "roi_size": patch, "random_size": False},
            *({"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": a} for a in range(3)),
            {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5},
            {"_target_": "RandShiftIntensityd", "keys": "image", "offsets": 0.1, "prob": 0.5},
        ]
        train = {
            "network_def": net,
            "loss": _DICE_CE,
            "train#trainer": _SUPERVISED_TRAINER,
            "train#dataset": {
                "_target_": "diffmed_monai.data.StoreVolumeDataset", "data": "@train#datalist",
                "store": "@prepared_store",
                "transform": {"_target_": "Compose", "transforms": volume_transforms},
                "base_dir": "@dataset_dir", "datalist_key": "train#datalist",
            },
            "train#sampler": {"_target_": "torch.utils.data.RandomSampler", "data_source": "@train#dataset", "replacement": True,
                              "num_samples": 1_000_000},
            "batch_size": 1,
        }
        infer = {
            "network_def": net,
            "inferer": {"_target_": "SlidingWindowInferer", "roi_size": patch, "sw_batch_size": 1, "overlap": 0.5},
        }
        return train, infer
    raise ValueError(f"Unknown model {model!r}; use one of {MODELS}.")


class CPUTimeBudget:
    """Stop an Ignite engine once its process has used ``seconds`` of CPU time since the engine started.

    Counts ``time.process_time()`` (all threads of this process, data loading included when ``num_workers`` is 0);
    records ``cpu_s``, ``wall_s``, ``iterations`` when training ends.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.stats: dict = {}

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._check)
        engine.add_event_handler(Events.COMPLETED, self._record)

    def _start(self, engine) -> None:
        self._cpu0, self._wall0, self._it0 = time.process_time(), time.perf_counter(), engine.state.iteration

    def _check(self, engine) -> None:
        if time.process_time() - self._cpu0 >= self.seconds:
            engine.terminate()

    def _record(self, engine) -> None:
        self.stats = {
            "cpu_s": round(time.process_time() - self._cpu0, 1),
            "wall_s": round(time.perf_counter() - self._wall0, 1),
            "iterations": engine.state.iteration - self._it0,
            "epochs": engine.state.epoch,
        }


def _workflow(bundle: Path, configs: list[str], workflow_type: str, **override) -> ConfigWorkflow:
    workflow = ConfigWorkflow(
        config_file=configs, meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"), workflow_type=workflow_type, **override,
    )
    workflow.initialize()
    return workflow


def train_for_budget(bundle: Path, configs: list[str], budget_s: float, run_dir: Path,
                     **override) -> tuple[ConfigParser, CPUTimeBudget]:
    """Train the bundle of ``configs`` (with ``override``) until ``budget_s`` CPU seconds are spent, write the network's
    ``state_dict`` to ``<run_dir>/models/model.pt`` (what ``inference.json`` reads); return the parser (its objects
    stay usable) and the budget (``stats``: steps, CPU seconds)."""
    workflow = _workflow(bundle, configs, "train", **override)
    parser = workflow.parser
    budget = CPUTimeBudget(budget_s)
    budget.attach(parser.get_parsed_content("train#trainer"))
    workflow.run()
    ckpt = run_dir / "models" / "model.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network").state_dict(), ckpt)
    workflow.finalize()
    return parser, budget


def brats_regions(label: np.ndarray, label_values: Sequence[int]) -> dict[str, np.ndarray]:
    """BraTS regions of a label map with values ``label_values`` (background, necrosis, oedema, enhancing)."""
    _, necrosis, _, enhancing = (int(v) for v in label_values)
    return {"et": label == enhancing, "tc": np.isin(label, (necrosis, enhancing)), "wt": label > 0}


def _false_positive_components(pred: np.ndarray, ref: np.ndarray) -> int:
    components, count = ndimage.label(pred, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return 0
    touching = np.unique(components[ref & (components > 0)])
    return int(count - len(touching))


def score_case(pred_path: str, label_path: str, label_values: Sequence[int]) -> dict:
    """Dice, HD95 (mm) and false-positive component count per region of one case, on the label's own grid."""
    label_img, pred_img = nib.load(label_path), nib.load(pred_path)
    if pred_img.shape != label_img.shape or not np.allclose(pred_img.affine, label_img.affine, atol=1e-4):
        raise ValueError(f"{pred_path} is not on the grid of {label_path} (shape or affine differ).")
    label = np.asarray(label_img.dataobj).astype(np.int64)
    pred = np.asarray(pred_img.dataobj).astype(np.int64)
    spacing = [float(s) for s in label_img.header.get_zooms()[:3]]
    hd95 = HausdorffDistance95(spacing=spacing, empty="brats")
    scores = {}
    regions = zip(brats_regions(pred, label_values).values(), brats_regions(label, label_values).values())
    for name, (p, r) in zip(REGIONS, regions):
        p_t, r_t = torch.as_tensor(p)[None, None], torch.as_tensor(r)[None, None]
        dice = float(compute_dice(p_t, r_t, include_background=True, ignore_empty=False))  # both empty: 1 (BraTS)
        distance = hd95(p_t, r_t)
        scores[name] = {"dice": dice, "hd95": float(distance.item()), "fp_components": _false_positive_components(p, r)}
        hd95.reset()
    return scores


def _make_phantoms(data_dir: Path, num_cases: int, num_test: int, shape, rim_mm, skull_stripped: bool,
                   seed: int, difficulty: str = "hard") -> Path:
    """Generate (or reuse, when made with the same settings) the phantoms and their datalist."""
    settings = {"num_cases": num_cases, "num_test": num_test, "shape": list(shape), "rim_mm": list(rim_mm),
                "skull_stripped": bool(skull_stripped), "seed": seed, "difficulty": difficulty}
    marker = data_dir / "phantoms.json"
    datalist = data_dir / "datalist.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings and datalist.is_file():
        logger.info("Reusing the phantoms in %s", data_dir)
        return datalist
    logger.info("Generating %d phantoms of %s voxels at 1 mm in %s", num_cases, list(shape), data_dir)
    make_demo_dataset(str(data_dir), num_cases=num_cases, shape=shape, spacing=(1.0, 1.0, 1.0), seed=seed,
                      overwrite=True, rim_mm=rim_mm, skull_stripped=skull_stripped, difficulty=difficulty)
    datalist.unlink(missing_ok=True)
    path = prepare_datalist("brats", str(data_dir), output=str(datalist), val_fraction=num_test / num_cases, seed=seed)
    marker.write_text(json.dumps(settings))
    return Path(path)


def _markdown(results: dict, settings: dict) -> str:
    lines = [
        f"Budget {settings['budget_s']} s of process CPU per model, {settings['threads']} torch thread(s), "
        f"{settings['device']}; {len(settings['test_cases'])} held-out cases, scored on their original grid.",
        "",
        "| model | steps (CPU s / wall s) | Dice ET / TC / WT | HD95 ET / TC / WT (mm) | false-positive components ET / TC / WT |",
        "|---|---|---|---|---|",
    ]
    for model, res in results.items():
        mean = res["mean"]
        cost = res["training"]
        dice = " / ".join(f"{mean[r]['dice']:.4f}" for r in REGIONS)
        hd = " / ".join(f"{mean[r]['hd95']:.1f}" for r in REGIONS)
        fp = " / ".join(f"{mean[r]['fp_components']:.1f}" for r in REGIONS)
        lines.append(f"| {res['label']} | {cost['iterations']} ({cost['cpu_s']} / {cost['wall_s']}) | {dice} | {hd} | {fp} |")
    return "\n".join(lines) + "\n"


def main(
    workdir: str = "quality_run",
    dataset_dir: str | None = None,
    datalist: str | None = None,
    test_key: str = "testing",
    presets: Sequence[str] = ("cpu",),
    models: Sequence[str] = MODELS,
    budget_s: float = 600.0,
    threads: int = 1,
    num_cases: int = 12,
    num_test: int = 4,
    shape: Sequence[int] = (240, 240, 155),
    rim_mm: Sequence[float] = (2.0, 5.0),
    skull_stripped: bool = True,
    difficulty: str = "hard",
    slices_per_volume: int = 32,
    teacher: str = "tiny",
    teacher_weights: str | None = None,
    swinunetr_feature_size: int = 12,
    segresnet_init_filters: int = 8,
    patch_3d: Sequence[int] = (128, 128, 128),
    seed: int = 0,
    bundle_dir: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """Train every model in ``models`` for ``budget_s`` CPU seconds, segment the held-out cases, score them.

    ``difficulty``: the generated phantoms, ``"hard"`` (default; docs/distillation.md) or ``"easy"`` (the phantoms of
    the first quality table, where every model that trains scores about 0.99).
    ``overrides``: extra config overrides for DiffMed only (e.g. ``"{'network_def#decoder_dim': 64}"``) to compare
    variants. Returns the results dict also written to ``<workdir>/quality.json``.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(int(threads))
    bundle = Path(bundle_dir) if bundle_dir else BUNDLE_DIR
    configs = bundle / "configs"
    presets = [presets] if isinstance(presets, str) else list(presets)
    preset_files = [str(p if str(p).endswith(".json") else PRESETS_DIR / f"{p}.json") for p in presets]
    models = [models] if isinstance(models, str) else list(models)
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if dataset_dir is None:
        data_dir = work / "data"
        datalist_path = _make_phantoms(data_dir, int(num_cases), int(num_test), shape, rim_mm, skull_stripped, seed,
                                       difficulty)
        label_values = (0, 1, 2, 4)
    else:
        data_dir = Path(dataset_dir).resolve()
        datalist_path = Path(datalist) if datalist else data_dir / "datalist.json"
        label_values = None
    test_cases = json.loads(datalist_path.read_text())[test_key]
    common = {
        "dataset_dir": str(data_dir), "datalist": str(datalist_path), "store_dir": str(work / "store"),
        "teacher_arch": teacher, "teacher_random_init": teacher_weights is None, "teacher_weights": teacher_weights,
        "seed": seed,
    }
    if teacher_weights is None:
        logger.info("Teacher %r RANDOMLY INITIALISED (no DINOv3 weights given): distillation is not measured.", teacher)
    config_digest = hashlib.sha256(
        b"".join(Path(f).read_bytes() for f in [configs / "train.json", configs / "inference.json", *preset_files])
    ).hexdigest()
    results: dict = {}
    for model in models:
        run_dir = work / model
        key = {
            "configs": config_digest,
            "budget_s": budget_s, "threads": threads, "presets": presets, "teacher": teacher, "data": str(data_dir),
            "difficulty": difficulty if dataset_dir is None else None,
            "test_cases": [case_id_of(c) for c in test_cases], "slices_per_volume": slices_per_volume, "seed": seed,
            "model_options": overrides or {} if model == "diffmed" else
            [swinunetr_feature_size] if model == "swinunetr2d" else [segresnet_init_filters, list(patch_3d)],
        }
        result_file = run_dir / "result.json"
        if result_file.is_file():
            saved = json.loads(result_file.read_text())
            if saved.get("key") == json.loads(json.dumps(key)):
                logger.info("[%s] reusing the result of an earlier run with the same settings: %s", model, result_file)
                results[model] = saved["result"]
                continue
        train_override = dict(common, bundle_root=str(run_dir), resume=False, epochs=1_000_000,
                              val_interval=1_000_000, slices_per_volume=int(slices_per_volume), num_workers=0)
        infer_override = {k: common[k] for k in ("dataset_dir", "datalist", "teacher_arch")}
        infer_override.update(bundle_root=str(run_dir), datalist_key=test_key, overwrite=True, num_workers=0,
                              output_dir=str(run_dir / "predictions"), ckpt_path=str(run_dir / "models" / "model.pt"))
        if model == "diffmed":
            train_override.update(overrides or {})
            infer_override.update({k: v for k, v in (overrides or {}).items() if k.startswith("network_def")})
            label = f"DiffMed ({', '.join(presets)})"
        else:
            peer_train, peer_infer = _peer_overrides(model, patch_3d, swinunetr_feature_size, segresnet_init_filters)
            train_override.update(peer_train)
            infer_override.update(peer_infer)
            label = {"swinunetr2d": f"MONAI SwinUNETR-2D (feature_size {swinunetr_feature_size})",
                     "segresnet3d": f"MONAI SegResNet-3D (init_filters {segresnet_init_filters})"}[model]
        logger.info("[%s] training for %.0f CPU seconds", model, budget_s)
        parser, budget = train_for_budget(bundle, [str(configs / "train.json"), *preset_files], budget_s, run_dir,
                                          **train_override)
        if label_values is None:
            label_values = [int(v) for v in parser.get_parsed_content("label_values")]
        logger.info("[%s] trained: %s", model, budget.stats)

        logger.info("[%s] segmenting %d held-out case(s)", model, len(test_cases))
        started = time.perf_counter()
        inference = _workflow(bundle, [str(configs / "inference.json"), *preset_files], "infer", **infer_override)
        inference.run()
        inference.finalize()
        infer_s = time.perf_counter() - started
        per_case = {}
        for case in test_cases:
            case_id = case_id_of(case)
            label_path = case["label"] if os.path.isabs(case["label"]) else str(data_dir / case["label"])
            pred_path = output_path_for(str(run_dir / "predictions"), case_id, "seg")
            per_case[case_id] = score_case(pred_path, label_path, label_values)
        mean = {r: {k: float(np.mean([c[r][k] for c in per_case.values()])) for k in ("dice", "hd95", "fp_components")}
                for r in REGIONS}
        results[model] = {"label": label, "training": budget.stats, "inference_s": round(infer_s, 1),
                          "mean": mean, "cases": per_case}
        result_file.write_text(json.dumps({"key": key, "result": results[model]}, indent=2))
        logger.info("[%s] mean %s", model, mean)
    settings = {
        "budget_s": budget_s, "threads": threads, "presets": presets, "models": models, "teacher": teacher,
        "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else
                   f"CPU ({os.cpu_count()} logical cores visible)") + f", torch {torch.__version__}",
        "data": str(data_dir), "difficulty": difficulty if dataset_dir is None else None,
        "test_cases": [case_id_of(c) for c in test_cases], "overrides": overrides or {},
        "slices_per_volume": slices_per_volume, "command": " ".join(sys.argv),
    }
    report = {"settings": settings, "results": results}
    (work / "quality.json").write_text(json.dumps(report, indent=2))
    table = _markdown(results, settings)
    (work / "quality.md").write_text(table)
    print(table, flush=True)
    return report


if __name__ == "__main__":
    fire.Fire(parse_flags(main), serialize=lambda report: None)  # the table is printed; the report is in quality.json
