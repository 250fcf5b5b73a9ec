"""End-of-evaluation summary table of the mean metrics."""

from __future__ import annotations

import logging

__all__ = ["MetricsSummaryTable"]

logger = logging.getLogger(__name__)


class MetricsSummaryTable:
    """At the end of an evaluation, log a table of the mean metrics: one row per class / region, Dice and HD95."""

    def __init__(self, title: str = "Evaluation summary (mean over cases)") -> None:
        self.title = title

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        logger.info("%s", self.format(engine.state.metrics))

    def format(self, metrics: dict) -> str:
        rows: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            for kind in ("dice", "hd95"):
                if key.startswith(kind + "_"):
                    rows.setdefault(key[len(kind) + 1 :], {})[kind] = float(value)
        lines = [self.title, f"{'structure':<20}{'Dice':>10}{'HD95 (mm)':>12}", "-" * 42]
        for name, vals in rows.items():
            dice = f"{vals['dice']:.4f}" if "dice" in vals else "-"
            hd = f"{vals['hd95']:.2f}" if "hd95" in vals else "-"
            lines.append(f"{name:<20}{dice:>10}{hd:>12}")
        others = {k: v for k, v in metrics.items() if not k.startswith(("dice_", "hd95_"))}
        lines += [f"{k}: {float(v):.4f}" for k, v in others.items()]
        return "\n".join(lines)
