"""Test helpers: bundle runners and small stub networks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
PRESETS = REPO / "configs"


def error_chain(error: BaseException) -> str:
    """All messages of an exception and its causes (MONAI wraps instantiation errors)."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def workflow(config_files, workflow_type="train", **override):
    """An initialised MONAI ``ConfigWorkflow`` over the given config files (later files win)."""
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=[str(c) for c in config_files],
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        **override,
    )
    return wf


class OracleNet(nn.Module):
    """Reads the class index stored in the last input channel and returns one-hot-like logits.

    Input ``(B, M, H, W)``; output ``(B, num_classes, H, W)``. Used to test that inference's inverse transforms
    put every voxel back where it came from.
    """

    def __init__(self, num_classes: int, **_):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = torch.arange(self.num_classes, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return -100.0 * (x[:, -1:] - classes) ** 2


class InterruptAt:
    """Handler that raises ``KeyboardInterrupt``-like failure at the start of ``epoch`` (simulates a crash)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine) -> None:
        if engine.state.epoch == self.epoch:
            raise RuntimeError(f"simulated interruption at epoch {self.epoch}")


class FailOnCase(OracleNet):
    """``OracleNet`` that raises (as an out-of-memory error would) on a slice batch with a value above
    ``fail_above``: one case with an intensity spike fails inside processing, the others pass."""

    def __init__(self, num_classes: int, fail_above: float = 20.0, **_):
        super().__init__(num_classes)
        self.fail_above = fail_above

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.abs().max()) > self.fail_above:
            raise RuntimeError("simulated failure (out of memory)")
        return super().forward(x)


class GrowingScore:
    """Ignite-style key metric that scores 1, 2, 3... at successive validations of one process, so that every
    validation of a fresh process improves on the last (used to make ``model.pt`` updates happen on cue)."""

    calls = 0

    def attach(self, engine, name: str) -> None:
        from ignite.engine import Events

        def compute(engine) -> None:
            GrowingScore.calls += 1
            engine.state.metrics[name] = float(GrowingScore.calls)

        engine.add_event_handler(Events.EPOCH_COMPLETED, compute)


class RecordSlices:
    """Training handler that writes the ``(case_id, slice_index)`` of every item this process trained on to ``path``
    (``{rank}`` replaced by the DDP rank, 0 without DDP) when the run completes."""

    def __init__(self, path: str):
        self.path = path
        self.items: list[tuple[str, int]] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED, self.record)  # the collated batch
        engine.add_event_handler(Events.COMPLETED, self.write)

    def record(self, engine) -> None:
        batch = engine.state.batch
        self.items += [(str(c), int(z)) for c, z in zip(batch["case_id"], batch["slice_index"])]

    def write(self, engine) -> None:
        import json

        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        with open(self.path.format(rank=rank), "w") as f:
            json.dump(self.items, f)
