"""Evaluation metrics for the bundle: per-class and per-BraTS-region Dice and HD95 as MONAI handlers."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.utils import CommonKeys as Keys

from .engines.handlers import channel_output_transform

__all__ = ["BRATS_REGIONS", "EMPTY_CASE_RULES", "HausdorffDistance95", "MetricsSummaryTable", "segmentation_metrics"]

logger = logging.getLogger("diffmed_monai.metrics")

#: channel order of MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd``
BRATS_REGIONS = ("tc", "wt", "et")
#: how a structure absent from the reference and/or the prediction is scored (see ``segmentation_metrics``)
EMPTY_CASE_RULES = ("brats", "monai")


class HausdorffDistance95(HausdorffDistanceMetric):
    """MONAI's ``HausdorffDistanceMetric`` at the 95th percentile, in mm for the given voxel ``spacing``.

    Input: one-hot ``y_pred``, ``y`` ``(B, C, *spatial)``. Output ``(B, C)`` distances.

    ``empty="monai"`` keeps MONAI's rule (NaN where either mask is empty, left out of the mean). ``empty="brats"``
    applies the BraTS challenge rule: 0 where both masks are empty, and where exactly one is empty the diagonal of
    the image box in mm (373.13 for 240 x 240 x 155 voxels of 1 mm), so that missed and spurious structures are
    penalised instead of silently dropped.
    """

    def __init__(
        self,
        spacing: Sequence[float] | None = None,
        include_background: bool = True,
        empty: str = "brats",
        **kwargs,
    ) -> None:
        if empty not in EMPTY_CASE_RULES:
            raise ValueError(
                f"HD95 empty-case rule {empty!r} is not one of {EMPTY_CASE_RULES} (config key `metric_empty_rule`)."
            )
        super().__init__(include_background=include_background, percentile=95, **kwargs)
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.empty = empty

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.spacing is not None:
            kwargs.setdefault("spacing", self.spacing)
        if self.empty == "monai":
            return super()._compute_tensor(y_pred, y, **kwargs)
        with warnings.catch_warnings():  # MONAI warns of the empty masks this rule scores below
            warnings.filterwarnings("ignore", message=r"the (prediction|ground truth) of class \d+ is all 0")
            distances = super()._compute_tensor(y_pred, y, **kwargs)
        first = 0 if self.include_background else 1
        dims = tuple(range(2, y.ndim))
        pred_empty = (y_pred[:, first:] > 0).sum(dims) == 0  # (B, C)
        ref_empty = (y[:, first:] > 0).sum(dims) == 0
        spacing = kwargs.get("spacing") or [1.0] * len(dims)
        spacing = [float(spacing)] * len(dims) if isinstance(spacing, (int, float)) else [float(s) for s in spacing]
        diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(y.shape[2:], spacing)))
        distances = distances.to(y_pred.device)
        distances = torch.where(pred_empty ^ ref_empty, torch.full_like(distances, diagonal), distances)
        return torch.where(pred_empty & ref_empty, torch.zeros_like(distances), distances)


def segmentation_metrics(
    class_names: Sequence[str],
    brats_regions: bool = False,
    spacing: Sequence[float] | None = None,
    region_keys: tuple[str, str] = ("pred_regions", "label_regions"),
    hd95: bool = True,
    empty: str = "brats",
) -> dict:
    """Handlers ``{dice_<class>, hd95_<class>}`` for every foreground class, plus ``dice_region_<tc|wt|et>`` and
    ``hd95_region_<...>`` from the region channels when ``brats_regions``.

    Class metrics read channel c of the one-hot ``pred``/``label``; region metrics read ``region_keys`` (the
    output of ``ConvertToMultiChannelBasedOnBratsClassesd``, channels TC, WT, ET). ``hd95=False`` gives Dice only
    (cheap enough for validation during training).

    ``empty`` (config key ``metric_empty_rule``): ``"brats"`` scores a structure absent from both the reference
    and the prediction as Dice 1 / HD95 0, and one absent from exactly one of them as Dice 0 / HD95 = the image
    diagonal in mm (the BraTS 2018-2021 rules); ``"monai"`` keeps MONAI's defaults (NaN, left out of the means).
    """
    if empty not in EMPTY_CASE_RULES:
        raise ValueError(
            f"Empty-case rule {empty!r} is not one of {EMPTY_CASE_RULES} (config key `metric_empty_rule`)."
        )
    metrics: dict = {}
    groups = [(name, i, Keys.PRED, Keys.LABEL) for i, name in enumerate(class_names) if i > 0]
    if brats_regions:
        groups += [(f"region_{r}", i, *region_keys) for i, r in enumerate(BRATS_REGIONS)]
    for name, channel, pred_key, label_key in groups:
        transform = channel_output_transform(channel, pred_key, label_key)
        dice = DiceMetric(include_background=True, ignore_empty=empty == "monai")
        metrics[f"dice_{name}"] = IgniteMetricHandler(metric_fn=dice, output_transform=transform)
        if hd95:
            distance = HausdorffDistance95(spacing, empty=empty)
            metrics[f"hd95_{name}"] = IgniteMetricHandler(metric_fn=distance, output_transform=transform)
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
