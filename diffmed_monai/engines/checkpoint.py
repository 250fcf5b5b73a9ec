"""Crash-safe training checkpoints on Ignite's ``Checkpoint``: atomic writes, resume, best model kept across restarts.

* :class:`AtomicDiskSaver`: Ignite save handler. Each file is written to a temporary file in the same folder,
  flushed to disk and renamed over its name; a file Ignite asks to remove goes only after the next save is
  complete (Ignite's ``Checkpoint`` removes the old file before it writes the new one).
* :class:`ResumableCheckpoint` (trainer handler): ``checkpoint_epoch=N.pt`` every ``save_interval`` epochs, resume
  from the newest at start, stale ones from earlier runs cleaned per ``n_saved``.
* :class:`BestModelCheckpoint` (evaluator handler): ``model.pt`` (the network's ``state_dict``) whenever the key
  metric improves; its score and epoch sit in ``model.json`` beside it, so a resumed run replaces ``model.pt``
  only with a better model.
* :func:`check_checkpoint`: a checkpoint that cannot be read or does not fit the network is an error naming the
  file, the config key and each parameter that differs.
* No file with a non-finite (NaN/inf) tensor is ever written (:class:`NonFiniteWeightsError`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader
from torch import nn

from ..utils import as_bool, sha256_file, write_atomic

__all__ = [
    "AtomicDiskSaver",
    "BestModelCheckpoint",
    "CheckpointError",
    "CheckedCheckpointLoader",
    "NonFiniteWeightsError",
    "ResumableCheckpoint",
    "check_checkpoint",
    "epoch_checkpoints",
    "non_finite_tensors",
]

logger = logging.getLogger(__name__)

EPOCH_CHECKPOINT = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")
#: temporary files :func:`write_atomic` leaves behind when a write is killed (``.<name>.<random>.tmp``)
KILLED_WRITE = re.compile(r"^\.(checkpoint_epoch=\d+\.pt|model\.pt|model\.json)\.[^.]+\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, the config key and what differs."""


class UnreadableCheckpointError(CheckpointError):
    """A file that cannot be read as a checkpoint at all (empty, truncated, not a checkpoint, holding code)."""


class NonFiniteWeightsError(RuntimeError):
    """Refusal to write (or resume from) weights holding NaN or inf values."""


def non_finite_tensors(obj: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in ``obj`` (nested dicts / lists, e.g. a checkpoint or a
    ``state_dict``) that hold a NaN or inf value."""
    if isinstance(obj, torch.Tensor):
        return [prefix or "tensor"] if obj.is_floating_point() and not bool(torch.isfinite(obj).all()) else []
    if isinstance(obj, Mapping):
        return [n for k, v in obj.items() for n in non_finite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, (list, tuple)):
        return [n for i, v in enumerate(obj) for n in non_finite_tensors(v, f"{prefix}.{i}" if prefix else str(i))]
    return []


def _refuse_non_finite(obj: Any, path: str | os.PathLike) -> None:
    bad = non_finite_tensors(obj)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteWeightsError(
            f"Not writing {path}: {len(bad)} tensor(s) hold NaN/inf values ({shown}); the training diverged. The "
            "files already saved are left as they are."
        )


class AtomicDiskSaver(BaseSaveHandler):
    """Ignite save handler writing ``torch.save`` files atomically and removing old ones only after a new one exists.

    Args:
        dirname: folder of the checkpoints (created if missing).
        filename: a fixed file name for every save (e.g. ``model.pt``); default: the name Ignite gives.
        save_on_rank: the only rank that writes under DDP.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, save_on_rank: int = 0) -> None:
        self.dirname = Path(dirname)
        self.filename = filename
        self.save_on_rank = save_on_rank
        self._pending_removals: list[str] = []
        if idist.get_rank() == save_on_rank:
            self.dirname.mkdir(parents=True, exist_ok=True)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        name = self.filename or filename
        _refuse_non_finite(checkpoint, self.dirname / name)
        write_atomic(self.dirname / name, lambda f: torch.save(checkpoint, f), key="ckpt_dir")
        pending, self._pending_removals = self._pending_removals, []
        for old in pending:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        """Remember ``filename`` for removal once the next checkpoint is complete."""
        self._pending_removals.append(self.filename or filename)


def epoch_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, str]]:
    """``[(epoch, file name)]`` of the ``checkpoint_epoch=N.pt`` files in ``ckpt_dir``, oldest first."""
    names = (os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(os.fspath(ckpt_dir)), "*.pt")))
    found = [(int(m.group(1)), m.group(0)) for m in map(EPOCH_CHECKPOINT.match, names) if m]
    return sorted(found)


def _module_of(key: str) -> str:
    """``specific_students.2`` for ``specific_students.2.swin.patch_embed.proj.weight``; the first name otherwise."""
    parts = key.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]


def _teacher_widths() -> dict[str, int]:
    """``teacher_arch`` -> token width, for every architecture the teacher knows."""
    from ..networks.teacher import TEACHER_ARCHS, teacher_width

    return {arch: teacher_width(arch) for arch in TEACHER_ARCHS}


def _archs_of(width: int) -> str:
    """`` (teacher_arch vits16 or vits16plus)`` for a teacher width, ``""`` if no architecture has it."""
    try:
        archs = [arch for arch, w in _teacher_widths().items() if w == width]
    except Exception:  # timm's registry unavailable: the width alone
        return ""
    return f" (`teacher_arch` {' or '.join(archs)})" if archs else ""


def _bundle_configs() -> tuple[Path, Path] | None:
    """``(inference.json, presets folder)`` beside this code: the package's ``bundle/configs`` and ``configs/``
    (links to the repository's), or a packed bundle's ``configs/`` and ``configs/presets/``."""
    here = Path(__file__).resolve()
    for configs, presets in ((here.parents[1] / "bundle" / "configs", here.parents[1] / "configs"),
                             (here.parents[2] / "configs", here.parents[2] / "configs" / "presets")):
        if presets.is_dir() and (configs / "inference.json").is_file():
            return configs / "inference.json", presets
    return None


def _fitting_settings(saved: Mapping[str, Any]) -> str:
    """What would build a network of the checkpoint's sizes: the ``teacher_arch`` of its projection width and the
    presets of the bundle whose ``network_def#feature_size`` is the students' width (``""`` if nothing is known)."""
    def shape(suffix: str) -> tuple:
        key = next((k for k in saved if k.endswith(suffix)), None)
        return tuple(getattr(saved[key], "shape", ())) if key is not None else ()

    width, features = shape("projection.weight")[-1:], shape("shared_student.swin.patch_embed.proj.weight")[:1]
    archs = []
    if width:
        with contextlib.suppress(Exception):
            archs = [arch for arch, w in _teacher_widths().items() if w == width[0]]
    presets, configs = [], _bundle_configs()
    if features and configs is not None:
        with contextlib.suppress(Exception):
            base = json.loads(configs[0].read_text(encoding="utf-8"))
            base_size, base_arch = base["network_def"]["feature_size"], base.get("teacher_arch")
            found = []
            for path in sorted(configs[1].glob("*.json")):
                preset = json.loads(path.read_text(encoding="utf-8"))
                if preset.get("network_def#feature_size", base_size) == features[0]:
                    found.append((path.stem, preset.get("teacher_arch", base_arch)))
            presets = [n for n, arch in found if arch in archs] or [n for n, _ in found]
            if base_size == features[0] and len(presets) != 1:
                presets = ["none (the default network)"] + presets
    parts = []
    if archs:
        parts.append(f"`--teacher_arch {' or '.join(archs)}` (teacher width {width[0]})")
    if presets:
        parts.append(f"the preset {' or '.join(presets)} (<name>.json of the presets in `config_file`: students' "
                     f"`feature_size` {features[0]})")
    return "; it fits " + " with ".join(parts) if parts else ""


def _describe_mismatch(name: str, saved: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """One line per parameter shaped otherwise in ``saved`` than in ``expected`` (a ``state_dict``), then one line per
    module with parameters missing from, or only in, the checkpoint."""
    named, other = [], []  # the differences a config key explains first, then the other shapes, in network order
    for key in (k for k in expected if k in saved):
        got, want = tuple(getattr(saved[key], "shape", ())), tuple(getattr(expected[key], "shape", ()))
        if got == want:
            continue
        if key.endswith("decoder.classifier.weight") and got[:1] != want[:1]:
            named.append(f"{name}.{key}: checkpoint has {got[0]} classes, the config {want[0]} (`label_values`)")
        elif key.endswith("projection.weight") and len(got) == len(want) == 3 and (got[0], got[-1]) != (
            want[0], want[-1]
        ):
            if got[0] != want[0]:
                named.append(f"{name}.{key}: checkpoint has {got[0]} modalities, the config {want[0]} (`modalities`)")
            if got[-1] != want[-1]:
                named.append(f"{name}.{key}: checkpoint has teacher width {got[-1]}{_archs_of(got[-1])}, the config "
                             f"{want[-1]}{_archs_of(want[-1]) or ' (`teacher_arch`)'}")
        else:
            other.append(f"{name}.{key}: checkpoint {list(got)}, the config {list(want)}")
    lines = named + other
    for keys, where in (([k for k in expected if k not in saved], "missing from the checkpoint"),
                        ([k for k in saved if k not in expected], "in the checkpoint, not in the network")):
        modules: dict[str, int] = {}
        for key in keys:
            modules[_module_of(key)] = modules.get(_module_of(key), 0) + 1
        lines += [f"{name}.{module}: {count} tensor(s) {where}" for module, count in modules.items()]
    return lines


def check_checkpoint(path: str | os.PathLike, load_dict: Mapping[str, Any], key: str = "ckpt_path") -> dict:
    """Read ``path`` safely and check that it fits the objects of ``load_dict``; return the loaded checkpoint.

    A checkpoint holding only one object's ``state_dict`` (``model.pt``) is accepted for a one-object
    ``load_dict``, as MONAI's ``CheckpointLoader`` does. Raises :class:`CheckpointError` naming the file, ``key``
    and, for networks, each parameter that is missing, extra or shaped otherwise (e.g. "checkpoint has 2 classes,
    the config 4 (`label_values`)"); objects are not modified.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint {path!r} does not exist (config key `{key}`).")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # EOFError, UnpicklingError, RuntimeError (zip), pickle that would run code...
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UnreadableCheckpointError(
            f"Checkpoint {path!r} (config key `{key}`) cannot be read as a PyTorch checkpoint of tensors "
            f"({type(err).__name__}: {first_line[:200]}); it is empty, truncated, not a checkpoint, or holds code. "
            f"Point `{key}` at a file written by this bundle's training."
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"Checkpoint {path!r} (config key `{key}`) holds a {type(checkpoint).__name__}, not a dict.")
    if len(load_dict) == 1 and next(iter(load_dict)) not in checkpoint:
        checkpoint = {next(iter(load_dict)): checkpoint}  # a bare state_dict, as model.pt is saved
    lines = []
    for name, obj in load_dict.items():
        if name not in checkpoint:
            lines.append(f"{name}: not in the checkpoint (it holds {sorted(checkpoint)})")
        elif isinstance(obj, nn.Module):
            module = obj.module if isinstance(obj, nn.parallel.DistributedDataParallel) else obj
            lines += _describe_mismatch(name, checkpoint[name], module.state_dict())
    if lines:
        shown = lines[:12] + ([f"... and {len(lines) - 12} more"] if len(lines) > 12 else [])
        states = [checkpoint[n] for n, obj in load_dict.items()
                  if isinstance(obj, nn.Module) and isinstance(checkpoint.get(n), Mapping)]
        hint = next((h for h in map(_fitting_settings, states) if h), "")
        raise CheckpointError(
            f"Checkpoint {path!r} (config key `{key}`) does not fit the network built from the config; use the "
            "presets and keys it was trained with (`modalities`, `label_values`, `teacher_arch`, `network_def#...`)"
            f"{hint}. What differs:\n  " + "\n  ".join(shown)
        )
    return dict(checkpoint)


class CheckedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that first runs :func:`check_checkpoint` (clear errors naming ``ckpt_path``) and
    loads once, however often the engine runs (inference runs its evaluator once per case)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loaded = False

    def __call__(self, engine) -> None:
        if self.loaded:
            return
        check_checkpoint(self.load_path, self.load_dict)
        super().__call__(engine)
        self.loaded = True


def _free_name(path: str) -> str:
    """``path``, or ``<path>.1``, ``<path>.2``... the first that does not exist."""
    target, n = path, 0
    while os.path.lexists(target):
        n += 1
        target = f"{path}.{n}"
    return target


def _set_aside(path: str, suffix: str) -> str:
    """Rename ``path`` to ``<path><suffix>`` (a free name, :func:`_free_name`); return the new path."""
    target = _free_name(path + suffix)
    os.rename(path, target)
    return target


def set_aside_earlier_run(ckpt_dir: str, best_name: str = "model.pt") -> str | None:
    """Move an earlier run's files (``model.pt``, ``model.json``, ``checkpoint_epoch=N.pt``, set-aside unreadable
    checkpoints) from ``ckpt_dir`` into ``ckpt_dir/earlier_run_<UTC time>/``; return that folder, or ``None`` when
    there was nothing to move. A fresh training (``resume`` false) calls it, so it never replaces an earlier run's
    best model nor leaves its checkpoints for a later resume."""
    if not os.path.isdir(ckpt_dir):
        return None
    record = os.path.splitext(best_name)[0] + ".json"
    names = [n for n in sorted(os.listdir(ckpt_dir)) if n in (best_name, record) or EPOCH_CHECKPOINT.match(n)
             or ".unreadable" in n and n.startswith("checkpoint_epoch=")]
    if not names:
        return None
    folder = _free_name(os.path.join(ckpt_dir, time.strftime("earlier_run_%Y%m%d-%H%M%S", time.gmtime())))
    os.makedirs(folder)
    for name in names:
        os.rename(os.path.join(ckpt_dir, name), os.path.join(folder, name))
    logger.warning("`resume` is false: the earlier run's %s moved from %s to %s; this training starts its own.",
                   ", ".join(names), ckpt_dir, folder)
    return folder


class ResumableCheckpoint:
    """Save a resumable checkpoint every ``save_interval`` epochs and resume from the newest usable one at start.

    Attach it to the trainer like any handler. It adds the trainer itself as ``"trainer"`` to ``save_dict`` (so
    the config needs no circular reference to the trainer) and saves ``checkpoint_epoch=N.pt`` into ``ckpt_dir``
    with Ignite's ``Checkpoint`` and :class:`AtomicDiskSaver`: a kill at any moment loses at most the current
    epoch, and no checkpoint with NaN/inf weights is written.

    With ``resume`` (default), before the first iteration the checkpoints are tried newest first: one that cannot
    be read (empty, truncated: a full disk) or holds NaN/inf is renamed ``<name>.unreadable`` and reported, and the
    next older one is tried; the first usable one is checked against the network (:func:`check_checkpoint`: a
    checkpoint of another network is an error, not skipped) and loaded (network, optimiser, KD statistics, trainer
    epoch and iteration; ``max_epochs`` stays the configured one). Only then are older checkpoints beyond ``n_saved``
    removed: the last good checkpoint is never deleted before a newer one has loaded.

    Without ``resume`` (a fresh training), an earlier run's files in ``ckpt_dir`` are moved aside first
    (:func:`set_aside_earlier_run`), so that run's best model is never replaced and its checkpoints are never
    resumed later.

    Args:
        ckpt_dir: folder for the checkpoints. save_dict: name -> object with a ``state_dict`` (no teacher).
        resume: resume from the newest checkpoint (config key ``resume``). save_interval: epochs between saves.
        n_saved: how many epoch checkpoints to keep.
    """

    def __init__(
        self, ckpt_dir: str, save_dict: Mapping, resume: bool = True, save_interval: int = 1, n_saved: int = 1
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.save_dict = dict(save_dict)
        self.resume = as_bool(resume, "resume")
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.loaded_path: str | None = None

    def attach(self, engine) -> None:
        objects = {**self.save_dict, "trainer": engine}
        checkpointer = Checkpoint(
            objects, AtomicDiskSaver(self.ckpt_dir), score_function=lambda e: e.state.epoch, score_name="epoch",
            n_saved=self.n_saved,
        )
        if os.path.isdir(self.ckpt_dir) and idist.get_rank() == 0:  # leftovers of writes killed in earlier runs
            for name in filter(KILLED_WRITE.match, os.listdir(self.ckpt_dir)):
                os.remove(os.path.join(self.ckpt_dir, name))
        if not self.resume:
            if idist.get_rank() == 0:
                set_aside_earlier_run(self.ckpt_dir)
        elif os.path.isdir(self.ckpt_dir) and epoch_checkpoints(self.ckpt_dir):
            engine.add_event_handler(Events.STARTED, self._load, objects, checkpointer)
        else:
            logger.info("No checkpoint in %s: training starts from scratch.", self.ckpt_dir)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), checkpointer)

    def _load(self, engine, objects: Mapping, checkpointer: Checkpoint) -> None:
        existing = epoch_checkpoints(self.ckpt_dir)
        for index in range(len(existing) - 1, -1, -1):
            path = os.path.join(self.ckpt_dir, existing[index][1])
            try:
                checkpoint = check_checkpoint(path, objects, key="ckpt_dir")
                _refuse_non_finite(checkpoint, path)
            except (UnreadableCheckpointError, NonFiniteWeightsError) as err:
                logger.error("Checkpoint %s is not usable: %s", path, str(err).splitlines()[0])
                if idist.get_rank() == 0:
                    logger.error("  set aside as %s; trying the one before it.", _set_aside(path, ".unreadable"))
                continue
            logger.info("Resuming training from %s", path)
            max_epochs = engine.state.max_epochs
            Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
            if engine.state.epoch > max_epochs:
                raise ValueError(
                    f"Checkpoint {path} is at epoch {engine.state.epoch}, beyond `epochs`={max_epochs}; raise "
                    "`epochs` or set `resume` to false."
                )
            engine.state.max_epochs = max_epochs
            self.loaded_path = path
            kept = existing[: index + 1][-self.n_saved:]
            if idist.get_rank() == 0:  # older files beyond n_saved, only now that a newer one has loaded
                for _, name in existing[: index + 1][: -self.n_saved]:
                    os.remove(os.path.join(self.ckpt_dir, name))
            checkpointer.load_state_dict({"_saved": kept})
            return
        logger.warning("No usable checkpoint in %s: training starts from scratch.", self.ckpt_dir)


class BestModelCheckpoint:
    """Evaluator handler: write ``model.pt`` (the network's ``state_dict``) atomically when the key metric improves.

    ``model.json`` beside it records the score, the epoch and the SHA-256 of the ``model.pt`` it describes. Order of
    a save: the weights are written to a temporary file and made durable; the record gains a ``pending`` entry (the
    new score and the file's checksum); the file is renamed to ``model.pt``; the record is rewritten with the new
    model as its best. So the best entry never describes weights that are not on disk, and a kill between any two
    steps is repaired on resume: ``model.pt`` matching the pending entry is the pending model (its weights landed),
    matching the best entry is the recorded one; matching neither is refused naming both files. No weights holding
    NaN/inf are written.

    With ``resume``, a restarted training reads the record back, so ``model.pt`` is only ever replaced by a better
    model and the evaluator's ``best_metric`` / ``best_metric_epoch`` continue; without ``resume`` a new training
    starts its own record (:class:`ResumableCheckpoint` moves an earlier run's files aside). Only rank 0 writes.

    Args:
        save_dir: folder of ``model.pt``. network: the network to save (DDP is unwrapped).
        resume: continue the record of an earlier run (config key ``resume``).
        filename: name of the weights file.
    """

    def __init__(self, save_dir: str, network: nn.Module, resume: bool = True, filename: str = "model.pt") -> None:
        self.path = Path(save_dir) / filename
        self.record = self.path.with_suffix(".json")
        self.network = network
        self.best: dict | None = self._read_record() if as_bool(resume, "resume") else None
        if self.best is not None:
            logger.info("Best model so far: %s (%s %.4f at epoch %d)", self.path, self.best["key_metric_name"],
                        self.best["metric"], self.best["epoch"])

    def _read_record(self) -> dict | None:
        """The record of ``model.pt`` checked against the file (repaired after a killed save), or ``None``."""
        if not self.record.is_file():
            return None
        try:
            record = json.loads(self.record.read_text())
            pending = record.pop("pending", None)
            best = None if not record else {k: record[k] for k in ("key_metric_name", "metric", "epoch")}
            for entry in filter(None, (best, pending)):  # each entry complete and of the right types
                _ = float(entry["metric"]), int(entry["epoch"]), str(entry["key_metric_name"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(
                f"The best-model record {self.record} is unreadable ({type(err).__name__}: {err}); it describes "
                f"{self.path}. Move both files aside to start a new record, or set `resume` to false (the earlier "
                "run's files are then moved aside)."
            ) from None
        if not self.path.is_file():
            logger.warning("%s records a best model, but %s does not exist: a new record starts.", self.record,
                           self.path)
            return None
        if best is not None and record.get("sha256") is None:  # written before records carried checksums
            logger.warning("%s has no checksum of %s; taken as it is.", self.record, self.path)
            return best
        actual = sha256_file(self.path)
        if best is not None and record["sha256"] == actual:
            return {**best, "sha256": actual}
        if isinstance(pending, dict) and pending.get("sha256") == actual:
            logger.warning("%s: the last save was interrupted after its weights were written; the record now names "
                           "them (%s %.4f at epoch %d).", self.record, pending["key_metric_name"], pending["metric"],
                           pending["epoch"])
            if idist.get_rank() == 0:
                write_atomic(self.record, lambda f: f.write(json.dumps(pending).encode()), key="ckpt_dir")
            return dict(pending)
        described = (f"{best['key_metric_name']} {best['metric']:.4f} at epoch {best['epoch']}" if best
                     else "only an interrupted save")
        raise CheckpointError(
            f"{self.path} (sha256 {actual[:12]}...) is not the model its record {self.record} describes "
            f"({described}): one of them was replaced outside this training. Move both aside, or set `resume` to "
            "false (the earlier run's files are then moved aside)."
        )

    def attach(self, engine) -> None:
        if self.best is not None:
            engine.state.best_metric = self.best["metric"]
            engine.state.best_metric_epoch = self.best["epoch"]
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        score = float(engine.state.metrics[engine.state.key_metric_name])
        if self.best is not None and score <= self.best["metric"]:
            return
        record = {"key_metric_name": engine.state.key_metric_name, "metric": score, "epoch": engine.state.epoch}
        if idist.get_rank() == 0:
            ddp = isinstance(self.network, nn.parallel.DistributedDataParallel)
            network = self.network.module if ddp else self.network
            state = network.state_dict()
            _refuse_non_finite(state, self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)

            def announce(weights_tmp: str) -> None:  # the weights are durable, not yet named model.pt
                record["sha256"] = sha256_file(weights_tmp)
                pending = {**(self.best or {}), "pending": record}
                write_atomic(self.record, lambda f: f.write(json.dumps(pending).encode()), key="ckpt_dir")

            write_atomic(self.path, lambda f: torch.save(state, f), key="ckpt_dir", before_replace=announce)
            write_atomic(self.record, lambda f: f.write(json.dumps(record).encode()), key="ckpt_dir")
        self.best = record
