"""Evaluation metrics: per-class and per-BraTS-region Dice and HD95 (BraTS empty-structure rules), summary table."""

from .hd95 import EMPTY_CASE_RULES, HausdorffDistance95
from .segmentation import channel_output_transform, segmentation_metrics
from .summary import MetricsSummaryTable

__all__ = [
    "EMPTY_CASE_RULES",
    "HausdorffDistance95",
    "MetricsSummaryTable",
    "channel_output_transform",
    "segmentation_metrics",
]
