#!/usr/bin/env python
"""Does the distillation carry anything from the teacher into the students? The ablation of docs/distillation.md.

    OMP_NUM_THREADS=1 python scripts/distillation_ablation.py --workdir ablation_run          # defaults below
    python scripts/distillation_ablation.py --workdir a --teacher_weights made/teacher_timm.pth --budget_s 120
    python scripts/distillation_ablation.py --workdir ablation_run --train_missing False   # table of cached runs
    python scripts/distillation_ablation.py probe_students --workdir ablation_run --labelled 2 --fit_cases 8
    python scripts/distillation_ablation.py diagnose --workdir ablation_run                 # the KD-path measurements

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

from diffmed_monai.cli import BUNDLE_DIR, PRESETS_DIR
from diffmed_monai.data import make_demo_dataset, scan_brats, write_datalist
from diffmed_monai.data.demo import DEMO_MODALITIES as DEMO_MODALITIES_ORDER
from diffmed_monai.data import case_id_of
from diffmed_monai.transforms.io import output_path_for
from diffmed_monai.utils import parse_flags

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


def teacher_probe(work: Path, split: dict[str, list[dict]], n: int, teacher_arch: str, weights: str,
                  spacing: float, roi_size: Sequence[int], num_test: int) -> dict:
    """The linear probe of the teacher and its random twin fitted on the first ``n`` labelled cases, scored on the
    held-out ones (``<work>/probe_L<n>.json``, computed once)."""
    probe_file = work / f"probe_L{n}.json"
    if not probe_file.is_file():
        from diffmed_monai.metrics.probe import probe_teacher

        datalist = write_split(work / "data" / f"datalist_L{n}.json", split, n)
        probe_teacher(dataset_dir=str(work / "data"), datalist=str(datalist), teacher_arch=teacher_arch,
                      teacher_weights=weights, pixdim=(float(spacing),) * 3, roi_size=roi_size,
                      label_values=LABEL_VALUES, eval_key="testing", num_fit=n, num_eval=int(num_test),
                      output=str(probe_file))
    return json.loads(probe_file.read_text())


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
    parser, budget = quality.train_for_budget(BUNDLE_DIR, [str(configs / "train.json"), *preset_files], budget_s,
                                              run_dir, **train_override)
    agreement = parser.get_parsed_content("loss").agreement() if variant != "swinunetr2d" else {}
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


def _mean_dice(result: dict) -> float:
    return float(np.mean([result["mean"][g]["dice"] for g in REGIONS]))


def _mean_fp(result: dict, region: str) -> float:
    """Mean over the held-out cases of the predicted components of ``region`` that touch no reference voxel."""
    return float(np.mean([case[region]["fp_components"] for case in result["cases"].values()]))


def summarise(runs: dict, probes: dict, settings: dict) -> str:
    """Markdown: one table per number of labelled cases, mean ± sd over seeds (sample sd).

    ``Δ vs (a)``: the mean Dice minus that of ``no_kd`` with the same labelled cases and seed (same initialisation
    and slice order), mean ± sd over the seeds both ran: the paired comparison. Each run's mean Dice per seed is
    listed under the table.
    """
    lines = [
        f"Hard phantoms at {settings['spacing']} mm, presets {settings['presets']}, {settings['num_test']} held-out "
        f"cases, {settings['num_unlabelled']} unlabelled, seeds {settings['seeds']}; each run {settings['budget_s']} s "
        f"of process CPU ({settings['threads']} torch thread(s), {settings['device']}). Mean ± sd over seeds.", "",
    ]
    for n in settings["labelled"]:
        lines += [f"**{n} labelled case(s)**", "",
                  "| variant | seeds | mean Dice | Δ vs (a) | Dice ET / TC / WT | HD95 ET / TC / WT (mm) "
                  "| false-positive components ET / TC / WT | steps | CPU s | agreement |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        per_seed = []
        for variant in settings["variants"]:
            seeds = [s for s in settings["seeds"] if (variant, n, s) in runs]
            results = [runs[(variant, n, s)] for s in seeds]
            if not results:
                continue
            mean_dice = [_mean_dice(r) for r in results]
            paired = [_mean_dice(runs[(variant, n, s)]) - _mean_dice(runs[("no_kd", n, s)])
                      for s in seeds if ("no_kd", n, s) in runs]
            delta = "-" if variant == "no_kd" or not paired else _spread(paired, 3)
            dice = " / ".join(_spread([r["mean"][g]["dice"] for r in results], 3) for g in REGIONS)
            hd = " / ".join(_spread([r["mean"][g]["hd95"] for r in results], 1) for g in REGIONS)
            fp = " / ".join(_spread([_mean_fp(r, g) for r in results], 1) for g in REGIONS)
            steps = _spread([r["training"]["iterations"] for r in results], 0)
            cpu = _spread([r["training"]["cpu_s"] for r in results], 0)
            agree = [float(np.mean(list(r["agreement"].values()))) for r in results if r["agreement"]]
            lines.append(f"| {VARIANTS[variant][0]} | {len(seeds)} | {_spread(mean_dice, 3)} | {delta} | {dice} | {hd} "
                         f"| {fp} | {steps} | {cpu} | {_spread(agree, 3) if agree else '-'} |")
            per_seed.append(f"{variant} " + ", ".join(f"s{s} {d:.3f}" for s, d in zip(seeds, mean_dice)))
        for name, label in (("teacher", "made teacher"), ("random", "random twin")):
            if n in probes:
                mean = probes[n][name]["mean"]
                lines.append(f"| linear probe of the {label}'s tokens (token resolution) | "
                             f"- | {probes[n][name]['mean_dice']:.3f} | - | "
                             + " / ".join(f"{mean[g]:.3f}" for g in REGIONS) + " | - | - | - | - | - |")
        lines += ["", "Mean Dice per seed: " + "; ".join(per_seed) + ".", ""]
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
    budget_s: float = 240.0,
    threads: int = 1,
    presets: Sequence[str] = ("tiny",),
    spacing: float = 2.0,
    slices_per_volume: int = 8,
    teacher_arch: str = "tiny",
    teacher_weights: str | None = None,
    teacher_budget_s: float = 600.0,
    teacher_steps: int = 3000,
    teacher_pool_cases: int = 16,
    roi_size: Sequence[int] = (96, 96),
    swinunetr_feature_size: int = 12,
    probe: bool = True,
    data_seed: int = 0,
    train_missing: bool = True,
) -> dict:
    """Run every variant for every number of labelled cases and seed; write and print the table.

    ``train_missing`` False trains nothing: the table is written from the runs already cached in ``workdir`` (e.g.
    by several processes that each ran a part; missing runs are listed and left out of the means).

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
    preset_files = [str(p if str(p).endswith(".json") else PRESETS_DIR / f"{p}.json") for p in presets]
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
    missing: list[str] = []
    for n in labelled:
        datalist = write_split(data_dir / f"datalist_L{n}.json", split, n)
        if probe:
            probes[n] = teacher_probe(work, split, n, teacher_arch, weights, spacing, roi_size, num_test)
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
                if not train_missing:
                    missing.append(run_dir.name)
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
        "wall_s_total": round(time.perf_counter() - started, 1), "command": " ".join(sys.argv), "missing": missing,
    }
    table = summarise(runs, probes, settings)
    if missing:
        table += f"\nNot run (left out of the means): {', '.join(missing)}.\n"
    report = {"settings": settings, "probe": {str(n): p for n, p in probes.items()},
              "runs": {f"{v}_L{n}_s{s}": r for (v, n, s), r in runs.items()}}
    (work / "ablation.json").write_text(json.dumps(report, indent=2))
    (work / "ablation.md").write_text(table)
    print(table, flush=True)
    return report


# ------------------------------------------------------------------------------------------------ KD path diagnosis
def _seg_labels(regions: torch.Tensor) -> torch.Tensor:
    """``(S, 3, H, W)`` ET/TC/WT masks -> ``(S, 1, H, W)`` classes 0 bg, 1 necrosis, 2 oedema, 3 enhancing."""
    et, tc, wt = regions[:, 0].bool(), regions[:, 1].bool(), regions[:, 2].bool()
    label = torch.zeros_like(et, dtype=torch.long)
    label[wt] = 2
    label[tc] = 1
    label[et] = 3
    return label[:, None]


def _group_grad_norms(value: torch.Tensor, net: torch.nn.Module) -> dict[str, float]:
    groups = {
        "students": [p for n, p in net.named_parameters() if "student" in n],
        "fusion+projection": [p for n, p in net.named_parameters() if n.startswith(("fusion", "projection"))],
        "denoisers": [p for n, p in net.named_parameters() if n.startswith("denoisers")],
        "decoder": [p for n, p in net.named_parameters() if n.startswith("decoder")],
    }
    out = {}
    for name, params in groups.items():
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        out[name] = round(sum(float(g.pow(2).sum()) for g in grads if g is not None) ** 0.5, 4)
    return out


def _ridge_r2(x_fit: torch.Tensor, y_fit: torch.Tensor, x_eval: torch.Tensor, y_eval: torch.Tensor) -> float:
    """R^2 on held-out tokens of a ridge map ``x -> y`` (rows are tokens), fitted on the fit tokens."""
    mean, std = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
    a = torch.cat([(x_fit - mean) / std, torch.ones(len(x_fit), 1)], 1).double()
    b = torch.cat([(x_eval - mean) / std, torch.ones(len(x_eval), 1)], 1).double()
    w = torch.linalg.solve(a.T @ a + 1.0 * torch.eye(a.shape[1], dtype=a.dtype), a.T @ y_fit.double())
    residual = ((b @ w - y_eval.double()) ** 2).sum()
    return float(1 - residual / ((y_eval.double() - y_eval.double().mean(0)) ** 2).sum())


def token_content(tokens: torch.Tensor, fractions: torch.Tensor) -> list[dict]:
    """What per-channel standardisation makes of a teacher's tokens, per modality.

    ``tokens`` ``(S, M, d, h, w)``, ``fractions`` ``(S, 3, h, w)`` (ET / TC / WT share of each patch). For each
    modality: the ratio of the largest to the smallest channel standard deviation (standardisation gives every
    channel equal weight in the KD loss), and the share of the tokens' variance a linear map from the region
    fractions explains, before and after standardisation (R^2; the part of the KD target that is about the regions).
    """
    rows = fractions.permute(0, 2, 3, 1).reshape(-1, fractions.shape[1]).double()
    design = torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype)], 1)

    def explained(y: torch.Tensor) -> float:
        residual = y - design @ torch.linalg.lstsq(design, y).solution
        return round(float(1 - residual.pow(2).sum() / (y - y.mean(0)).pow(2).sum()), 4)

    out = []
    for m in range(tokens.shape[1]):
        y = tokens[:, m].permute(0, 2, 3, 1).reshape(-1, tokens.shape[2]).double()
        std = y.std(0).clamp_min(1e-6)
        out.append({"channel_std_max_over_min": round(float(std.max() / std.min()), 2),
                    "r2_regions_raw": explained(y), "r2_regions_standardised": explained((y - y.mean(0)) / std)})
    return out


def diagnose(
    workdir: str = "ablation_run",
    teacher_weights: str | None = None,
    teacher_arch: str = "tiny",
    steps: int = 150,
    batch_size: int = 4,
    learning_rate: float = 2e-3,
    modes: Sequence[str] = ("seg_only", "diffusion", "diffusion_feature", "regression"),
    spacing: float = 2.0,
    roi_size: Sequence[int] = (96, 96),
    slice_step: int = 2,
    threads: int = 1,
    seed: int = 0,
    labelled_pool: int = 8,
    num_unlabelled: int = 16,
    num_test: int = 6,
) -> dict:
    """Measurements behind docs/distillation.md, "Diagnosis of the KD path", on the ablation's hard phantoms.

    ``python scripts/distillation_ablation.py diagnose --workdir ablation_run`` (after a run made the data and
    teacher there). The tiny-preset network is trained ``steps`` steps on the labelled pool's slices with Dice-CE +
    each KD mode, then measured on the held-out cases' slices: (1) gradient norms of each loss part per parameter
    group, at initialisation and after training; (2) the norm of the KD gradient reaching u0 through the noisy path
    per timestep; (3) agreement with the standardised teacher tokens Z: mean cosine of u0 and of D(u0, seg_timestep)
    with Z, and the held-out R^2 of a ridge map from the fused student features (before the projection) to Z, i.e.
    how much of the teacher's information the students themselves carry; (4) :func:`token_content` of the made
    teacher and of a random one on the held-out slices (``modes`` may be empty for this alone). Writes
    ``<workdir>/diagnosis.json``.
    """
    from diffmed_monai.losses import DiffMedLoss
    from diffmed_monai.metrics.probe import load_probe_slices, token_fractions
    from diffmed_monai.networks import DiffMedDINOv3, DINOv3Teacher

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(int(threads))
    work = Path(workdir).resolve()
    split = make_data(work / "data", int(labelled_pool), int(num_unlabelled), int(num_test), spacing, 0)
    weights = teacher_weights or str(work / "teacher" / "teacher_timm.pth")
    teacher = DINOv3Teacher(weights, arch=teacher_arch)
    common = {"pixdim": (float(spacing),) * 3, "roi_size": roi_size, "slice_step": int(slice_step)}
    fit = load_probe_slices(split["labelled"], str(work / "data"), **common)
    held = load_probe_slices(split["test"], str(work / "data"), **common)
    x_fit, y_fit = torch.cat([s for s, _ in fit]), _seg_labels(torch.cat([r for _, r in fit]))
    x_eval = torch.cat([s for s, _ in held])
    z_fit, z_eval = teacher(x_fit), teacher(x_eval)
    preset = json.loads((PRESETS_DIR / "tiny.json").read_text())
    net_kwargs = {k.split("#", 1)[1]: v for k, v in preset.items() if k.startswith("network_def#")}
    report: dict = {"settings": {"teacher": weights, "steps": steps, "batch_size": batch_size, "lr": learning_rate,
                                 "fit_slices": len(x_fit), "eval_slices": len(x_eval), "seed": seed}}
    torch.manual_seed(seed)
    random_teacher = DINOv3Teacher(None, arch=teacher_arch, random_init=True)
    held_fractions = torch.cat([token_fractions(r) for _, r in held])
    report["token_content"] = {"made": token_content(z_eval, held_fractions),
                               "random": token_content(random_teacher(x_eval), held_fractions)}

    def fused(net, x):
        b, m, h, w = x.shape
        _, _, a16 = net.shared_student(x.reshape(b * m, 1, h, w))
        h16 = torch.stack([s(x[:, i:i + 1])[2] for i, s in enumerate(net.specific_students)], 1).flatten(0, 1)
        f = net.fusion(a16, h16)  # (B*M, C, h, w)
        return f.unflatten(0, (b, m))  # (B, M, C, h, w)

    def tokens_rows(t, modality):  # (B, M, C, h, w) -> (B*h*w, C) of one modality
        return t[:, modality].permute(0, 2, 3, 1).reshape(-1, t.shape[2])

    for mode in modes:
        torch.manual_seed(seed)
        net = DiffMedDINOv3(modalities=list(DEMO_MODALITIES_ORDER), num_classes=4, teacher_dim=z_fit.shape[2],
                            **{**net_kwargs, "batched": False})  # students called in turn: fused() reads each
        kd_mode = "regression" if mode == "regression" else "diffusion"
        loss = DiffMedLoss(4, z_fit.shape[2], lambda_kd=0.0 if mode == "seg_only" else 1.0, kd_mode=kd_mode,
                           lambda_feature=1.0 if mode == "diffusion_feature" else 0.0)
        optim = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
        generator = torch.Generator().manual_seed(seed)
        entry: dict = {}
        for step in range(int(steps) + 1):
            idx = torch.randint(len(x_fit), (batch_size,), generator=generator)
            out = net(x_fit[idx], return_training_outputs=True)
            parts = loss(out, y_fit[idx], z_fit[idx])
            if step in (0, int(steps)) and mode == "diffusion_feature":
                target = loss.kd.standardize(z_fit[idx])
                entry[f"grad_norms_step{step}"] = {
                    "seg": _group_grad_norms(parts["loss_seg"], net),
                    "kd_noisy (D(u_t,t), half)": _group_grad_norms(
                        loss.kd.distance(out["denoised_noisy"], target)["kd"] / 2, net),
                    "kd_decoder_path (D(u0,t_seg), half)": _group_grad_norms(
                        loss.kd.distance(out["denoised"], target)["kd"] / 2, net),
                    "feature term (u0)": _group_grad_norms(loss.kd.distance(out["u0"], target)["kd"], net),
                }
            if step == int(steps):
                break
            optim.zero_grad()
            parts["loss"].backward()
            optim.step()
        net.eval()
        loss.eval()
        with torch.no_grad():
            out = net(x_eval, return_training_outputs=True)
            target = loss.kd.standardize(z_eval)
            entry["cos_u0"] = float(torch.nn.functional.cosine_similarity(out["u0"], target, dim=2).mean())
            entry["cos_denoised"] = float(torch.nn.functional.cosine_similarity(out["denoised"], target, dim=2).mean())
            f_fit = torch.cat([fused(net, x_fit[i:i + 16]) for i in range(0, len(x_fit), 16)])
            f_eval = torch.cat([fused(net, x_eval[i:i + 16]) for i in range(0, len(x_eval), 16)])
            t_fit = loss.kd.standardize(z_fit)
            entry["ridge_r2_fused_to_teacher"] = float(np.mean([
                _ridge_r2(tokens_rows(f_fit, m), tokens_rows(t_fit, m), tokens_rows(f_eval, m), tokens_rows(target, m))
                for m in range(4)]))
        if mode in ("diffusion", "diffusion_feature"):
            u0 = net.encode(x_eval[:16])[0].detach().requires_grad_(True)
            noise = torch.randn_like(u0)
            target = loss.kd.standardize(z_eval[:16])
            entry["grad_u0_by_t"] = {}
            for t in (1, 50, 100, 200, 400, 700, 999):
                ts = torch.full((u0.shape[0],), t)
                value = loss.kd.distance(net.denoise(net.scheduler.add_noise(u0, noise, ts), ts), target)["kd"]
                (grad,) = torch.autograd.grad(value, u0)
                entry["grad_u0_by_t"][t] = {"kd": round(float(value), 4), "grad_norm": round(float(grad.norm()), 5),
                                            "sqrt_alpha_bar": round(float(net.sqrt_alpha_bar[t]), 4)}
        report[mode] = entry
        logger.info("[diagnose %s] %s", mode, {k: v for k, v in entry.items() if not k.startswith("grad")})
    (work / "diagnosis.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2), flush=True)
    return report


# ------------------------------------------------------------------------------ what the trained students know
def _region_logits(net: torch.nn.Module, slices: torch.Tensor) -> torch.Tensor:
    """``(S, M, H, W)`` -> ``(S, 3, H/16, W/16)`` logits of the ET / TC / WT share of each patch in the network's own
    segmentation (softmax over background, necrosis, oedema, enhancing; pooled per patch), for :func:`probe_dice`."""
    from diffmed_monai.metrics.probe import token_fractions

    probs = torch.cat([net(slices[i:i + 16]).float().softmax(1) for i in range(0, len(slices), 16)])
    regions = torch.stack([probs[:, 3], probs[:, 1] + probs[:, 3], 1 - probs[:, 0]], 1)
    return torch.logit(token_fractions(regions).clamp(1e-6, 1 - 1e-6))


def probe_students(
    workdir: str = "ablation_run",
    labelled: int = 2,
    seeds: Sequence[int] = (0, 1),
    variants: Sequence[str] = ("no_kd", "kd_random", "reg_made", "diff_made", "diff_made_unl"),
    presets: Sequence[str] = ("tiny",),
    spacing: float = 2.0,
    roi_size: Sequence[int] = (96, 96),
    slice_step: int = 1,
    labelled_pool: int = 8,
    num_unlabelled: int = 16,
    num_test: int = 6,
    threads: int = 1,
    fit_cases: int | None = None,
    teacher_arch: str = "tiny",
    teacher_weights: str | None = None,
) -> dict:
    """Does the teacher's knowledge reach the trained students' tokens? The teacher's linear probe, on students.

    ``python scripts/distillation_ablation.py probe_students --workdir ablation_run --labelled 2`` (after the
    ablation's runs). For every run ``<variant>_L<labelled>_s<seed>`` in ``workdir``: the trained network
    (``models/model.pt``, built from ``train.json`` + ``presets``) encodes the slices of the run's labelled cases
    and of the held-out cases; the same linear probe as the teacher's (:mod:`diffmed_monai.metrics.probe`: fitted on
    the labelled cases' tokens, fuzzy Dice of the ET / TC / WT patch fractions on the held-out ones) reads the
    regions from the decoder's input D(u0, seg_timestep) ``(S, M * d, h, w)``, the stride-16 tokens the KD loss
    shapes. KD from a made teacher raising it above KD from a random teacher means the teacher's knowledge reached
    the students. ``fit_cases`` (default: the run's ``labelled``) fits every probe, the teachers' too, on the first
    ``fit_cases`` cases of the labelled pool instead: a measurement, not training, so a probe fitted on more cases
    measures the tokens more precisely. Also scored the same way: the network's own segmentation, its class
    probabilities turned into ET / TC / WT and averaged over each 16 x 16 patch; where that beats the teacher's probe,
    the labels already taught the network more about the regions, at the teacher's resolution, than the teacher's
    tokens hold. ``teacher_weights``: the ablation's made teacher (default ``<workdir>/teacher/teacher_timm.pth``,
    as the ablation makes it). Writes ``<workdir>/student_probe_L<labelled>_fit<fit_cases>.json``; prints a table.
    """
    from monai.bundle import ConfigParser

    from diffmed_monai.metrics.probe import fit_linear_probe, load_probe_slices, probe_dice, token_fractions

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(int(threads))
    work = Path(workdir).resolve()
    split = make_data(work / "data", int(labelled_pool), int(num_unlabelled), int(num_test), spacing, 0)
    common = {"pixdim": (float(spacing),) * 3, "roi_size": roi_size, "slice_step": int(slice_step)}
    n_fit = int(labelled if fit_cases is None else fit_cases)
    fit = load_probe_slices(split["labelled"][:n_fit], str(work / "data"), **common)
    held = load_probe_slices(split["test"], str(work / "data"), **common)
    fit_fractions = torch.cat([token_fractions(r) for _, r in fit])
    preset_files = [str(p if str(p).endswith(".json") else PRESETS_DIR / f"{p}.json") for p in presets]

    def tokens(net: torch.nn.Module, slices: torch.Tensor) -> torch.Tensor:
        out = [net(slices[i:i + 16], return_training_outputs=True)["denoised"].flatten(1, 2)
               for i in range(0, len(slices), 16)]
        return torch.cat(out).float()

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_DIR / "configs" / "train.json"), *preset_files])
    parser.update({"bundle_root": str(work), "dataset_dir": str(work / "data"), "teacher_arch": teacher_arch,
                   "device": "$torch.device('cpu')"})
    net = parser.get_parsed_content("network_def")  # every run's weights are loaded into this one network
    rows: dict = {}
    for variant in variants:
        for seed in seeds:
            model = work / "runs" / f"{variant}_L{int(labelled)}_s{int(seed)}" / "models" / "model.pt"
            if not model.is_file():
                logger.info("no %s: left out", model)
                continue
            net.load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
            net.eval()
            with torch.no_grad():
                probe = fit_linear_probe(torch.cat([tokens(net, x) for x, _ in fit]), fit_fractions)
                cases = [probe_dice(probe(tokens(net, x)), token_fractions(r)) for x, r in held]
                own = [probe_dice(_region_logits(net, x), token_fractions(r)) for x, r in held]
            entry = {}
            for name, scores in (("probe", cases), ("segmentation", own)):
                mean = {g: float(np.mean([c[g] for c in scores])) for g in REGIONS}
                entry[name] = {"mean": mean, "mean_dice": float(np.mean(list(mean.values())))}
            rows.setdefault(variant, {})[int(seed)] = entry
            logger.info("[%s seed %d] %s", variant, seed, entry)
    weights = teacher_weights or str(work / "teacher" / "teacher_timm.pth")
    teacher = teacher_probe(work, split, n_fit, teacher_arch, weights, spacing, roi_size, num_test)
    lines = [f"Token resolution, fuzzy Dice of the ET / TC / WT patch fractions on {int(num_test)} held-out cases; "
             f"probes fitted on {n_fit} labelled case(s); students trained with {int(labelled)}.", "",
             "| tokens of | linear probe: mean | ET / TC / WT | the network's own segmentation, pooled: mean |",
             "|---|---|---|---|"]
    for variant, by_seed in rows.items():
        runs = list(by_seed.values())
        lines.append(f"| students, {VARIANTS[variant][0]} ({len(runs)} seed(s)) | "
                     f"{_spread([r['probe']['mean_dice'] for r in runs], 3)} | "
                     + " / ".join(_spread([r["probe"]["mean"][g] for r in runs], 3) for g in REGIONS)
                     + f" | {_spread([r['segmentation']['mean_dice'] for r in runs], 3)} |")
    for name, label in (("teacher", "made teacher (frozen)"), ("random", "random twin (frozen)")):
        lines.append(f"| {label} | {teacher[name]['mean_dice']:.3f} | "
                     + " / ".join(f"{teacher[name]['mean'][g]:.3f}" for g in REGIONS) + " | - |")
    table = "\n".join(lines) + "\n"
    report = {"labelled": int(labelled), "fit_cases": n_fit, "students": rows, "teacher": teacher["teacher"]["mean"],
              "random": teacher["random"]["mean"], "table": table}
    (work / f"student_probe_L{int(labelled)}_fit{n_fit}.json").write_text(json.dumps(report, indent=2))
    print(table, flush=True)
    return report


if __name__ == "__main__":
    subcommands = {"diagnose": diagnose, "probe_students": probe_students}
    if len(sys.argv) > 1 and sys.argv[1] in subcommands:
        fire.Fire(parse_flags(subcommands[sys.argv[1]]), command=sys.argv[2:], serialize=lambda report: None)
    else:
        fire.Fire(parse_flags(main), serialize=lambda report: None)  # prints the table; the report is ablation.json
