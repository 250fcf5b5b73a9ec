"""Evaluation metrics for the bundle: per-class and per-BraTS-region Dice and HD95 as MONAI handlers."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from monai.handlers import IgniteMetricHandler, MeanDice
from monai.metrics import HausdorffDistanceMetric
from monai.utils import CommonKeys as Keys

from .engines.handlers import channel_output_transform

__all__ = ["BRATS_REGIONS", "HausdorffDistance95", "MetricsSummaryTable", "segmentation_metrics"]

logger = logging.getLogger("diffmed_monai.metrics")

#: channel order of MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd``
BRATS_REGIONS = ("tc", "wt", "et")


class HausdorffDistance95(HausdorffDistanceMetric):
    """MONAI's ``HausdorffDistanceMetric`` at the 95th percentile, in mm for the given voxel ``spacing``.

    Input: one-hot ``y_pred``, ``y`` ``(B, C, *spatial)``. Output ``(B, C)`` distances (MONAI's empty-mask rules).
    """

    def __init__(self, spacing: Sequence[float] | None = None, include_background: bool = True, **kwargs) -> None:
        super().__init__(include_background=include_background, percentile=95, **kwargs)
        self.spacing = None if spacing is None else [float(s) for s in spacing]

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.spacing is not None:
            kwargs.setdefault("spacing", self.spacing)
        return super()._compute_tensor(y_pred, y, **kwargs)


def segmentation_metrics(
    class_names: Sequence[str],
    brats_regions: bool = False,
    spacing: Sequence[float] | None = None,
    region_keys: tuple[str, str] = ("pred_regions", "label_regions"),
    hd95: bool = True,
) -> dict:
    """Handlers ``{dice_<class>, hd95_<class>}`` for every foreground class, plus ``dice_region_<tc|wt|et>`` and
    ``hd95_region_<...>`` from the region channels when ``brats_regions``.

    Class metrics read channel c of the one-hot ``pred``/``label``; region metrics read ``region_keys`` (the
    output of ``ConvertToMultiChannelBasedOnBratsClassesd``, channels TC, WT, ET). ``hd95=False`` gives Dice only
    (cheap enough for validation during training).
    """
    metrics: dict = {}
    groups = [(name, i, Keys.PRED, Keys.LABEL) for i, name in enumerate(class_names) if i > 0]
    if brats_regions:
        groups += [(f"region_{r}", i, *region_keys) for i, r in enumerate(BRATS_REGIONS)]
    for name, channel, pred_key, label_key in groups:
        transform = channel_output_transform(channel, pred_key, label_key)
        metrics[f"dice_{name}"] = MeanDice(include_background=True, output_transform=transform)
        if hd95:
            metrics[f"hd95_{name}"] = IgniteMetricHandler(metric_fn=HausdorffDistance95(spacing), output_transform=transform)
    return metrics


class MetricsSummaryTable:
    """At the end of an evaluation, print a table of the mean metrics: one row per class / region, Dice and HD95."""

    def __init__(self, title: str = "Evaluation summary (mean over cases)") -> None:
        self.title = title

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        print(self.format(engine.state.metrics), flush=True)

    def format(self, metrics: dict) -> str:
        rows: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            for kind in ("dice", "hd95"):
                if key.startswith(kind + "_"):
                    rows.setdefault(key[len(kind) + 1 :], {})[kind] = float(value)
        lines = [self.title, f"{'structure':<20}{'Dice':>10}{'HD95 (mm)':>12}", "-" * 42]
        for name, vals in rows.items():
            dice = f"{vals['dice']:.4f}" if "dice" in vals else "-"
            hd = f"{vals['hd95']:.2f}" if "hd95" in vals else "-"
            lines.append(f"{name:<20}{dice:>10}{hd:>12}")
        others = {k: v for k, v in metrics.items() if not k.startswith(("dice_", "hd95_"))}
        lines += [f"{k}: {float(v):.4f}" for k, v in others.items()]
        return "\n".join(lines)
