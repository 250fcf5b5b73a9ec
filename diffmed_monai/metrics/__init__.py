"""Evaluation metrics: per-class and per-region Dice and HD95 (BraTS rules), BraTS 2023 lesion-wise scores, summary,
per-case CSV with the modalities present."""

from .cases import CaseMetricsCSV
from .hd95 import EMPTY_CASE_RULES, HausdorffDistance95
from .lesionwise import BRATS2023_LESION_SETTINGS, LesionWiseMetric, lesion_wise_scores
from .segmentation import channel_output_transform, segmentation_metrics
from .summary import MetricsSummaryTable

__all__ = [
    "BRATS2023_LESION_SETTINGS",
    "CaseMetricsCSV",
    "EMPTY_CASE_RULES",
    "HausdorffDistance95",
    "LesionWiseMetric",
    "MetricsSummaryTable",
    "channel_output_transform",
    "lesion_wise_scores",
    "segmentation_metrics",
]
