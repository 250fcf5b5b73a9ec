"""Lesion-wise Dice and HD95 of the BraTS 2023+ challenges, as a MONAI metric.

The definition follows the BraTS 2023 evaluation (Saluja et al., the challenge's public ``eval.py``):

1. lesions are 26-connected components of the region (ET, TC or WT);
2. reference lesions whose dilations touch are one lesion: the reference is dilated ``dilation`` times with the
   18-neighbourhood, and every reference voxel takes the label of its dilated component;
3. for each reference lesion, the predicted components that meet the lesion dilated the same way are its
   matches: the lesion's Dice and HD95 are those of the reference lesion against the union of its matches (a
   lesion without a match scores Dice 0 and the maximal distance ``max_distance``, 374 mm);
4. predicted components matching no reference lesion are false positives;
5. reference lesions of at most ``min_volume`` mm^3 are left out (they neither count nor score);
6. score = sum of lesion scores / (lesions kept + false positives), false positives scoring Dice 0 and
   ``max_distance``; a region absent from both prediction and reference scores Dice 1 and HD95 0.

Distances are MONAI's ``compute_hausdorff_distance`` (95th percentile, in mm); the challenge code uses DeepMind's
surface-distance package, whose surfel-area weighting can differ slightly on the same masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric, compute_hausdorff_distance
from monai.utils import MetricReduction
from scipy import ndimage

__all__ = ["BRATS2023_LESION_SETTINGS", "LesionWiseMetric", "lesion_wise_scores"]

#: sub-challenge -> (dilation iterations, minimum lesion volume in mm^3) of the BraTS 2023 evaluation
BRATS2023_LESION_SETTINGS = {"GLI": (3, 50.0), "SSA": (3, 50.0), "PED": (3, 50.0), "MEN": (1, 50.0), "MET": (1, 2.0)}

_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
_DILATION_18 = ndimage.generate_binary_structure(3, 2)


def _hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], max_distance: float) -> float:
    if not pred.any() or not ref.any():
        return max_distance
    distance = compute_hausdorff_distance(
        torch.as_tensor(pred)[None, None], torch.as_tensor(ref)[None, None], include_background=True, percentile=95,
        spacing=list(spacing),
    )
    return float(distance)


def lesion_wise_scores(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    dilation: int = 3,
    min_volume: float = 50.0,
    max_distance: float = 374.0,
) -> tuple[float, float]:
    """Lesion-wise ``(Dice, HD95)`` of one binary region: ``pred``, ``ref`` boolean ``(X, Y, Z)``; see the module."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if not pred.any() and not ref.any():
        return 1.0, 0.0
    voxel_volume = float(np.prod(spacing))
    pred_cc, _ = ndimage.label(pred, structure=_CONNECTIVITY_26)
    dilated_cc, n_lesions = ndimage.label(
        ndimage.binary_dilation(ref, structure=_DILATION_18, iterations=dilation), structure=_CONNECTIVITY_26
    )
    lesions = np.where(ref, dilated_cc, 0)  # reference lesions merged by their dilations
    matched: set[int] = set()
    dice_scores, distances = [], []
    for lesion in range(1, n_lesions + 1):
        lesion_mask = lesions == lesion
        if not lesion_mask.any():
            continue
        reach = ndimage.binary_dilation(lesion_mask, structure=_DILATION_18, iterations=dilation)
        hits = set(np.unique(pred_cc[reach]).tolist()) - {0}
        matched |= hits
        if lesion_mask.sum() * voxel_volume <= min_volume:
            continue  # too small to count, but its matches are not false positives
        matches = np.isin(pred_cc, list(hits)) if hits else np.zeros_like(pred)
        overlap = np.logical_and(matches, lesion_mask).sum()
        dice_scores.append(2.0 * overlap / (matches.sum() + lesion_mask.sum()))
        distances.append(_hd95(matches, lesion_mask, spacing, max_distance))
    false_positives = len(set(np.unique(pred_cc).tolist()) - {0} - matched)
    count = len(dice_scores) + false_positives
    if count == 0:  # only lesions below the volume threshold, all matched
        return 1.0, 0.0
    return float(sum(dice_scores) / count), float((sum(distances) + false_positives * max_distance) / count)


class LesionWiseMetric(CumulativeIterationMetric):
    """BraTS 2023 lesion-wise Dice (``metric="dice"``) or HD95 (``"hd95"``, mm) per channel, as a MONAI metric.

    Input: binary ``y_pred``, ``y`` ``(B, C, X, Y, Z)`` (e.g. one region channel after ``SplitDimd``).
    Output of an iteration: ``(B, C)``; :meth:`aggregate` reduces with ``reduction`` (mean by default).

    Args:
        metric: ``"dice"`` or ``"hd95"``. spacing: voxel size in mm (volumes and distances).
        dilation, min_volume: the matching dilation and the small-lesion threshold (mm^3); see
            :data:`BRATS2023_LESION_SETTINGS` for the sub-challenges' values (GLI: 3, 50).
        max_distance: the distance of a missed or false-positive lesion (374 mm in the challenge).
    """

    def __init__(
        self,
        metric: str = "dice",
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        dilation: int = 3,
        min_volume: float = 50.0,
        max_distance: float = 374.0,
        reduction: MetricReduction | str = MetricReduction.MEAN,
    ) -> None:
        super().__init__()
        if metric not in ("dice", "hd95"):
            raise ValueError(f"Lesion-wise metric {metric!r} must be 'dice' or 'hd95'.")
        self.metric = metric
        self.spacing = [float(s) for s in spacing]
        self.dilation, self.min_volume, self.max_distance = int(dilation), float(min_volume), float(max_distance)
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y_pred.ndim != 5 or y_pred.shape != y.shape:
            raise ValueError(f"Lesion-wise metrics need (B, C, X, Y, Z) inputs of one shape, got {y_pred.shape}, {y.shape}.")
        pick = 0 if self.metric == "dice" else 1
        scores = [
            [
                lesion_wise_scores(p.cpu().numpy() > 0, r.cpu().numpy() > 0, self.spacing, self.dilation,
                                   self.min_volume, self.max_distance)[pick]
                for p, r in zip(pred_item, ref_item)
            ]
            for pred_item, ref_item in zip(y_pred, y)
        ]
        return torch.tensor(scores, dtype=torch.float32)

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        from monai.metrics.utils import do_metric_reduction

        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("The lesion-wise metric has no results to aggregate.")
        value, _ = do_metric_reduction(data, reduction or self.reduction)
        return value
