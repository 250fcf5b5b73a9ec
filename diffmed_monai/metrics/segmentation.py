"""Per-class and per-BraTS-region Dice and HD95 as MONAI metric handlers."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import DiceMetric
from monai.utils import CommonKeys as Keys

from .hd95 import EMPTY_CASE_RULES, HausdorffDistance95

__all__ = ["BRATS_REGIONS", "channel_output_transform", "segmentation_metrics"]

#: channel order of MONAI's ``ConvertToMultiChannelBasedOnBratsClassesd``
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
