"""Missing-modality robustness, flip TTA and small-ET post-processing, measured on the demo phantoms.

Everything runs through the bundle's own entry points (``training`` and ``evaluating`` with the tiny preset), on
demo data made here:

1. ``num_cases`` BraTS-2021-layout phantoms (seed ``seed``) to train on (3/4) and select the model (1/4), and
   ``test_cases`` other phantoms (seed ``seed + 1``) to measure on;
2. for each ``modality_dropout`` value: train ``epochs`` epochs (same budget, same seed), then evaluate the test
   phantoms with every one of the 15 non-empty subsets of the 4 modalities (one evaluation run over a datalist
   whose absent modality files are ``null``, ``allow_missing_modalities: true``; ``cases.csv`` gives each case's
   modalities and Dice);
3. on the model of the dropout value ``chosen`` (default: the best mean over the 15 subsets): the test phantoms
   with all modalities, with and without ``flip_tta``, and with each ``et_min_volume``.

Writes ``<workdir>/results.json`` and ``<workdir>/results.md`` (the tables of ``docs/missing_modalities.md``).

    python scripts/missing_modalities.py --workdir mm_run --dropouts "[0.0,0.25,0.5]" --epochs 20
"""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
import sys
import time
from pathlib import Path

import fire
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from diffmed_monai.data import BRATS_MODALITIES, make_demo_data, make_demo_dataset  # noqa: E402
from diffmed_monai.utils import parse_flags  # noqa: E402

BUNDLE = REPO / "bundle"
CONFIGS = BUNDLE / "configs"
TINY = REPO / "configs" / "tiny.json"
REGIONS = ("et", "tc", "wt")
SHORT = {"t1": "T1", "t1ce": "T1c", "t2": "T2", "flair": "FLAIR"}


def _run(run_id: str, configs: list[Path], **override) -> None:
    from monai.bundle import run

    run(run_id, config_file=[str(c) for c in configs], meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"), **override)


def subsets(modalities=BRATS_MODALITIES) -> list[tuple[str, ...]]:
    """The 15 non-empty subsets, fewest modalities first (mmFormer / ShaSpec table order)."""
    return [c for k in range(1, len(modalities) + 1) for c in itertools.combinations(modalities, k)]


def _test_cases(root: Path, num_cases: int, seed: int) -> list[dict]:
    folders = make_demo_dataset(str(root), num_cases=num_cases, seed=seed, overwrite=True)
    cases = []
    for folder in folders:
        cid = os.path.basename(folder)
        cases.append({"case_id": cid, "image": [os.path.join(folder, f"{cid}_{m}.nii.gz") for m in BRATS_MODALITIES],
                      "label": os.path.join(folder, f"{cid}_seg.nii.gz")})
    return cases


def _datalist(path: Path, cases: list[dict], subset_list) -> Path:
    """``validation``: every case once per subset, absent modality files as ``null`` (absolute paths)."""
    entries = []
    for subset in subset_list:
        for case in cases:
            image = [p if m in subset else None for m, p in zip(BRATS_MODALITIES, case["image"])]
            entries.append({**case, "image": image})
    path.write_text(json.dumps({"training": [], "validation": entries}, indent=1))
    return path


def _evaluate(run_dir: Path, data_dir: Path, datalist: Path, out: Path, **override) -> tuple[dict, float]:
    """Mean Dice per modality subset and region from ``cases.csv`` (an earlier run's is reused); and the run's
    seconds (``None`` when reused)."""
    started = time.time()
    if (out / "cases.csv").is_file():
        return _read_cases(out / "cases.csv"), None
    # Dice only: the HD95s would take most of the time and are not reported here
    dice_only = {"validate#class_metrics#hd95": False, "validate#region_metrics#hd95": False}
    _run("evaluating", [CONFIGS / "train.json", CONFIGS / "evaluate.json", TINY], bundle_root=str(run_dir),
         dataset_dir=str(data_dir), datalist=str(datalist), output_dir=str(out), allow_missing_modalities=True,
         num_workers=0, **dice_only, **override)
    return _read_cases(out / "cases.csv"), time.time() - started


def _read_cases(path: Path) -> dict:
    scores: dict[str, dict[str, list[float]]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            per = scores.setdefault(row["modalities_present"], {r: [] for r in REGIONS})
            for r in REGIONS:
                per[r].append(float(row[f"dice_region_{r}"]))
    return {k: {r: float(np.mean(v[r])) for r in REGIONS} for k, v in scores.items()}


def _table(result: dict, modalities=BRATS_MODALITIES) -> str:
    """mmFormer / ShaSpec layout: one row per subset (a dot per present modality), Dice ET / TC / WT (%)."""
    head = "| " + " | ".join(SHORT.get(m, m) for m in modalities) + " | ET | TC | WT |"
    lines = [head, "|" + "---|" * (len(modalities) + 3)]
    for subset in subsets(modalities):
        key = "+".join(subset)
        row = result[key]
        marks = " | ".join("●" if m in subset else "○" for m in modalities)
        lines.append(f"| {marks} | " + " | ".join(f"{100 * row[r]:.1f}" for r in REGIONS) + " |")
    means = {r: np.mean([result["+".join(s)][r] for s in subsets(modalities)]) for r in REGIONS}
    lines.append("| mean of the 15 | | | | " + " | ".join(f"{100 * means[r]:.1f}" for r in REGIONS) + " |")
    return "\n".join(lines)


def main(
    workdir: str = "missing_modalities_run",
    num_cases: int = 12,
    test_cases: int = 6,
    epochs: int = 20,
    dropouts=(0.0, 0.25, 0.5),
    warmup_epochs: int | None = None,
    chosen: float | None = None,
    et_min_volumes=(100.0, 400.0),
    seed: int = 0,
) -> dict:
    logging.basicConfig(level=logging.WARNING)
    work = Path(workdir).resolve()
    data_dir = work / "data"
    datalist = Path(make_demo_data(str(data_dir), num_cases=num_cases, seed=seed, overwrite=True, val_fraction=0.25))
    tests = _test_cases(work / "test", test_cases, seed + 1)
    all_subsets = _datalist(work / "subsets.json", tests, subsets())
    full = _datalist(work / "full.json", tests, [tuple(BRATS_MODALITIES)])
    store = work / "store"
    results: dict = {"settings": {"num_cases": num_cases, "test_cases": test_cases, "epochs": epochs,
                                  "warmup_epochs": warmup_epochs, "seed": seed}, "dropout": {}}
    for p in dropouts:
        run_dir = work / f"dropout_{p:g}"
        extra = {} if warmup_epochs is None else {"modality_dropout_warmup_epochs": int(warmup_epochs)}
        done = run_dir / "training_done.json"  # a rerun of the script reuses finished trainings and evaluations
        if done.is_file():
            train_seconds = json.loads(done.read_text())["seconds"]
        else:
            started = time.time()
            _run("training", [CONFIGS / "train.json", TINY], bundle_root=str(run_dir), dataset_dir=str(data_dir),
                 datalist=str(datalist), store_dir=str(store), epochs=epochs, resume=False, seed=seed,
                 modality_dropout=float(p), **extra)
            train_seconds = time.time() - started
            done.write_text(json.dumps({"seconds": train_seconds, "modality_dropout": p, "epochs": epochs}))
        table, seconds = _evaluate(run_dir, data_dir, all_subsets, run_dir / "eval_subsets")
        results["dropout"][f"{p:g}"] = {"subsets": table, "train_seconds": train_seconds, "eval_seconds": seconds,
                                        "model": json.loads((run_dir / "models" / "model.json").read_text())}
        print(f"dropout {p:g}: full {table['+'.join(BRATS_MODALITIES)]}, "
              f"mean of 15 {np.mean([[v[r] for r in REGIONS] for v in table.values()], axis=0)}", flush=True)

    def mean15(p):
        return float(np.mean([[v[r] for r in REGIONS] for v in results["dropout"][p]["subsets"].values()]))

    best = f"{chosen:g}" if chosen is not None else max(results["dropout"], key=mean15)
    results["chosen"] = best
    run_dir = work / f"dropout_{best}"
    key = "+".join(BRATS_MODALITIES)
    results["tta"] = {}
    for tta in (False, True):
        table, seconds = _evaluate(run_dir, data_dir, full, run_dir / f"eval_tta_{tta}", flip_tta=tta)
        results["tta"][str(tta)] = {**table[key], "seconds": seconds}
    results["et_min_volume"] = {"0": {r: results["tta"]["False"][r] for r in REGIONS}}  # the run without TTA
    for volume in [v for v in et_min_volumes if v > 0]:
        table, _ = _evaluate(run_dir, data_dir, full, run_dir / f"eval_et_{volume:g}", et_min_volume=volume)
        results["et_min_volume"][f"{volume:g}"] = table[key]

    lines = [f"Demo phantoms: {num_cases} training/selection cases, {test_cases} test cases, {epochs} epochs, tiny "
             "preset, 2 mm. Dice (%) per BraTS region, mean over the test cases.", "",
             "## modality_dropout (same budget): full set and mean over the 15 subsets", "",
             "| modality_dropout | full ET | full TC | full WT | 15-subset mean ET | TC | WT | train s |",
             "|---|---|---|---|---|---|---|---|"]
    for p, res in results["dropout"].items():
        f = res["subsets"][key]
        m = {r: np.mean([v[r] for v in res["subsets"].values()]) for r in REGIONS}
        lines.append(f"| {p} | " + " | ".join(f"{100 * f[r]:.1f}" for r in REGIONS) + " | "
                     + " | ".join(f"{100 * m[r]:.1f}" for r in REGIONS) + f" | {res['train_seconds']:.0f} |")
    for p, res in results["dropout"].items():
        lines += ["", f"## 15 subsets, modality_dropout {p}", "", _table(res["subsets"])]
    lines += ["", f"## flip TTA (modality_dropout {best}, all modalities)", "",
              "| flip_tta | ET | TC | WT | evaluation s |", "|---|---|---|---|---|"]
    for tta, res in results["tta"].items():
        seconds = "-" if res["seconds"] is None else f"{res['seconds']:.1f}"
        lines.append(f"| {tta.lower()} | " + " | ".join(f"{100 * res[r]:.2f}" for r in REGIONS) + f" | {seconds} |")
    lines += ["", f"## et_min_volume (mm^3; modality_dropout {best}, all modalities, no TTA)", "",
              "| et_min_volume | ET | TC | WT |", "|---|---|---|---|"]
    for volume, res in results["et_min_volume"].items():
        lines.append(f"| {volume} | " + " | ".join(f"{100 * res[r]:.2f}" for r in REGIONS) + " |")
    (work / "results.json").write_text(json.dumps(results, indent=2))
    (work / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    fire.Fire(parse_flags(main))
