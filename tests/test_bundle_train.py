"""Training bundle: presets resolve, a 2-epoch tiny run learns and checkpoints, resume, DDP, bad data refused."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from .helpers import BUNDLE, PRESETS, REPO, error_chain, workflow

TRAIN = BUNDLE / "configs" / "train.json"
TINY = PRESETS / "tiny.json"


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from diffmed_monai.data import make_demo_dataset, scan_brats, split_cases, write_datalist

    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(str(root), num_cases=6, seed=0)
    cases, _ = scan_brats(str(root))
    train, val = split_cases(cases, val_fraction=0.34, seed=0)
    write_datalist(str(root / "datalist.json"), train, val, test=val)
    return root


def _tb_scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        acc = EventAccumulator(path)
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [(e.step, e.value) for e in acc.Scalars(tag)]
    return [v for _, v in sorted(values)]


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS.glob("*.json")))
def test_every_preset_parses_and_resolves(preset):
    from monai.bundle import ConfigParser

    for base in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config([str(BUNDLE / "configs" / base), str(PRESETS / preset)])
        parser.parse()
        net = parser.get_parsed_content("network_def", instantiate=False)
        assert net is not None
        if base == "train.json":
            parser.get_parsed_content("train#preprocessing")
            parser.get_parsed_content("validate#inferer")
            loss = parser.get_parsed_content("loss")
            assert loss.kd.teacher_dim == parser.get_parsed_content("teacher_dim")
            assert parser.get_parsed_content("num_classes") == len(parser.get_parsed_content("class_names"))
        else:
            parser.get_parsed_content("preprocessing")


def test_missing_teacher_weights_fail_before_any_preprocessing(demo_data, tmp_path):
    """The teacher is built only when training runs, first in ``run``: ``initialize`` (what ``monai.bundle.load``
    and the Model Zoo's checks do) needs no weights, and ``run`` fails naming the key before any case of the data
    set is read or written to the store (hours at BraTS scale)."""
    store = tmp_path / "store"
    for step in ("check_properties", "run"):
        wf = workflow([TRAIN], bundle_root=str(tmp_path), dataset_dir=str(demo_data))
        wf.initialize()
        with pytest.raises(Exception) as err:
            getattr(wf, step)()
        assert "teacher_weights" in error_chain(err.value), step
        assert not store.exists() or not any(store.rglob("*.npy")), step


@pytest.mark.parametrize("extra", ["multi_gpu_train.json", "in_memory_train.json"])
def test_other_training_configs_build_the_teacher_only_in_run(extra):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(BUNDLE / "configs" / extra)])
    assert not any("@teacher" in expr for expr in parser["initialize"])
    assert parser["run"][0] == "$@teacher" and parser["run"][-1] == "$@train#trainer.run()"


def test_bundle_load_with_default_train_workflow_needs_no_teacher(tmp_path, monkeypatch):
    """``monai.bundle.load`` builds the default ``train`` workflow (``initialize`` included) to get the network:
    it works without teacher weights and loads the checkpoint into the student network."""
    from monai.bundle import ConfigParser, load

    from diffmed_monai.networks import teacher_width

    tiny = ConfigParser.load_config_file(str(TINY))
    net_override = {k.split("#", 1)[1]: v for k, v in tiny.items() if k.startswith("network_def#")}
    net_override["teacher_dim"] = teacher_width(tiny["teacher_arch"])
    root = tmp_path / "bundles" / "b"
    shutil.copytree(BUNDLE / "configs", root / "configs")
    (root / "models").mkdir()
    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(TINY)])
    state = parser.get_parsed_content("network_def").state_dict()
    torch.save(state, root / "models" / "model.pt")
    monkeypatch.chdir(root)
    net = load(name="b", bundle_dir=str(tmp_path / "bundles"), source="github", device="cpu",
               net_override=net_override)
    loaded = net.state_dict()
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)


@pytest.mark.slow
def test_two_epoch_tiny_training_run(demo_data, tmp_path):
    wf = workflow([TRAIN, TINY], bundle_root=str(tmp_path), dataset_dir=str(demo_data), epochs=2, val_interval=1)
    wf.initialize()
    assert not wf.check_properties()
    wf.run()
    wf.finalize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2
    assert os.path.isfile(tmp_path / "models" / "checkpoint_epoch=2.pt")
    assert os.path.isfile(tmp_path / "models" / "model.pt")
    saved = torch.load(tmp_path / "models" / "checkpoint_epoch=2.pt", weights_only=True)
    assert set(saved) == {"model", "optimizer", "loss", "trainer"}
    assert not any(k.startswith("teacher") for k in saved["model"])
    losses = _tb_scalars(str(tmp_path / "eval" / "tensorboard"), "train_loss")
    per_epoch = len(losses) // 2
    assert per_epoch >= 2
    first, last = sum(losses[:per_epoch]) / per_epoch, sum(losses[per_epoch:]) / per_epoch
    assert last < first, losses
    assert _tb_scalars(str(tmp_path / "eval" / "tensorboard"), "loss_kd")
    progress = tmp_path / "eval" / "progress.png"  # written after each validation (matplotlib is a dev extra)
    assert progress.read_bytes().startswith(b"\x89PNG") and progress.stat().st_size > 10_000


@pytest.mark.slow
def test_interrupted_run_resumes_from_saved_epoch(demo_data, tmp_path):
    overrides = dict(bundle_root=str(tmp_path), dataset_dir=str(demo_data), epochs=2, val_interval=5)
    wf = workflow([TRAIN, TINY], **overrides)
    wf.initialize()
    handlers = wf.parser.get_parsed_content("train#handlers")
    trainer = wf.parser.get_parsed_content("train#trainer")
    from .helpers import InterruptAt

    InterruptAt(epoch=2).attach(trainer)
    with pytest.raises(Exception) as err:
        wf.run()
    assert "simulated interruption" in error_chain(err.value)
    assert os.path.isfile(tmp_path / "models" / "checkpoint_epoch=1.pt")
    epoch_length = trainer.state.epoch_length

    wf2 = workflow([TRAIN, TINY], **overrides)
    wf2.initialize()
    wf2.run()
    resumed = [h for h in wf2.parser.get_parsed_content("train#handlers") if hasattr(h, "loaded_path")][0]
    assert resumed.loaded_path.endswith("checkpoint_epoch=1.pt")
    trainer2 = wf2.parser.get_parsed_content("train#trainer")
    assert trainer2.state.epoch == 2 and trainer2.state.iteration == 2 * epoch_length
    assert handlers  # the first run's handlers were built


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_read_disjoint_shards_of_the_store(demo_data, tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(TRAIN), str(TINY)])
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(demo_data)})
    parser.get_parsed_content("preprocess_store")  # the ranks only read the store; preprocessing comes first
    train_ids = {os.path.basename(c["case_id"]) for c in parser.get_parsed_content("train#datalist")}
    record = tmp_path / "record.json"
    record.write_text(json.dumps({
        "+imports": ["$from tests.helpers import RecordSlices"],
        "train#trainer#train_handlers": "$[RecordSlices(os.path.join(@bundle_root, 'rank{rank}.json'))]"
                                        " + (@train#handlers[:3] if dist.get_rank() > 0 else @train#handlers)",
    }))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training",
        "--config_file",
        json.dumps([str(TRAIN), str(BUNDLE / "configs" / "multi_gpu_train.json"), str(TINY), str(record)]),
        "--meta_file", str(BUNDLE / "configs" / "metadata.json"),
        "--logging_file", str(BUNDLE / "configs" / "logging.conf"),
        "--bundle_root", str(tmp_path), "--dataset_dir", str(demo_data), "--epochs", "1",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert os.path.isfile(tmp_path / "models" / "checkpoint_epoch=1.pt")
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)  # DDP wrapper not in the published weights
    shards = [{tuple(item) for item in json.loads((tmp_path / f"rank{r}.json").read_text())} for r in (0, 1)]
    assert shards[0] and shards[1]
    assert not shards[0] & shards[1]  # each rank read its own slices
    assert {cid for cid, _ in shards[0] | shards[1]} <= train_ids


def test_bad_training_data_stops_before_training(demo_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    content = json.loads((data / "datalist.json").read_text())
    victim = content["training"][0]["image"][2]
    os.remove(data / victim)
    wf = workflow([TRAIN, TINY], bundle_root=str(tmp_path / "run"), dataset_dir=str(data))
    with pytest.raises(Exception) as err:
        wf.initialize()
        wf.run()
    message = error_chain(err.value)
    assert os.path.basename(victim) in message
    assert not os.path.exists(tmp_path / "run" / "models")
