"""``progress.png``: the training curves (loss parts per epoch, validation Dice per class, teacher-student agreement)
after every validation; :class:`KDAgreement` publishes the agreement as validation metrics.

The anchor is nnU-Net's ``progress.png``. matplotlib is optional (``pip install diffmed-monai[plots]``): without
it the handler logs once that no plot is written and training goes on.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

from ignite.engine import Events
from monai.utils import optional_import

from ..losses import LOSS_PARTS
from ..transforms.pictures import class_colour
from ..utils import write_atomic

__all__ = ["AGREEMENT_PREFIX", "KDAgreement", "ProgressPlot"]

#: validation metric names of :class:`KDAgreement`: ``kd_cosine_<modality>``
AGREEMENT_PREFIX = "kd_cosine_"


class KDAgreement:
    """Trainer handler: at each validation, the agreement between the students' distilled tokens and the teacher.

    The value per modality is the running mean, over the training iterations since the previous validation, of the
    cosine similarity between the denoised student tokens (``D(u0, seg_timestep)``, the decoder's input; u0 with
    ``kd_mode="regression"``) and the standardised teacher tokens, token by token (from
    :meth:`~diffmed_monai.losses.DiffMedLoss.agreement`: computed on the training batches, so validation needs no
    teacher). When ``validator`` starts, the values are put into its ``state.metrics`` as ``kd_cosine_<modality>``,
    so the validator's ``StatsHandler`` (log), ``TensorBoardStatsHandler`` and :class:`ProgressPlot` show them, and
    are logged here. 1 means the students reproduce the teacher's tokens (up to scale), 0 no agreement.

    Args:
        loss: the :class:`~diffmed_monai.losses.DiffMedLoss` of the trainer (config key ``loss``).
        validator: the validation evaluator.
    """

    def __init__(self, loss, validator) -> None:
        self.loss = loss
        self.validator = validator
        self.history: dict[str, list[float]] = defaultdict(list)

    def attach(self, engine) -> None:
        self.validator.add_event_handler(Events.STARTED, self._publish)

    def _publish(self, validator) -> None:
        values = self.loss.agreement(reset=True)
        for modality, value in values.items():
            validator.state.metrics[f"{AGREEMENT_PREFIX}{modality}"] = value
            self.history[modality].append(value)
        if values:
            logger.info("teacher-student agreement (mean cosine since the last validation): %s",
                        ", ".join(f"{m} {v:.4f}" for m, v in values.items()))


logger = logging.getLogger(__name__)

#: curves of the Dice panel that are not a class (the mean, BraTS regions)
_GREYS = ("#000000", "#666666", "#999999", "#bbbbbb")


class ProgressPlot:
    """Trainer handler: mean ``loss`` and loss parts per epoch, and the validator's Dice metrics, drawn to ``path``.

    Attach to the trainer; it also listens to ``validator`` (the validation evaluator) and writes the figure,
    atomically, when a validation completes (with DDP only rank 0 should attach it). The history lives in memory:
    a resumed run draws from its first resumed epoch on.

    Args:
        path: the PNG to write (e.g. ``<output_dir>/progress.png``).
        validator: the evaluator whose ``engine.state.metrics`` with ``dice`` in their names are plotted.
        class_names: the label classes (config key ``class_names``, background first): the curve ``dice_<class>``
            takes that class's colour in the case pictures' overlays (:func:`~diffmed_monai.transforms.class_colour`).
    """

    def __init__(self, path: str, validator, class_names=None) -> None:
        self.path = path
        self.validator = validator
        self.class_names = list(class_names or [])
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0
        self.losses: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.dice: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.agreement: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.plt, self.has_matplotlib = optional_import("matplotlib.pyplot")
        self.told_missing = False
        self.trainer = None

    def attach(self, engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_means)
        self.validator.add_event_handler(Events.COMPLETED, self._after_validation)

    def _accumulate(self, engine) -> None:
        output = engine.state.output[0] if isinstance(engine.state.output, list) else engine.state.output
        for key in ("loss", *LOSS_PARTS):
            if key in output:
                self.sums[key] += float(output[key])
        self.count += 1

    def _epoch_means(self, engine) -> None:
        if not self.count:  # already folded (validation ran first at this EPOCH_COMPLETED)
            return
        for key, total in self.sums.items():
            self.losses[key].append((engine.state.epoch, total / max(self.count, 1)))
        self.sums.clear()
        self.count = 0

    def _after_validation(self, validator) -> None:
        epoch = self.trainer.state.epoch if self.trainer is not None else validator.state.epoch
        if self.trainer is not None:
            self._epoch_means(self.trainer)  # this epoch's losses, whatever the handlers' order
        for name, value in validator.state.metrics.items():
            if "dice" in name:
                self.dice[name].append((epoch, float(value)))
            elif name.startswith(AGREEMENT_PREFIX):
                self.agreement[name[len(AGREEMENT_PREFIX):]].append((epoch, float(value)))
        self.write()

    def colour_of(self, metric: str) -> str | None:
        """``dice_<class>``: that class's overlay colour; other metrics (the mean, regions): ``None``."""
        name = metric[len("dice_"):] if metric.startswith("dice_") else None
        if name in self.class_names[1:]:
            return class_colour(self.class_names.index(name))
        return None

    def write(self) -> None:
        """Draw the panels (losses on a log scale, Dice, and the KD agreement when there is one) to :attr:`path`."""
        if not self.has_matplotlib:
            if not self.told_missing:
                logger.info("matplotlib is not installed: no %s (pip install diffmed-monai[plots]).", self.path)
                self.told_missing = True
            return
        self.plt.switch_backend("Agg")
        panels = 3 if self.agreement else 2
        figure, axes = self.plt.subplots(1, panels, figsize=(6 * panels, 4.5))
        loss_axis, dice_axis = axes[:2]
        for key, points in self.losses.items():
            loss_axis.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        loss_axis.set(xlabel="epoch", ylabel="mean over the epoch", title="training loss", yscale="log")
        others = 0
        for key, points in self.dice.items():
            colour = self.colour_of(key)
            if colour is None:  # the mean and the regions: greys, dashed, never a class's colour
                colour, others = _GREYS[others % len(_GREYS)], others + 1
            dice_axis.plot(*zip(*points), label=key, marker="o", color=colour,
                           linestyle="-" if self.colour_of(key) else "--")
        dice_axis.set(xlabel="epoch", ylabel="Dice", title="validation", ylim=(0, 1))
        if self.agreement:
            for key, points in self.agreement.items():
                axes[2].plot(*zip(*points), label=key, marker="o")
            axes[2].set(xlabel="epoch", ylabel="mean cosine (training batches)", ylim=(-0.1, 1),
                        title="student-teacher token agreement")
        for axis in axes:
            axis.grid(alpha=0.3)
            axis.xaxis.set_major_locator(self.plt.MaxNLocator(integer=True))
            if axis.lines:
                axis.legend(fontsize=8)
        figure.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        write_atomic(self.path, lambda f: figure.savefig(f, format="png", dpi=100), key="output_dir")
        self.plt.close(figure)
