"""Evaluation metrics: per-class and per-region Dice and HD95 (BraTS rules), BraTS 2023 lesion-wise scores, summary,
per-case CSV with the modalities present."""

from .cases import CaseMetricsCSV
from .empty import EMPTY_CASE_RULES, check_empty_rule, dice_ignores_empty, score_empty_structures
from .hd95 import HausdorffDistance95
from .lesionwise import BRATS2023_LESION_SETTINGS, LesionWiseMetric, lesion_wise_scores
from .segmentation import BRATS_REGIONS, brats_region_metrics, channel_output_transform, segmentation_metrics
from .summary import MetricsSummaryTable

__all__ = [
    "BRATS2023_LESION_SETTINGS",
    "BRATS_REGIONS",
    "CaseMetricsCSV",
    "EMPTY_CASE_RULES",
    "HausdorffDistance95",
    "LesionWiseMetric",
    "MetricsSummaryTable",
    "brats_region_metrics",
    "channel_output_transform",
    "check_empty_rule",
    "dice_ignores_empty",
    "lesion_wise_scores",
    "score_empty_structures",
    "segmentation_metrics",
]
