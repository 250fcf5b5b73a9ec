#!/usr/bin/env python
"""Does the distillation carry anything from the teacher into the students? The ablation of docs/distillation.md.

    OMP_NUM_THREADS=1 python scripts/distillation_ablation.py --workdir ablation_run          # defaults below
    python scripts/distillation_ablation.py --workdir a --teacher_weights made/teacher_timm.pth --budget_s 120

One command: hard phantoms (``make_demo_dataset(..., difficulty="hard")``, the BraTS field of view 240 x 240 x 155 mm
at ``--spacing`` mm, seed ``--seed``: case seeds ``seed * 1000 + i``) split into a labelled pool (the first
``max(--labelled)``), an unlabelled pool (``--num_unlabelled``, written as the datalist's ``unlabelled`` list,
without labels) and ``--num_test`` held-out cases; a teacher made by ``scripts/make_teacher.py`` on its own pool of
phantoms (pool seed 24, disjoint) unless ``--teacher_weights`` is given. Then, for every number of labelled cases in
``--labelled`` and every seed in ``--seeds``, each variant is trained through the bundle's ``train.json`` +
``--presets`` with the real trainer for the same ``--budget_s`` seconds of process CPU time (``scripts/quality.py``'s
:class:`CPUTimeBudget`), segments the held-out cases through ``inference.json`` and is scored on the original grid
per BraTS region (Dice, HD95 in mm; ``scripts/quality.py``'s :func:`score_case`):

- ``no_kd``: (a) ``lambda_kd`` 0 (the KD loss is computed but weighs nothing);
- ``kd_random``: (b) the paper's diffusion KD from a randomly initialised teacher of the same architecture;
- ``reg_made`` / ``reg_made_unl``: (c) plain token regression (``kd_mode`` "regression": u0 regressed on the
  standardised teacher tokens, no denoiser in the KD loss) from the made teacher, without / with the unlabelled cases;
- ``diff_made`` / ``diff_made_unl``: (d) the paper's diffusion KD from the made teacher, without / with unlabelled;
- ``diff_feat_made_unl``: (d) plus the direct feature term (``lambda_feature`` 1, the fix of
  docs/distillation.md, "Diagnosis of the KD path"), with the unlabelled cases;
- ``swinunetr2d``: MONAI SwinUNETR-2D (``scripts/quality.py``'s peer), no teacher, labelled cases only.

Also the teacher's linear probe (``diffmed_monai.metrics.probe``: a linear map from the frozen tokens, fitted on
the same labelled cases, scored on the held-out ones at token resolution, i.e. not comparable voxel for voxel) for
the made teacher and its random twin. For the KD variants the mean cosine between the KD-trained student tokens and
the standardised teacher tokens over the whole run (:meth:`DiffMedLoss.agreement`) is kept too.

Every run's result is cached in ``<workdir>/runs/<variant>_L<n>_s<seed>/result.json`` (reused when the settings
match, so the command can be resumed); writes ``<workdir>/ablation.json`` and ``<workdir>/ablation.md`` (means and
standard deviations over seeds) and prints the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np
import torch

from diffmed_monai.cli import BUNDLE_DIR
from diffmed_monai.data import make_demo_dataset, scan_brats, write_datalist
from diffmed_monai.data.store import case_id_of
from diffmed_monai.transforms.io import output_path_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402  (scripts/quality.py: the budget, the peers, the scoring)

logger = logging.getLogger("distillation_ablation")

REGIONS = quality.REGIONS
LABEL_VALUES = (0, 1, 2, 4)

#: variant -> (table label, teacher: "made" | "random" | None, config overrides)
VARIANTS: dict[str, tuple[str, str | None, dict]] = {
    "no_kd": ("(a) no KD (lambda_kd 0)", "random", {"lambda_kd": 0.0, "use_unlabelled": False}),
    "kd_random": ("(b) diffusion KD, random teacher", "random", {"use_unlabelled": False}),
    "reg_made": ("(c) token regression, made teacher", "made", {"kd_mode": "regression", "use_unlabelled": False}),
    "reg_made_unl": ("(c) token regression, made teacher, + unlabelled", "made",
                     {"kd_mode": "regression", "use_unlabelled": True}),
    "diff_made": ("(d) diffusion KD, made teacher", "made", {"use_unlabelled": False}),
    "diff_made_unl": ("(d) diffusion KD, made teacher, + unlabelled", "made", {"use_unlabelled": True}),
    "diff_feat_made_unl": ("(d) + feature term (lambda_feature 1), made teacher, + unlabelled", "made",
                           {"lambda_feature": 1.0, "use_unlabelled": True}),
    "swinunetr2d": ("MONAI SwinUNETR-2D (reference, no teacher)", None, {"use_unlabelled": False}),
}


def make_data(data_dir: Path, num_labelled: int, num_unlabelled: int, num_test: int, spacing: float,
              seed: int) -> dict[str, list[dict]]:
    """Generate (or reuse) the hard phantoms; return ``{"labelled", "unlabelled", "test"}`` datalist entries."""
    total = num_labelled + num_unlabelled + num_test
    shape = [int(round(n / float(spacing))) for n in (240, 240, 155)]
    settings = {"total": total, "shape": shape, "spacing": float(spacing), "seed": int(seed), "difficulty": "hard"}
    marker = data_dir / "phantoms.json"
    if not (marker.is_file() and json.loads(marker.read_text()) == settings):
        logger.info("Generating %d hard phantoms of %s voxels at %s mm in %s", total, shape, spacing, data_dir)
        make_demo_dataset(str(data_dir), num_cases=total, shape=shape, spacing=(float(spacing),) * 3, seed=seed,
                          overwrite=True, skull_stripped=True, difficulty="hard")
        marker.write_text(json.dumps(settings))
    cases, _ = scan_brats(str(data_dir))
    cases = sorted(cases, key=case_id_of)[:total]
    pool = cases[num_labelled:num_labelled + num_unlabelled]
    unlabelled = [{k: v for k, v in c.items() if k != "label"} for c in pool]
    return {"labelled": cases[:num_labelled], "unlabelled": unlabelled, "test": cases[num_labelled + num_unlabelled:]}


def write_split(path: Path, split: dict[str, list[dict]], num_labelled: int) -> Path:
    """The datalist of one run: ``num_labelled`` training cases, the unlabelled list, the held-out cases (as
    ``testing`` and, never evaluated during training, ``validation``)."""
    if not path.is_file():
        write_datalist(str(path), split["labelled"][:num_labelled], split["test"][:1], test=split["test"],
                       unlabelled=split["unlabelled"])
    return path


def made_teacher(workdir: Path, teacher_weights: str | None, arch: str, spacing: float, roi_size: Sequence[int],
                 budget_s: float, steps: int, pool_cases: int) -> tuple[str, dict]:
    """The made teacher's weights file (``scripts/make_teacher.py`` run once into ``<workdir>/teacher``)."""
    if teacher_weights is not None:
        return str(teacher_weights), {"given": str(teacher_weights)}
    out = workdir / "teacher"
    if not (out / "teacher.json").is_file():
        import make_teacher

        make_teacher.main(output_dir=str(out), arch=arch, pixdim=float(spacing), roi_size=list(roi_size),
                          budget_s=float(budget_s), steps=int(steps), num_cases=int(pool_cases),
                          overwrite=out.exists())
    meta = json.loads((out / "teacher.json").read_text())
    keys = ("arch", "objective", "steps", "cpu_s", "pool_cases", "pool_case_seeds")
    return str(out / "teacher_timm.pth"), {k: meta.get(k) for k in keys}


def run_one(run_dir: Path, variant: str, common: dict, configs: Path, preset_files: list[str], test_cases: list[dict],
            data_dir: Path, budget_s: float, swinunetr_feature_size: int) -> dict:
    """Train one variant for ``budget_s`` CPU seconds, segment and score the held-out cases."""
    _, teacher_kind, overrides = VARIANTS[variant]
    train_override = dict(common, bundle_root=str(run_dir), resume=False, epochs=1_000_000, val_interval=1_000_000,
                          num_workers=0, **overrides)
    infer_override = {k: common[k] for k in ("dataset_dir", "datalist", "teacher_arch")}
    infer_override.update(bundle_root=str(run_dir), datalist_key="testing", overwrite=True, num_workers=0,
                          output_dir=str(run_dir / "predictions"), ckpt_path=str(run_dir / "models" / "model.pt"))
    if teacher_kind == "random":
        train_override.update(teacher_random_init=True, teacher_weights=None)
    if variant == "swinunetr2d":
        peer_train, peer_infer = quality._peer_overrides("swinunetr2d", (128, 128, 128), swinunetr_feature_size, 8)
        train_override.update(peer_train)
        infer_override.update(peer_infer)
    workflow = quality._workflow(BUNDLE_DIR, [str(configs / "train.json"), *preset_files], "train", **train_override)
    parser = workflow.parser
    budget = quality.CPUTimeBudget(budget_s)
    budget.attach(parser.get_parsed_content("train#trainer"))
    workflow.run()
    network = parser.get_parsed_content("network")
    ckpt = run_dir / "models" / "model.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), ckpt)
    agreement = parser.get_parsed_content("loss").agreement() if variant != "swinunetr2d" else {}
    workflow.finalize()
    inference = quality._workflow(BUNDLE_DIR, [str(configs / "inference.json"), *preset_files], "infer",
                                  **infer_override)
    inference.run()
    inference.finalize()
    per_case = {}
    for case in test_cases:
        case_id = case_id_of(case)
        label_path = case["label"] if os.path.isabs(case["label"]) else str(data_dir / case["label"])
        per_case[case_id] = quality.score_case(output_path_for(str(run_dir / "predictions"), case_id, "seg"),
                                               label_path, LABEL_VALUES)
    mean = {r: {k: float(np.mean([c[r][k] for c in per_case.values()])) for k in ("dice", "hd95")} for r in REGIONS}
    shutil.rmtree(run_dir / "predictions", ignore_errors=True)
    return {"training": budget.stats, "mean": mean, "agreement": agreement, "cases": per_case}


def _spread(values: Sequence[float], digits: int) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "n/a"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{np.mean(values):.{digits}f} ± {sd:.{digits}f}"


def summarise(runs: dict, probes: dict, settings: dict) -> str:
    """Markdown: one table per number of labelled cases, mean ± sd over seeds (sample sd)."""
    lines = [
        f"Hard phantoms at {settings['spacing']} mm, presets {settings['presets']}, {settings['num_test']} held-out "
        f"cases, {settings['num_unlabelled']} unlabelled, seeds {settings['seeds']}; each run {settings['budget_s']} s "
        f"of process CPU ({settings['threads']} torch thread(s), {settings['device']}). Mean ± sd over seeds.", "",
    ]
    for n in settings["labelled"]:
        lines += [f"**{n} labelled case(s)**", "",
                  "| variant | mean Dice | Dice ET / TC / WT | HD95 ET / TC / WT (mm) | steps | CPU s | agreement |",
                  "|---|---|---|---|---|---|---|"]
        for variant in settings["variants"]:
            results = [runs[(variant, n, s)] for s in settings["seeds"] if (variant, n, s) in runs]
            if not results:
                continue
            mean_dice = [float(np.mean([r["mean"][g]["dice"] for g in REGIONS])) for r in results]
            dice = " / ".join(_spread([r["mean"][g]["dice"] for r in results], 3) for g in REGIONS)
            hd = " / ".join(_spread([r["mean"][g]["hd95"] for r in results], 1) for g in REGIONS)
            steps = _spread([r["training"]["iterations"] for r in results], 0)
            cpu = _spread([r["training"]["cpu_s"] for r in results], 0)
            agree = [float(np.mean(list(r["agreement"].values()))) for r in results if r["agreement"]]
            lines.append(f"| {VARIANTS[variant][0]} | {_spread(mean_dice, 3)} | {dice} | {hd} | {steps} | {cpu} | "
                         f"{_spread(agree, 3) if agree else '-'} |")
        for name, label in (("teacher", "made teacher"), ("random", "random twin")):
            if n in probes:
                mean = probes[n][name]["mean"]
                lines.append(f"| linear probe of the {label}'s tokens (token resolution) | "
                             f"{probes[n][name]['mean_dice']:.3f} | "
                             + " / ".join(f"{mean[g]:.3f}" for g in REGIONS) + " | - | - | - | - |")
        lines.append("")
    lines.append("agreement: mean cosine, over the run's training batches and the modalities, between the KD-trained "
                 "student tokens and the standardised teacher tokens (of the run's own teacher).")
    return "\n".join(lines) + "\n"


def main(
    workdir: str = "ablation_run",
    labelled: Sequence[int] = (2, 8),
    labelled_pool: int | None = None,
    num_unlabelled: int = 16,
    num_test: int = 6,
    seeds: Sequence[int] = (0, 1),
    variants: Sequence[str] = tuple(VARIANTS),
    budget_s: float = 60.0,
    threads: int = 1,
    presets: Sequence[str] = ("tiny",),
    spacing: float = 2.0,
    slices_per_volume: int = 8,
    teacher_arch: str = "tiny",
    teacher_weights: str | None = None,
    teacher_budget_s: float = 300.0,
    teacher_steps: int = 2000,
    teacher_pool_cases: int = 16,
    roi_size: Sequence[int] = (96, 96),
    swinunetr_feature_size: int = 12,
    probe: bool = True,
    data_seed: int = 0,
) -> dict:
    """Run every variant for every number of labelled cases and seed; write and print the table.

    ``labelled_pool``: how many phantoms are set aside as the labelled pool (default ``max(labelled)``; give the
    full run's value to run a subset on the same unlabelled and held-out cases). ``spacing`` and ``roi_size`` must
    match the presets' ``pixdim`` and ``roi_size`` (the tiny preset: 2 mm,
    96 x 96); the made teacher is trained at the same scale.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(int(threads))
    labelled = [int(n) for n in ([labelled] if isinstance(labelled, int) else labelled)]
    seeds = [int(s) for s in ([seeds] if isinstance(seeds, int) else seeds)]
    variants = [variants] if isinstance(variants, str) else list(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"Unknown variants {unknown} (option --variants); choose from {list(VARIANTS)}.")
    presets = [presets] if isinstance(presets, str) else list(presets)
    configs = BUNDLE_DIR / "configs"
    preset_files = [str(p if str(p).endswith(".json") else configs / "presets" / f"{p}.json") for p in presets]
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data_dir = work / "data"
    pool = max(labelled) if labelled_pool is None else int(labelled_pool)
    if pool < max(labelled):
        raise ValueError(f"`labelled_pool` {pool} is smaller than the largest `labelled` count {max(labelled)}.")
    split = make_data(data_dir, pool, int(num_unlabelled), int(num_test), spacing, data_seed)
    weights, teacher_meta = made_teacher(work, teacher_weights, teacher_arch, spacing, roi_size, teacher_budget_s,
                                         teacher_steps, teacher_pool_cases)
    config_digest = hashlib.sha256(b"".join(
        Path(f).read_bytes() for f in [configs / "train.json", configs / "inference.json", *preset_files])).hexdigest()
    runs: dict = {}
    probes: dict = {}
    for n in labelled:
        datalist = write_split(data_dir / f"datalist_L{n}.json", split, n)
        if probe:
            from diffmed_monai.metrics.probe import probe_teacher

            probe_file = work / f"probe_L{n}.json"
            if not probe_file.is_file():
                probe_teacher(dataset_dir=str(data_dir), datalist=str(datalist), teacher_arch=teacher_arch,
                              teacher_weights=weights, pixdim=(float(spacing),) * 3, roi_size=roi_size,
                              label_values=LABEL_VALUES, eval_key="testing", num_fit=n, num_eval=int(num_test),
                              output=str(probe_file))
            probes[n] = json.loads(probe_file.read_text())
        for seed in seeds:
            for variant in variants:
                run_dir = work / "runs" / f"{variant}_L{n}_s{seed}"
                common = {"dataset_dir": str(data_dir), "datalist": str(datalist), "store_dir": str(work / "store"),
                          "teacher_arch": teacher_arch, "teacher_random_init": False, "teacher_weights": weights,
                          "seed": seed, "slices_per_volume": int(slices_per_volume)}
                key = {"configs": config_digest, "common": common, "budget_s": budget_s, "threads": threads,
                       "presets": presets, "variant": VARIANTS[variant][2], "swin": swinunetr_feature_size}
                result_file = run_dir / "result.json"
                if result_file.is_file() and json.loads(result_file.read_text()).get("key") == key:
                    runs[(variant, n, seed)] = json.loads(result_file.read_text())["result"]
                    continue
                logger.info("[%s, %d labelled, seed %d] training for %.0f CPU s", variant, n, seed, budget_s)
                result = run_one(run_dir, variant, common, configs, preset_files, split["test"], data_dir, budget_s,
                                 swinunetr_feature_size)
                run_dir.mkdir(parents=True, exist_ok=True)
                result_file.write_text(json.dumps({"key": key, "result": result}, indent=2))
                runs[(variant, n, seed)] = result
                logger.info("[%s, %d labelled, seed %d] %s, mean %s", variant, n, seed, result["training"],
                            {r: round(result["mean"][r]["dice"], 4) for r in REGIONS})
    settings = {
        "labelled": labelled, "num_unlabelled": int(num_unlabelled), "num_test": int(num_test), "seeds": seeds,
        "variants": variants, "budget_s": budget_s, "threads": threads, "presets": presets, "spacing": spacing,
        "slices_per_volume": slices_per_volume, "teacher_arch": teacher_arch, "teacher": teacher_meta,
        "device": f"CPU ({os.cpu_count()} logical cores visible), torch {torch.__version__}",
        "wall_s_total": round(time.perf_counter() - started, 1), "command": " ".join(sys.argv),
    }
    table = summarise(runs, probes, settings)
    report = {"settings": settings, "probe": {str(n): p for n, p in probes.items()},
              "runs": {f"{v}_L{n}_s{s}": r for (v, n, s), r in runs.items()}}
    (work / "ablation.json").write_text(json.dumps(report, indent=2))
    (work / "ablation.md").write_text(table)
    print(table, flush=True)
    return report


if __name__ == "__main__":
    fire.Fire(main, serialize=lambda report: None)  # the table is printed; the report is in ablation.json
