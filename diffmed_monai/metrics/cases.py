"""Per-case metrics CSV with the modalities each case had (evaluation of cases with missing modalities)."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence

import torch

from ..transforms.io import case_id_of_item
from ..utils import write_atomic

__all__ = ["CaseMetricsCSV"]

logger = logging.getLogger(__name__)


class CaseMetricsCSV:
    """Evaluator handler: ``<output_dir>/<filename>`` with one row per case, the modalities present and missing,
    and every per-case metric (MONAI metric handlers keep them in ``engine.state.metric_details``).

    Columns: ``case_id``, ``modalities_present`` (e.g. ``t1ce+t2+flair``), ``modalities_missing``, then one column
    per metric (the mean over its channels, one channel for the shipped metrics). The case id is the item's
    ``case_id`` (the datalist's), else its image file name (:func:`~diffmed_monai.transforms.case_id_of_item`);
    ``modalities_present`` comes from :class:`~diffmed_monai.transforms.SelectPresentModalitiesd` (all modalities
    when it is absent). Written atomically at the end of the evaluation.
    """

    def __init__(self, output_dir: str, modalities: Sequence[str], filename: str = "cases.csv") -> None:
        self.path = os.path.join(output_dir, filename)
        self.modalities = [str(m) for m in modalities]
        self.rows: list[tuple[str, str]] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def record(self, engine) -> None:
        items = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item in items:
            present = str(item.get("modalities_present") or "+".join(self.modalities))
            self.rows.append((case_id_of_item(item), present))

    def write(self, engine) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        names = [n for n, v in details.items() if isinstance(v, torch.Tensor) and v.ndim >= 1 and len(v) == len(self.rows)]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["case_id", "modalities_present", "modalities_missing", *names])
        for i, (case_id, present) in enumerate(self.rows):
            missing = "+".join(m for m in self.modalities if m not in present.split("+"))
            values = []
            for name in names:
                v = details[name][i].float()
                v = v[~torch.isnan(v)]
                values.append(f"{float(v.mean()):.6g}" if v.numel() else "nan")
            writer.writerow([case_id, present, missing, *values])
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        write_atomic(self.path, lambda f: f.write(buffer.getvalue().encode()), key="output_dir")
        logger.info("Per-case metrics with the modalities present: %s", self.path)
