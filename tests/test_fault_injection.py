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
    # killed while epoch 2's weights were written (before the record heard of them): the record still names epoch 1's
    # model, the one on disk; resumed after epoch 2, the new process scores 1, 2, 3 at epochs 3, 4, 5
    assert best_before == {**best_before, "epoch": 1, "metric": 1.0} and "pending" not in best_before
    assert best_after["metric"] == 3.0 and best_after["epoch"] == 5 and "pending" not in best_after
    torch.load(models / "model.pt", weights_only=True)


def test_resume_never_replaces_the_best_model_with_a_worse_one(tmp_path):
    from diffmed_monai.engines import BestModelCheckpoint

    net = torch.nn.Linear(2, 2)
    validate = _validate

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
    engine.run([0], max_epochs=7)
    assert handler.loaded_path.endswith("checkpoint_epoch=5.pt")
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
    torch.save({"model": torch.nn.Linear(2, 2).state_dict()}, models / "checkpoint_epoch=3.pt")  # another network
    wf = workflow([TRAIN, TINY], bundle_root=str(tmp_path), dataset_dir=str(small_data), epochs=4, roi_size=[48, 48])
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    assert "checkpoint_epoch=3.pt" in error_chain(err.value) and "`ckpt_dir`" in error_chain(err.value)


# ---------------------------------------------------------------------------------------------------------------
# "Nothing lost, round two": booleans, the best-model record, resume, case ids, fresh runs, NaN, sizes, raw errors


@pytest.mark.parametrize("typed, expected", [("false", False), ("False", False), ("0", False), ("no", False),
                                             (0, False), (False, False), ("true", True), ("True", True),
                                             ("1", True), ("yes", True), (1, True), (True, True)])
def test_booleans_are_parsed_as_people_type_them(typed, expected):
    from monai.bundle import ConfigParser

    from diffmed_monai.utils import as_bool

    assert as_bool(typed, "overwrite") is expected
    for config, key in ((INFER, "overwrite"), (INFER, "save_png"), (TRAIN, "resume"), (TRAIN, "crop_foreground")):
        parser = ConfigParser()
        parser.read_config([str(config), str(TINY)])
        parser.update({key: typed})  # what `python -m monai.bundle run ... --key <typed>` does
        assert parser.get_parsed_content(f"flags#{key}") is expected


@pytest.mark.parametrize("typed", ["flase", "", "2", 2, None, [True]])
def test_other_boolean_values_are_refused_naming_the_key(typed):
    from monai.bundle import ConfigParser

    from diffmed_monai.utils import as_bool, parse_flags

    with pytest.raises(ValueError, match="`resume`"):
        as_bool(typed, "resume")
    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(TINY)])
    parser.update({"resume": typed})
    with pytest.raises(Exception) as err:
        parser.get_parsed_content("train#handlers")  # the checkpoint handler takes `resume`
    assert "`resume`" in error_chain(err.value)

    def command(path: str, overwrite: bool = False):
        return overwrite

    assert parse_flags(command)("x", overwrite="false") is False  # the `diffmed-monai` command line
    with pytest.raises(ValueError, match="--overwrite"):
        parse_flags(command)("x", overwrite=typed)


def test_every_boolean_config_key_goes_through_the_one_parser():
    from monai.bundle import ConfigParser

    for config in (TRAIN, INFER, BUNDLE / "configs" / "evaluate.json"):
        content = json.loads(config.read_text())
        for key, value in content.items():
            if isinstance(value, bool):  # a user-facing boolean key: parsed once, in `flags`
                assert f"flags#{key}" in content or key in content.get("flags", {}), (config.name, key)
        flags = dict(content.get("flags", {}))
        flags.update({k[len("flags#"):]: v for k, v in content.items() if k.startswith("flags#")})
        for key, entry in flags.items():  # the one parse: as_bool of the raw key, naming it
            parse = {"_target_": "diffmed_monai.utils.as_bool", "value": f"@{key}", "key": key}
            assert entry == parse, (config.name, key)
        text = json.dumps({k: v for k, v in content.items() if k != "flags" and not k.startswith("flags#")})
        for key in flags:
            assert f'"@{key}"' not in text and f"@{key} " not in text, (config.name, key)  # only @flags#<key>
    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(BUNDLE / "configs" / "evaluate.json"), str(TINY)])
    parser.update({"save_png": "false", "flip_tta": "no", "allow_missing_modalities": "yes"})
    assert parser.get_parsed_content("flags#save_png") is False
    assert parser.get_parsed_content("flags#allow_missing_modalities") is True


def _validate(handler, score, epoch):
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.state.metrics, engine.state.key_metric_name, engine.state.epoch = {"dice": score}, "dice", epoch
    handler(engine)
    return engine


class _KilledAt(BaseException):
    pass


@pytest.mark.parametrize("kill_before", ["model.pt", "model.json"])
def test_a_killed_best_model_save_never_leaves_a_record_ahead_of_its_weights(tmp_path, monkeypatch, kill_before):
    import diffmed_monai.utils.files as files
    from diffmed_monai.engines import BestModelCheckpoint

    net = torch.nn.Linear(2, 2)
    _validate(BestModelCheckpoint(str(tmp_path), net), 0.33, 1)
    first = (tmp_path / "model.pt").read_bytes()
    with torch.no_grad():
        net.weight.fill_(5.0)
    real_replace, renames = os.replace, []

    def killed_replace(src, dst):  # a kill just before `kill_before` gets its new content (after the weights'
        renames.append(os.path.basename(dst))  # temporary file and the pending record are durable)
        nth = 1 if kill_before == "model.pt" else 2  # model.json: its pending entry is the first rename
        if os.path.basename(dst) == kill_before and renames.count(kill_before) == nth:
            raise _KilledAt()
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", killed_replace)
    with pytest.raises(_KilledAt):
        _validate(BestModelCheckpoint(str(tmp_path), net), 0.52, 3)
    monkeypatch.setattr(files.os, "replace", real_replace)
    record = _record(tmp_path)
    assert record["epoch"] == 1 and record["pending"]["epoch"] == 3  # the best entry names what is on disk

    resumed = BestModelCheckpoint(str(tmp_path), torch.nn.Linear(2, 2), resume=True)
    if kill_before == "model.pt":  # the new weights never landed: epoch 1's model and record stand
        assert resumed.best["epoch"] == 1 and (tmp_path / "model.pt").read_bytes() == first
    else:  # the weights landed, the final record did not: repaired from the pending entry
        assert resumed.best["epoch"] == 3 and resumed.best["metric"] == 0.52
        assert torch.load(tmp_path / "model.pt", weights_only=True)["weight"].eq(5.0).all()
        assert _record(tmp_path)["epoch"] == 3 and "pending" not in _record(tmp_path)
    _validate(resumed, 0.5575, 4)  # a better epoch than the model on disk is always saved
    assert resumed.best["metric"] == 0.5575 and _record(tmp_path)["epoch"] == 4


def test_a_best_model_that_does_not_match_its_record_is_refused_with_both_paths(tmp_path):
    from diffmed_monai.engines import BestModelCheckpoint

    net = torch.nn.Linear(2, 2)
    _validate(BestModelCheckpoint(str(tmp_path), net), 0.5, 2)
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "model.pt")  # replaced by hand
    with pytest.raises(CheckpointError) as err:
        BestModelCheckpoint(str(tmp_path), net, resume=True)
    assert str(tmp_path / "model.pt") in str(err.value) and str(tmp_path / "model.json") in str(err.value)
    (tmp_path / "model.json").write_text('{"key_metric_name": "dice", "met')  # truncated
    with pytest.raises(CheckpointError, match="unreadable.*`resume`"):
        BestModelCheckpoint(str(tmp_path), net, resume=True)


def test_resume_sets_aside_an_unreadable_newer_checkpoint_and_keeps_the_last_good_one(tmp_path):
    from ignite.engine import Engine

    from diffmed_monai.engines import ResumableCheckpoint

    net = torch.nn.Linear(2, 2)
    trainer = {"iteration": 5, "epoch_length": 1, "max_epochs": 9}
    torch.save({"model": net.state_dict(), "trainer": trainer}, tmp_path / "checkpoint_epoch=5.pt")
    good = (tmp_path / "checkpoint_epoch=5.pt").read_bytes()
    (tmp_path / "checkpoint_epoch=6.pt").write_bytes(b"")  # a disk that filled up
    nan = {k: torch.full_like(v, float("nan")) for k, v in net.state_dict().items()}
    torch.save({"model": nan, "trainer": {**trainer, "iteration": 7}}, tmp_path / "checkpoint_epoch=7.pt")
    engine = Engine(lambda e, b: None)
    handler = ResumableCheckpoint(str(tmp_path), {"model": net}, n_saved=1)
    handler.attach(engine)
    assert (tmp_path / "checkpoint_epoch=5.pt").read_bytes() == good  # nothing deleted before a load
    engine.run([0], max_epochs=6)
    assert handler.loaded_path.endswith("checkpoint_epoch=5.pt") and engine.state.iteration == 6
    names = sorted(os.listdir(tmp_path))
    assert names == ["checkpoint_epoch=6.pt", "checkpoint_epoch=6.pt.unreadable", "checkpoint_epoch=7.pt.unreadable"]
    assert (tmp_path / "checkpoint_epoch=6.pt.unreadable").read_bytes() == b""  # set aside, not deleted


def test_a_fresh_run_moves_the_earlier_run_aside(tmp_path):
    from ignite.engine import Engine

    from diffmed_monai.engines import BestModelCheckpoint, ResumableCheckpoint

    net = torch.nn.Linear(2, 2)
    _validate(BestModelCheckpoint(str(tmp_path), net), 0.9, 4)
    torch.save({"model": net.state_dict(), "trainer": {"iteration": 5, "epoch_length": 1}},
               tmp_path / "checkpoint_epoch=5.pt")
    (tmp_path / "notes.txt").write_text("mine")
    before = {name: (tmp_path / name).read_bytes() for name in ("model.pt", "model.json", "checkpoint_epoch=5.pt")}
    engine = Engine(lambda e, b: None)
    ResumableCheckpoint(str(tmp_path), {"model": net}, resume="false" == "true").attach(engine)
    earlier = [p for p in tmp_path.iterdir() if p.name.startswith("earlier_run_")]
    assert len(earlier) == 1 and {n: (earlier[0] / n).read_bytes() for n in before} == before  # byte-identical
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["notes.txt"]
    engine.run([0], max_epochs=1)
    fresh = BestModelCheckpoint(str(tmp_path), net, resume=True)  # the next default resume: the new run only
    assert fresh.best is None and epoch_checkpoints(tmp_path) == [(1, "checkpoint_epoch=1.pt")]


def test_no_non_finite_weights_are_ever_written(tmp_path):
    from ignite.engine import Engine

    from diffmed_monai.engines import (
        AtomicDiskSaver,
        BestModelCheckpoint,
        NonFiniteLossError,
        NonFiniteWeightsError,
        StopOnNonFiniteLoss,
    )

    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.bias[0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match="bias"):
        _validate(BestModelCheckpoint(str(tmp_path), net), 0.5, 1)
    with pytest.raises(NonFiniteWeightsError):
        AtomicDiskSaver(tmp_path)({"model": net.state_dict()}, "checkpoint_epoch=1.pt")
    assert os.listdir(tmp_path) == []

    losses = iter([1.0, 0.5, float("nan"), 0.1])
    engine = Engine(lambda e, b: {"loss": torch.tensor(next(losses))})
    StopOnNonFiniteLoss().attach(engine)
    with pytest.raises(NonFiniteLossError, match="nan at epoch 1, iteration 3"):
        engine.run([0] * 4, max_epochs=1)


def test_case_ids_that_are_not_plain_names_are_refused_and_nothing_is_written_elsewhere(tmp_path):
    from diffmed_monai.data import InferenceCases, make_demo_dataset
    from diffmed_monai.transforms import output_path_for
    from diffmed_monai.utils import UnsafeNameError, case_id_of

    data = tmp_path / "data"
    make_demo_dataset(str(data), num_cases=1, shape=(32, 32, 16), seed=1)
    case = sorted(os.listdir(data))[0]
    image = [f"{case}/{case}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    entries = [{"case_id": f"{data}/{case}_pred", "image": image}, {"case_id": "../elsewhere/x", "image": image},
               {"case_id": "a\\b", "image": image}, {"case_id": "..", "image": image},
               {"case_id": case, "image": image}]
    (tmp_path / "datalist.json").write_text(json.dumps({"testing": entries}))
    cases = InferenceCases(str(data), ["t1", "t1ce", "t2", "flair"], str(tmp_path / "out"),
                           datalist=str(tmp_path / "datalist.json"))
    assert [c["case_id"] for c in cases.valid] == [case]
    assert len(cases.failures) == 4 and all("entry" in why and "`testing`" in why for _, why in cases.failures)
    with pytest.raises(UnsafeNameError):
        output_path_for(str(tmp_path / "out"), "../x")
    assert case_id_of({"case_id": str(data / case), "image": image}) == case  # MONAI's loader joined the folder


def test_store_checksums_catch_damaged_files_naming_the_case(tmp_path):
    from diffmed_monai.data import SliceStore, StoreError, StoreSliceDataset, make_demo_dataset, scan_brats

    data = tmp_path / "data"
    make_demo_dataset(str(data), num_cases=1, shape=(40, 40, 16), seed=2)
    cases, _ = scan_brats(str(data))
    store = SliceStore(str(tmp_path / "store"), ["t1", "t1ce", "t2", "flair"], [0, 1, 2, 4], [1.0, 1.0, 1.0],
                       transforms={"load": _load_transforms()})
    store.preprocess(cases, base_dir=str(data), progress=False)
    dataset = StoreSliceDataset(cases, store, base_dir=str(data))
    image_file = store.image_path(cases[0]["case_id"])
    original = open(image_file, "rb").read()
    damaged = bytearray(original)
    damaged[-200:-198] = np.float16(np.nan).tobytes()  # bytes of the last slice overwritten
    open(image_file, "wb").write(bytes(damaged))
    dataset[0]  # other slices read as before
    with pytest.raises(StoreError, match=f"{cases[0]['case_id']}.*image.npy.*verify_store"):
        dataset[len(dataset) - 1]
    assert store.preprocess(cases, base_dir=str(data), progress=False).present == 1  # sizes alike: not checked
    summary = store.preprocess(cases, base_dir=str(data), progress=False, verify=True)
    assert summary.written == 1 and open(image_file, "rb").read() == original
    dataset[len(dataset) - 1]


def _load_transforms():
    from monai.transforms import LoadImaged, MapLabelValued, Orientationd

    return [LoadImaged(["image", "label"], image_only=True, ensure_channel_first=True),
            Orientationd(["image", "label"], "RAS"), MapLabelValued("label", [0, 1, 2, 4], [0, 1, 2, 3])]


def test_volumes_too_small_for_the_network_are_refused_thin_ones_warned(tmp_path, caplog):
    from diffmed_monai.data import InferenceCases

    data = tmp_path / "data"
    for name, shape in (("tiny", (10, 10, 10)), ("slab", (64, 64, 1)), ("ok", (32, 32, 8))):
        (data / name).mkdir(parents=True)
        for m in ("t1", "t1ce", "t2", "flair"):
            volume = np.random.default_rng(0).random(shape).astype(np.float32)
            nib.save(nib.Nifti1Image(volume, np.eye(4)), data / name / f"{name}_{m}.nii.gz")
    with caplog.at_level("WARNING"):
        cases = InferenceCases(str(data), ["t1", "t1ce", "t2", "flair"], str(tmp_path / "out"), pixdim=[1, 1, 1])
    assert sorted(c["case_id"] for c in cases.valid) == ["ok", "slab"]
    (case_id, why), = cases.failures
    assert case_id == "tiny" and "tiny_t1.nii.gz" in why and "`pixdim`" in why and "token" in why
    assert "slab" in caplog.text and "1 axial slice" in caplog.text


def test_raw_errors_name_the_file_and_the_key(tmp_path, monkeypatch):
    from diffmed_monai.data import InferenceCases, read_datalist
    from diffmed_monai.utils import write_atomic

    datalist = tmp_path / "datalist.json"
    datalist.write_text('{"training": [{"image": ["a.nii.gz"], "label": "b.ni')  # truncated
    with pytest.raises(ValueError, match=f"{datalist}.*not valid JSON.*`datalist`"):
        read_datalist(str(datalist), "training", str(tmp_path))
    with pytest.raises(ValueError, match=f"{datalist}.*`datalist`"):
        InferenceCases(str(tmp_path), ["t1"], str(tmp_path / "out"), datalist=str(datalist))

    def full_disk(f):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match=f"No space left on device: cannot write {tmp_path / 'x.nii.gz'}.*`output_dir`"):
        write_atomic(tmp_path / "x.nii.gz", full_disk, key="output_dir")
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


KILLED_PREPROCESSING = textwrap.dedent(
    """
    import os, signal, sys, time
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing
    from diffmed_monai.data import store

    def work(path):
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)

    if __name__ == "__main__":
        pool = ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), store._init_worker, (None,))
        pool.submit(work, sys.argv[1])
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)  # the parent dies as under `kill -9`
    """
)


def test_preprocessing_workers_die_with_their_parent(tmp_path):
    import time

    script, pid_file = tmp_path / "killed.py", tmp_path / "worker.pid"
    script.write_text(KILLED_PREPROCESSING)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), *sys.path]))
    killed = subprocess.run([sys.executable, str(script), str(pid_file)], capture_output=True, timeout=120, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    worker = int(pid_file.read_text())
    for _ in range(100):
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived its killed parent")
