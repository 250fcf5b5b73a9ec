"""Per-class Dice and HD95 as MONAI metric handlers, for any list of classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.handlers import IgniteMetricHandler, from_engine
from monai.metrics import DiceMetric
from monai.utils import CommonKeys as Keys

from .empty import check_empty_rule, dice_ignores_empty
from .hd95 import HausdorffDistance95

__all__ = ["BRATS_REGIONS", "brats_region_metrics", "channel_output_transform", "segmentation_metrics"]

#: The BraTS regions, in the order of ``ConvertToMultiChannelBasedOnBratsClassesd``'s channels.
BRATS_REGIONS = ("tc", "wt", "et")


def channel_output_transform(channel: int, pred_key: str = Keys.PRED, label_key: str = Keys.LABEL) -> Callable:
    """Output transform for a per-class metric: one-hot ``pred``/``label`` lists -> channel ``channel`` only.

    Use with MONAI metric handlers (``include_background=True``) after decollating post-processing.
    """

    def _transform(output):
        items = output if isinstance(output, list) else [output]
        preds = [torch.as_tensor(item[pred_key])[channel : channel + 1] for item in items]
        labels = [torch.as_tensor(item[label_key])[channel : channel + 1] for item in items]
        return preds, labels

    return _transform


def segmentation_metrics(
    class_names: Sequence[str],
    spacing: Sequence[float] | None = None,
    hd95: bool = True,
    empty: str = "brats",
) -> dict:
    """Handlers ``{dice_<class>, hd95_<class>}`` for every foreground class of ``class_names`` (any data set).

    Each reads channel c of the one-hot ``pred``/``label``. ``hd95=False`` gives Dice only (cheap enough for
    validation during training). The BraTS regions: :func:`brats_region_metrics`.

    ``empty`` (config key ``metric_empty_rule``): how a structure absent from one or both masks is scored,
    ``"brats"`` or ``"monai"`` (:mod:`diffmed_monai.metrics.empty`).
    """
    transforms = {name: channel_output_transform(c) for c, name in enumerate(class_names) if c > 0}
    return _dice_and_hd95(transforms, spacing, hd95, empty)


def _dice_and_hd95(transforms: dict[str, Callable], spacing: Sequence[float] | None, hd95: bool, empty: str) -> dict:
    """``{name: output_transform}`` -> handlers ``{dice_<name>, hd95_<name>}`` (HD95 only with ``hd95``)."""
    check_empty_rule(empty)
    metrics: dict = {}
    for name, transform in transforms.items():
        dice = DiceMetric(include_background=True, ignore_empty=dice_ignores_empty(empty))
        metrics[f"dice_{name}"] = IgniteMetricHandler(metric_fn=dice, output_transform=transform)
        if hd95:
            distance = HausdorffDistance95(spacing, empty=empty)
            metrics[f"hd95_{name}"] = IgniteMetricHandler(metric_fn=distance, output_transform=transform)
    return metrics


def brats_region_metrics(
    spacing: Sequence[float] | None = None,
    hd95: bool = True,
    empty: str = "brats",
    pred_key: str = "pred_regions",
    label_key: str = "label_regions",
) -> dict:
    """Handlers ``{dice_region_<r>, hd95_region_<r>}`` for the BraTS regions ``r`` = tc, wt, et (config key
    ``validate#region_metrics`` of ``evaluate.json``).

    Each reads the binary ``(1, H, W, D)`` masks ``<pred_key>_<r>`` / ``<label_key>_<r>`` that ``evaluate.json``
    splits from ``ConvertToMultiChannelBasedOnBratsClassesd``'s channels; ``hd95=False`` gives Dice only.
    ``empty`` as in :func:`segmentation_metrics`.
    """
    transforms = {f"region_{r}": from_engine([f"{pred_key}_{r}", f"{label_key}_{r}"]) for r in BRATS_REGIONS}
    return _dice_and_hd95(transforms, spacing, hd95, empty)
