"""HD95 in mm with the BraTS rule for empty structures."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from monai.metrics import HausdorffDistanceMetric

__all__ = ["EMPTY_CASE_RULES", "HausdorffDistance95"]

#: how a structure absent from the reference and/or the prediction is scored (config key ``metric_empty_rule``)
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
