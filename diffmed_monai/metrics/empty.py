"""How a structure absent from the reference and/or the prediction is scored (config key ``metric_empty_rule``).

``"brats"``, the BraTS 2018-2021 rule: a structure absent from both the reference and the prediction scores Dice 1
and HD95 0; one absent from exactly one of them scores Dice 0 and HD95 = the diagonal of the image box in mm
(373.13 for 240 x 240 x 155 voxels of 1 mm), so that missed and spurious structures are penalised instead of
silently dropped. ``"monai"`` keeps MONAI's defaults: NaN, left out of the means.
"""

from __future__ import annotations

import torch

__all__ = ["EMPTY_CASE_RULES", "check_empty_rule", "dice_ignores_empty", "score_empty_structures"]

#: the values of ``metric_empty_rule``
EMPTY_CASE_RULES = ("brats", "monai")


def check_empty_rule(empty: str) -> str:
    """``empty`` when it is one of :data:`EMPTY_CASE_RULES`, else a ``ValueError`` naming the config key."""
    if empty not in EMPTY_CASE_RULES:
        raise ValueError(
            f"Empty-case rule {empty!r} is not one of {EMPTY_CASE_RULES} (config key `metric_empty_rule`)."
        )
    return empty


def dice_ignores_empty(empty: str) -> bool:
    """``ignore_empty`` of MONAI's ``DiceMetric`` for the rule ``empty``: with ``False`` MONAI scores an empty
    reference 1 when the prediction is empty too and 0 otherwise, which is the BraTS rule for Dice."""
    return check_empty_rule(empty) == "monai"


def score_empty_structures(
    distances: torch.Tensor, pred_empty: torch.Tensor, ref_empty: torch.Tensor, worst: float
) -> torch.Tensor:
    """The BraTS rule on distances ``(B, C)``: 0 where both masks of a structure are empty (``pred_empty`` and
    ``ref_empty``, boolean ``(B, C)``), ``worst`` (the image diagonal in mm) where exactly one is."""
    distances = torch.where(pred_empty ^ ref_empty, torch.full_like(distances, worst), distances)
    return torch.where(pred_empty & ref_empty, torch.zeros_like(distances), distances)
