"""Resumable training checkpoints on MONAI's ``CheckpointSaver`` and ``CheckpointLoader``."""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Mapping

from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = ["ResumableCheckpoint", "latest_checkpoint"]

logger = logging.getLogger(__name__)


def latest_checkpoint(ckpt_dir: str, pattern: str = "checkpoint_*.pt") -> str | None:
    """Newest file matching ``pattern`` in ``ckpt_dir`` (by modification time), or ``None``."""
    paths = glob.glob(os.path.join(ckpt_dir, pattern))
    return max(paths, key=os.path.getmtime) if paths else None


class ResumableCheckpoint:
    """Save a resumable checkpoint every ``save_interval`` epochs and resume from the newest one at start.

    Attach it to the trainer like any handler. It adds the trainer itself as ``"trainer"`` to ``save_dict`` (so
    the config needs no circular reference to the trainer), attaches MONAI's ``CheckpointSaver`` writing
    ``checkpoint_epoch=N.pt`` into ``ckpt_dir`` and, when ``resume`` is true and such a file exists, MONAI's
    ``CheckpointLoader`` for the newest one: network, optimiser, KD statistics and trainer state (epoch,
    iteration) are restored before the first iteration, so an interrupted run continues from its saved epoch.

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
        if self.resume:
            path = latest_checkpoint(self.ckpt_dir)
            if path is None:
                logger.info("No checkpoint in %s: training starts from scratch.", self.ckpt_dir)
            else:
                logger.info("Resuming training from %s", path)
                self.loaded_path = path
                device = getattr(engine.state, "device", None) or "cpu"
                CheckpointLoader(load_path=path, load_dict=objects, map_location=str(device)).attach(engine)
        CheckpointSaver(
            save_dir=self.ckpt_dir, save_dict=objects, save_interval=self.save_interval, epoch_level=True,
            n_saved=self.n_saved,
        ).attach(engine)
