"""``diffmed-monai`` command line (python-fire): the end-to-end demo and the data tools."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from .data import make_demo_data, prepare_datalist

__all__ = ["BUNDLE_DIR", "demo", "main", "preprocess", "probe_teacher"]

#: the MONAI bundle shipped with the package (in a clone, a link to the repository's ``bundle/``)
BUNDLE_DIR = Path(__file__).resolve().parent / "bundle"


def _bundle(bundle_dir: str | None) -> Path:
    bundle = Path(bundle_dir) if bundle_dir else BUNDLE_DIR
    if not (bundle / "configs" / "train.json").is_file():
        raise FileNotFoundError(f"No bundle configs at {bundle} (option --bundle_dir).")
    return bundle


def _run_bundle(run_id: str, bundle: Path, config_files: list[Path], **override) -> None:
    from monai.bundle import run

    run(
        run_id,
        config_file=[str(c) for c in config_files],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        **override,
    )


def _config_files(bundle: Path, first: Sequence[str], presets: Sequence[str] | str) -> list[Path]:
    """``bundle/configs/<first>.json`` then each preset, given by name (``brats``) or as a path."""
    configs = bundle / "configs"
    presets = [presets] if isinstance(presets, str) else list(presets or [])
    files = [configs / f"{name}.json" for name in first]
    for preset in presets:
        path = Path(preset)
        files.append(path if path.suffix == ".json" else configs / "presets" / f"{preset}.json")
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"Config file {path} does not exist (presets are in {configs / 'presets'}).")
    return files


def preprocess(dataset_dir: str, store_dir: str | None = None, presets: Sequence[str] | str = (),
               workers: int | None = None, bundle_root: str | None = None, bundle_dir: str | None = None,
               **overrides) -> dict:
    """Write every training and validation case once into the slice store that training reads.

    Runs the bundle's ``preprocess`` entry (``train.json`` + ``preprocess.json`` + ``presets``): each case of the
    datalist (``<dataset_dir>/datalist.json`` unless ``--datalist``) is checked, resampled, cropped, normalised and
    written to ``store_dir`` (default ``<bundle_root>/store``) by ``workers`` processes (default: up to 8), with a
    progress bar. Complete cases are skipped, so a rerun continues after an interruption; a bad case is reported with
    its file and reason and the others are still written (the command then exits with an error). Other
    ``--key value`` pairs override config keys, e.g. ``--pixdim "[1,1,1]"``.

    Example: ``diffmed-monai preprocess --dataset_dir /data/BraTS2021 --store_dir /data/brats2021_store
    --presets brats --workers 8``. Returns the summary as a dict.
    """
    from monai.bundle import ConfigWorkflow

    bundle = _bundle(bundle_dir)
    files = _config_files(bundle, ["train", "preprocess"], presets)
    override = dict(overrides, dataset_dir=str(dataset_dir))
    if store_dir is not None:
        override["store_dir"] = str(store_dir)
    if workers is not None:
        override["preprocess_workers"] = int(workers)
    if bundle_root is not None:
        override["bundle_root"] = str(bundle_root)
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files], meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"), workflow_type=None, run_id="preprocess", **override,
    )
    workflow.initialize()
    summary = workflow.run()[0]
    workflow.finalize()
    print(summary, flush=True)
    return {"store_dir": summary.store_dir, "total": summary.total, "written": summary.written,
            "present": summary.present, "failed": len(summary.failed), "seconds": round(summary.seconds, 1)}


def demo(workdir: str = "demo_run", num_cases: int = 8, epochs: int = 20, bundle_dir: str | None = None,
         seed: int = 0) -> dict:
    """Run the whole DiffMedDINOv3 pipeline on generated demo data, on this machine, with the tiny preset.

    Steps: make ``num_cases`` BraTS-layout demo cases, write the datalist, preprocess them into the slice store,
    train ``epochs`` epochs from it (``train.json`` + ``configs/presets/tiny.json``: tiny Swin students and a tiny
    RANDOMLY INITIALISED DINOv3 teacher, so the run needs no weights), segment the validation cases with
    ``inference.json`` and evaluate them with ``evaluate.json``, both with ``save_png`` (one picture per case). Prints
    where the label maps, the metrics CSV, the pictures and ``progress.png`` are, and returns those paths.

    With the defaults (8 cases, 20 epochs) it takes about a minute on 2 idle CPU cores and reaches a validation mean
    Dice of about 0.74 on the synthetic cases; ``--epochs 2`` is the quickest smoke run.
    """
    started = time.time()
    bundle = _bundle(bundle_dir)
    configs = bundle / "configs"
    tiny = configs / "presets" / "tiny.json"
    work = Path(workdir).resolve()
    data_dir, run_dir, pred_dir = work / "data", work / "bundle_run", work / "predictions"
    print(f"[1/6] Demo data: {num_cases} synthetic BraTS-layout cases in {data_dir}", flush=True)
    datalist = Path(make_demo_data(str(data_dir), num_cases=num_cases, seed=seed, overwrite=True, val_fraction=0.25))

    common = dict(bundle_root=str(run_dir), dataset_dir=str(data_dir), datalist=str(datalist))
    store_dir = run_dir / "store"
    print(f"[2/6] Preprocessing the cases into the slice store {store_dir}", flush=True)
    shutil.rmtree(store_dir, ignore_errors=True)  # the demo's own store, of the data just regenerated
    preprocess(str(data_dir), store_dir=str(store_dir), presets=[str(tiny)], bundle_root=str(run_dir),
               bundle_dir=str(bundle), datalist=str(datalist))

    print(f"[3/6] Training {epochs} epoch(s) with the tiny preset (random tiny teacher) -> {run_dir}", flush=True)
    _run_bundle("training", bundle, [configs / "train.json", tiny], epochs=epochs, resume=False, **common)

    print(f"[4/6] Inference on the validation cases -> {pred_dir}", flush=True)
    _run_bundle("inference", bundle, [configs / "inference.json", tiny], datalist_key="testing", overwrite=True,
                output_dir=str(pred_dir), save_png=True, **common)

    print("[5/6] Evaluation of the validation cases", flush=True)
    eval_dir = run_dir / "eval"
    _run_bundle("evaluating", bundle, [configs / "train.json", configs / "evaluate.json", tiny],
                output_dir=str(eval_dir), save_png=True, **common)

    labels = sorted(str(p) for p in pred_dir.glob("*.nii.gz"))
    result = {
        "label_maps": labels,
        "pictures": sorted(str(p) for p in pred_dir.glob("*.png")),
        "evaluation_pictures": sorted(str(p) for p in eval_dir.glob("*.png")),
        "metrics_csv": str(eval_dir / "metrics.csv"),
        "checkpoint": str(run_dir / "models" / "model.pt"),
        "tensorboard": str(run_dir / "eval" / "tensorboard"),
        "progress_plot": str(run_dir / "eval" / "progress.png"),
        "seconds": round(time.time() - started, 1),
    }
    print(f"[6/6] Done in {result['seconds']} s", flush=True)
    print(f"  label maps ({len(labels)}): {pred_dir}", flush=True)
    print(f"  metrics CSV:  {result['metrics_csv']} (per-case details beside it)", flush=True)
    print(f"  checkpoint:   {result['checkpoint']}", flush=True)
    plot = Path(result["progress_plot"])
    missing = "(none: pip install diffmed-monai[plots] for matplotlib)"
    print(f"  progress:     {plot if plot.is_file() else 'no progress.png ' + missing}", flush=True)
    print(f"  pictures ({len(result['pictures'])}, one per case, prediction on FLAIR and T1c): "
          f"{pred_dir if result['pictures'] else missing}", flush=True)
    for path in result["pictures"]:
        print(f"    {path}", flush=True)
    print(f"  evaluation pictures ({len(result['evaluation_pictures'])}, prediction beside ground truth): "
          f"{eval_dir if result['evaluation_pictures'] else missing}", flush=True)
    for path in result["evaluation_pictures"]:
        print(f"    {path}", flush=True)
    return result


def probe_teacher(dataset_dir: str | None = None, teacher_weights: str | None = None, teacher_arch: str = "tiny",
                  datalist: str | None = None, presets: Sequence[str] | str = (), output: str | None = None,
                  num_cases: int = 4, teacher_backend: str = "auto", overwrite: bool = False,
                  bundle_dir: str | None = None) -> dict:
    """Does a teacher know anything about these images? A linear probe of its frozen tokens against a random twin.

    Fits a linear map from the teacher's patch tokens (all modalities) to the ET/TC/WT fractions of each 16 x 16
    patch on ``num_cases`` labelled ``training`` cases of the datalist (``<dataset_dir>/datalist.json`` unless
    ``--datalist``), scores Dice per region at token resolution on ``num_cases`` ``validation`` cases, and does the
    same with a randomly initialised teacher of ``teacher_arch``; prints the table and writes the JSON to ``output``
    (default ``probe.json``; never over an existing file unless ``--overwrite``). The slices are prepared with the
    ``pixdim``, ``roi_size`` and ``label_values`` of ``train.json`` + ``presets`` (names or paths), as training
    would give them to the teacher (:mod:`diffmed_monai.metrics.probe`; the bundle entry is ``configs/probe.json``).

    Example: ``diffmed-monai probe-teacher --dataset_dir hard_data --teacher_weights made_teacher/teacher_timm.pth
    --teacher_arch tiny --presets tiny``. Returns the mean Dice per region of both teachers and the output path.
    """
    from monai.bundle import ConfigParser

    from .metrics.probe import probe_teacher as run_probe

    bundle = _bundle(bundle_dir)
    parser = ConfigParser()
    parser.read_config([str(f) for f in _config_files(bundle, ["train"], presets)])
    output = output or "probe.json"
    report = run_probe(
        dataset_dir=dataset_dir, datalist=datalist, teacher_arch=teacher_arch, teacher_weights=teacher_weights,
        teacher_backend=teacher_backend, pixdim=parser.get_parsed_content("pixdim"),
        roi_size=parser.get_parsed_content("roi_size"), label_values=parser.get_parsed_content("label_values"),
        num_fit=num_cases, num_eval=num_cases, output=output, overwrite=overwrite,
    )
    return {"teacher": report["teacher"]["mean"], "random": report["random"]["mean"], "output": output}


def main() -> None:
    """Entry point of the ``diffmed-monai`` console script."""
    import fire

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fire.Fire({"demo": demo, "make-demo-data": make_demo_data, "prepare-datalist": prepare_datalist,
               "preprocess": preprocess, "probe-teacher": probe_teacher})


if __name__ == "__main__":
    main()
