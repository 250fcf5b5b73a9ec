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
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader
from torch import nn

__all__ = [
    "AtomicDiskSaver",
    "BestModelCheckpoint",
    "CheckpointError",
    "CheckedCheckpointLoader",
    "ResumableCheckpoint",
    "check_checkpoint",
    "epoch_checkpoints",
    "write_atomic",
]

logger = logging.getLogger(__name__)

EPOCH_CHECKPOINT = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")
#: temporary files :func:`write_atomic` leaves behind when a write is killed (``.<name>.<random>.tmp``)
KILLED_WRITE = re.compile(r"^\.(checkpoint_epoch=\d+\.pt|model\.pt|model\.json)\.[^.]+\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file, the config key and what differs."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it and rename it over ``path``.

    A kill at any moment leaves either the old ``path`` or the new one, never a partial file (the temporary file
    ``.<name>.*.tmp`` may stay behind). The file gets the permissions of a new file under the umask.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


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
        write_atomic(self.dirname / name, lambda f: torch.save(checkpoint, f))
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


def _bundle_configs() -> Path | None:
    """The bundle's ``configs/`` folder beside this code (the package's ``bundle/``, or a packed bundle's root)."""
    here = Path(__file__).resolve()
    for configs in (here.parents[1] / "bundle" / "configs", here.parents[2] / "configs"):
        if (configs / "presets").is_dir() and (configs / "inference.json").is_file():
            return configs
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
            base = json.loads((configs / "inference.json").read_text(encoding="utf-8"))
            base_size, base_arch = base["network_def"]["feature_size"], base.get("teacher_arch")
            found = []
            for path in sorted((configs / "presets").glob("*.json")):
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
        parts.append(f"the preset {' or '.join(presets)} (configs/presets/<name>.json in `config_file`: students' "
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
        raise CheckpointError(
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


class ResumableCheckpoint:
    """Save a resumable checkpoint every ``save_interval`` epochs and resume from the newest one at start.

    Attach it to the trainer like any handler. It adds the trainer itself as ``"trainer"`` to ``save_dict`` (so
    the config needs no circular reference to the trainer) and saves ``checkpoint_epoch=N.pt`` into ``ckpt_dir``
    with Ignite's ``Checkpoint`` and :class:`AtomicDiskSaver`: a kill at any moment loses at most the current
    epoch. When ``resume`` is true and such a file exists, the newest is checked (:func:`check_checkpoint`) and
    loaded before the first iteration: network, optimiser, KD statistics and trainer state (epoch, iteration),
    keeping the configured ``max_epochs``. Older files beyond ``n_saved`` (from earlier runs) are removed.

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
        self.resume = resume
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.loaded_path: str | None = None

    def attach(self, engine) -> None:
        objects = {**self.save_dict, "trainer": engine}
        checkpointer = Checkpoint(
            objects, AtomicDiskSaver(self.ckpt_dir), score_function=lambda e: e.state.epoch, score_name="epoch",
            n_saved=self.n_saved,
        )
        existing = epoch_checkpoints(self.ckpt_dir) if os.path.isdir(self.ckpt_dir) else []
        if existing and idist.get_rank() == 0:  # leftovers of writes killed in earlier runs
            for name in filter(KILLED_WRITE.match, os.listdir(self.ckpt_dir)):
                os.remove(os.path.join(self.ckpt_dir, name))
        if self.resume and existing:
            self.loaded_path = os.path.join(self.ckpt_dir, existing[-1][1])
            engine.add_event_handler(Events.STARTED, self._load, objects)
            if idist.get_rank() == 0:  # earlier runs' files beyond n_saved; the newest (resumed from) stays
                for _, name in existing[: -self.n_saved]:
                    os.remove(os.path.join(self.ckpt_dir, name))
            checkpointer.load_state_dict({"_saved": existing[-self.n_saved :]})
        elif self.resume:
            logger.info("No checkpoint in %s: training starts from scratch.", self.ckpt_dir)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_interval), checkpointer)

    def _load(self, engine, objects: Mapping) -> None:
        logger.info("Resuming training from %s", self.loaded_path)
        checkpoint = check_checkpoint(self.loaded_path, objects, key="ckpt_dir")
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=objects, checkpoint=checkpoint)
        if engine.state.epoch > max_epochs:
            raise ValueError(
                f"Checkpoint {self.loaded_path} is at epoch {engine.state.epoch}, beyond `epochs`={max_epochs}; "
                "raise `epochs` or set `resume` to false."
            )
        engine.state.max_epochs = max_epochs


class BestModelCheckpoint:
    """Evaluator handler: write ``model.pt`` (the network's ``state_dict``) atomically when the key metric improves.

    The score and epoch of the saved model go into ``model.json`` beside it, written before the weights. With
    ``resume``, a restarted training reads them back, so ``model.pt`` is only ever replaced by a better model and
    the evaluator's ``best_metric`` / ``best_metric_epoch`` continue; without ``resume`` a new training starts its
    own record. Only rank 0 writes under DDP.

    Args:
        save_dir: folder of ``model.pt``. network: the network to save (DDP is unwrapped).
        resume: continue the record of an earlier run (config key ``resume``).
        filename: name of the weights file.
    """

    def __init__(self, save_dir: str, network: nn.Module, resume: bool = True, filename: str = "model.pt") -> None:
        self.path = Path(save_dir) / filename
        self.record = self.path.with_suffix(".json")
        self.network = network
        self.best: dict | None = None
        if resume and self.record.is_file() and self.path.is_file():
            self.best = json.loads(self.record.read_text())
            logger.info("Best model so far: %s (%s %.4f at epoch %d)", self.path, self.best["key_metric_name"],
                        self.best["metric"], self.best["epoch"])

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
            network = self.network.module if isinstance(self.network, nn.parallel.DistributedDataParallel) else self.network
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.record, lambda f: f.write(json.dumps(record).encode()))
            write_atomic(self.path, lambda f: torch.save(network.state_dict(), f))
        self.best = record
