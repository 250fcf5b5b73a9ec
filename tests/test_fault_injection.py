"""Nothing is lost: kills during checkpoint writes, resume keeping the best model, stale checkpoints, bad checkpoints
with clear errors, oversized or failing cases isolated, missing labels and empty modalities reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest
import torch

from diffmed_monai.engines import CheckpointError, check_checkpoint, epoch_checkpoints

from .helpers import BUNDLE, PRESETS, error_chain, workflow

TRAIN = BUNDLE / "configs" / "train.json"
INFER = BUNDLE / "configs" / "inference.json"
TINY = PRESETS / "tiny.json"

#: a training run in a subprocess that SIGKILLs itself half-way through the N-th write of a chosen file
KILLING_TRAINER = textwrap.dedent(
    """
    import os, signal, sys, torch
    from monai.bundle import run

    target, nth, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    real_save, seen = torch.save, []

    def save_then_die(obj, f, *args, **kwargs):
        name = os.path.basename(getattr(f, "name", str(f)))
        if name.startswith("." + target + ".") and name.endswith(".tmp"):
            seen.append(name)
            if len(seen) == nth:  # half the bytes on disk, then killed as by the OOM killer or a power cut
                real_save(obj, f, *args, **kwargs)
                f.flush()
                f.truncate(f.tell() // 2)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f, *args, **kwargs)

    torch.save = save_then_die
    run("training", **eval(config))
    """
)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from diffmed_monai.data import make_demo_dataset, scan_brats, split_cases, write_datalist

    root = tmp_path_factory.mktemp("faults")
    make_demo_dataset(str(root), num_cases=4, shape=(48, 48, 24), seed=5)
    cases, _ = scan_brats(str(root))
    train, val = split_cases(cases, val_fraction=0.25, seed=0)
    write_datalist(str(root / "datalist.json"), train, val, test=val)
    return root


def _train_config(data, bundle_root, epochs: int) -> dict:
    return dict(
        config_file=[str(TRAIN), str(TINY)], meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"), bundle_root=str(bundle_root), dataset_dir=str(data),
        epochs=epochs, val_interval=1, roi_size=[48, 48], learning_rate=0.01,
    )


def _train(config: dict, kill_at: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    target, nth = kill_at or ("never", 0)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]))
    return subprocess.run(
        [sys.executable, "-c", KILLING_TRAINER, target, str(nth), repr(config)], capture_output=True, text=True,
        timeout=600, env=env,
    )


def _record(models) -> dict:
    return json.loads((models / "model.json").read_text())


@pytest.mark.slow
def test_kill_during_checkpoint_save_loses_only_the_current_epoch(small_data, tmp_path):
    config = _train_config(small_data, tmp_path, epochs=3)
    killed = _train(config, kill_at=("checkpoint_epoch=2.pt", 1))
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    models = tmp_path / "models"
    assert [name for _, name in epoch_checkpoints(models)] == ["checkpoint_epoch=1.pt"]  # the previous one kept
    torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)  # and complete
    resumed = _train(config)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming training from" in resumed.stdout and "checkpoint_epoch=1.pt" in resumed.stdout
    assert [name for _, name in epoch_checkpoints(models)] == ["checkpoint_epoch=3.pt"]
    assert not [n for n in os.listdir(models) if n.endswith(".tmp")]  # the killed write's leftover is gone
    state = torch.load(models / "checkpoint_epoch=3.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 3 * state["trainer"]["epoch_length"]  # three whole epochs


@pytest.mark.slow
def test_kill_during_best_model_update_keeps_the_best_model(small_data, tmp_path):
    models = tmp_path / "models"
    config = _train_config(small_data, tmp_path, epochs=5)
    config["validate#key_metric"] = {"val_score": {"_target_": "tests.helpers.GrowingScore"}}  # improves each time
    killed = _train(config, kill_at=("model.pt", 2))  # the first update of an existing best model
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    best_before = _record(models)
    weights = torch.load(models / "model.pt", weights_only=True)  # the earlier best model, complete
    assert weights and all(k.startswith(("shared_student", "specific", "fusion", "projection", "denoisers", "decoder"))
                           for k in weights)
    resumed = _train(config)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    best_after = _record(models)
    assert best_before["epoch"] == 2 and best_before["metric"] == 2.0  # the record is written before the weights
    # resumed after epoch 2, the new process scores 1, 2 at epochs 3, 4 (not better: model.pt kept), then 3
    assert best_after["metric"] == 3.0 and best_after["epoch"] == 5
    torch.load(models / "model.pt", weights_only=True)


def test_resume_never_replaces_the_best_model_with_a_worse_one(tmp_path):
    from ignite.engine import Engine

    from diffmed_monai.engines import BestModelCheckpoint

    net = torch.nn.Linear(2, 2)

    def validate(handler, score, epoch):
        engine = Engine(lambda e, b: None)
        handler.attach(engine)
        engine.state.metrics, engine.state.key_metric_name, engine.state.epoch = {"dice": score}, "dice", epoch
        handler(engine)
        return engine

    validate(BestModelCheckpoint(str(tmp_path), net), 0.130, 1)
    best = (tmp_path / "model.pt").read_bytes()
    with torch.no_grad():
        net.weight.fill_(7.0)
    resumed = BestModelCheckpoint(str(tmp_path), net, resume=True)  # a restarted training
    engine = validate(resumed, 0.095, 2)
    assert (tmp_path / "model.pt").read_bytes() == best and engine.state.best_metric == 0.130
    assert engine.state.best_metric_epoch == 1
    validate(resumed, 0.150, 3)
    assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(7.0).all()
    assert json.loads((tmp_path / "model.json").read_text())["epoch"] == 3
    assert (os.stat(tmp_path / "model.pt").st_mode & 0o777) == 0o666 & ~_umask()
    fresh = BestModelCheckpoint(str(tmp_path), net, resume=False)  # a new training keeps its own record
    assert fresh.best is None


def test_stale_checkpoints_of_earlier_runs_are_cleaned(tmp_path):
    from ignite.engine import Engine

    from diffmed_monai.engines import ResumableCheckpoint

    net = torch.nn.Linear(2, 2)
    for epoch in (1, 2, 5):  # left by earlier runs
        trainer = {"iteration": epoch, "epoch_length": 1, "max_epochs": 9}
        torch.save({"model": net.state_dict(), "trainer": trainer}, tmp_path / f"checkpoint_epoch={epoch}.pt")
    (tmp_path / ".checkpoint_epoch=6.pt.x1y2.tmp").write_bytes(b"partial")
    engine = Engine(lambda e, b: None)
    handler = ResumableCheckpoint(str(tmp_path), {"model": net}, n_saved=1)
    handler.attach(engine)
    assert handler.loaded_path.endswith("checkpoint_epoch=5.pt")
    engine.run([0], max_epochs=7)
    assert [name for _, name in epoch_checkpoints(tmp_path)] == ["checkpoint_epoch=7.pt"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert engine.state.epoch == 7 and engine.state.iteration == 7  # resumed at 5, ran 6 and 7


def _tiny_network(**override):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(INFER), str(TINY)])
    parser.update(override)
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "cannot be read"),
        (os.urandom(4096), "cannot be read"),
        ("truncated", "cannot be read"),
        ({"num_classes": 2}, "checkpoint has 2 classes, the config 4 (`label_values`)"),
        ({"modalities": ["t1", "t2"]}, "checkpoint has 2 modalities"),
        ({"teacher_arch": "vits16"}, "teacher width 384"),
    ],
)
def test_bad_checkpoints_name_the_file_the_key_and_what_differs(tmp_path, content, expected):
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        torch.save(_tiny_network().state_dict(), path)
        path.write_bytes(path.read_bytes()[:2000])
    else:
        overrides = {f"network_def#{k}" if k != "teacher_arch" else k: v for k, v in content.items()}
        if "modalities" in content:
            overrides = {"modalities": content["modalities"]}
        if "num_classes" in content:
            overrides = {"label_values": [0, 1]}
        torch.save(_tiny_network(**overrides).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        check_checkpoint(path, {"model": _tiny_network()})
    message = str(err.value)
    assert str(path) in message and "`ckpt_path`" in message and expected in message, message
    assert "weights_only=False" not in message


def test_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": os.getcwd}, path)  # a function: needs full unpickling
    with pytest.raises(CheckpointError, match="holds code"):
        check_checkpoint(path, {"model": torch.nn.Linear(1, 1)})


def _case_folder(root, case_id, shape=(24, 24, 12), zooms=(2.0, 2.0, 2.0), zero=(), spike=False):
    folder = root / case_id
    folder.mkdir(parents=True)
    affine = np.diag([*zooms, 1.0])
    rng = np.random.default_rng(0)
    for m in ("t1", "t1ce", "t2", "flair"):
        data = np.zeros(shape, np.float32) if m in zero else rng.normal(5, 1, shape).astype(np.float32)
        if spike:
            data[3, 3, 3] = 1e6  # z-scored: about 80 standard deviations, far above anything else
        nib.save(nib.Nifti1Image(data, affine), folder / f"{case_id}_{m}.nii.gz")
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_oversized_and_failing_cases_are_isolated_with_the_summary_last(tmp_path):
    data = tmp_path / "cases"
    _case_folder(data, "huge", zooms=(100.0, 100.0, 100.0))  # a header scaled x50: ~30 GB once resampled
    _case_folder(data, "fails", spike=True)
    _case_folder(data, "good")
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save({}, ckpt)
    wf = workflow([INFER, TINY], workflow_type="infer", bundle_root=str(tmp_path), dataset_dir=str(data),
                  output_dir=str(tmp_path / "pred"), ckpt_path=str(ckpt), num_workers=0, roi_size=[32, 32],
                  network_def={"_target_": "tests.helpers.FailOnCase", "num_classes": 4})
    wf.initialize()
    wf.run()
    with pytest.raises(SystemExit) as err:
        wf.finalize()
    assert err.value.code != 0
    message = str(err.value)
    assert "huge" in message and "`max_voxels`" in message and "pixdim" in message
    assert "fails" in message and "simulated failure" in message
    assert sorted(os.listdir(tmp_path / "pred")) == ["good_seg.nii.gz"]


def test_inference_exit_status_and_last_output_from_the_command_line(tmp_path):
    data = tmp_path / "cases"
    _case_folder(data, "good")
    bad = _case_folder(data, "bad")
    os.remove(bad / "bad_t2.nii.gz")
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    torch.save(_tiny_network().state_dict(), ckpt)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
           json.dumps([str(INFER), str(TINY)]), "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
           "--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--bundle_root", str(tmp_path),
           "--dataset_dir", str(data), "--output_dir", str(tmp_path / "pred"), "--ckpt_path", str(ckpt),
           "--num_workers", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("  bad: ")  # the summary closes the output
    assert "1 case(s) could not be segmented" in proc.stderr
    assert os.listdir(tmp_path / "pred") == ["good_seg.nii.gz"]


def test_validation_case_without_label_is_named_with_its_list(tmp_path):
    from diffmed_monai.data import check_datalist

    data = tmp_path / "cases"
    _case_folder(data, "nolabel")
    case = {"case_id": "nolabel", "image": [f"nolabel/nolabel_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]}
    with pytest.raises(ValueError) as err:
        check_datalist({"training": [], "validation": [case]}, str(data), ["t1", "t1ce", "t2", "flair"],
                       require_label=True)
    assert "nolabel" in str(err.value) and "'validation' list" in str(err.value)


def test_all_zero_modality_is_warned_about(tmp_path, caplog):
    from diffmed_monai.data import check_case

    _case_folder(tmp_path, "dark", zero=("t2",))
    case = {"case_id": "dark", "image": [f"dark/dark_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]}
    caplog.set_level("WARNING", logger="diffmed_monai")
    check_case(case, str(tmp_path), ["t1", "t1ce", "t2", "flair"])
    assert "dark" in caplog.text and "t2" in caplog.text and "all zero" in caplog.text


def test_training_refuses_a_bad_resume_checkpoint_naming_it(small_data, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "checkpoint_epoch=3.pt").write_bytes(os.urandom(1000))
    wf = workflow([TRAIN, TINY], bundle_root=str(tmp_path), dataset_dir=str(small_data), epochs=4, roi_size=[48, 48])
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert "checkpoint_epoch=3.pt" in error_chain(err.value) and "`ckpt_dir`" in error_chain(err.value)
