"""HD95 in mm with the BraTS rule for empty structures (:mod:`.empty`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from monai.metrics import HausdorffDistanceMetric

from .empty import check_empty_rule, score_empty_structures

__all__ = ["HausdorffDistance95"]


class HausdorffDistance95(HausdorffDistanceMetric):
    """MONAI's ``HausdorffDistanceMetric`` at the 95th percentile, in mm for the given voxel ``spacing``.

    Input: one-hot ``y_pred``, ``y`` ``(B, C, *spatial)``. Output ``(B, C)`` distances.

    ``empty``: how a structure absent from one or both masks is scored, ``"brats"`` or ``"monai"``
    (:mod:`diffmed_monai.metrics.empty`).
    """

    def __init__(
        self,
        spacing: Sequence[float] | None = None,
        include_background: bool = True,
        empty: str = "brats",
        **kwargs,
    ) -> None:
        super().__init__(include_background=include_background, percentile=95, **kwargs)
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.empty = check_empty_rule(empty)

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
        return score_empty_structures(distances.to(y_pred.device), pred_empty, ref_empty, diagonal)
