"""Stop training at the first non-finite loss, before any diverged weights can be checkpointed."""

from __future__ import annotations

import math

import torch
from ignite.engine import Events

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or inf; the message names the epoch, the iteration and the cases of the batch."""


class StopOnNonFiniteLoss:
    """Trainer handler: raise :class:`NonFiniteLossError` at the end of an iteration whose loss is NaN or inf.

    Ignite's ``TerminateOnNan`` stops the run quietly (exit status 0, the bundle looks finished); this raises, so the
    run ends with an error naming where it diverged. It fires on ``ITERATION_COMPLETED``, before the epoch's
    checkpoint and validation, so the checkpoint and ``model.pt`` on disk stay those of the last finite epoch (the
    savers refuse NaN/inf weights as well). ``output_key`` is the loss in ``engine.state.output``.
    """

    def __init__(self, output_key: str = "loss") -> None:
        self.output_key = output_key

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        output = engine.state.output
        first = output[0] if isinstance(output, (list, tuple)) else output
        loss = first.get(self.output_key) if isinstance(first, dict) else None
        if loss is None:
            return
        value = float(loss.detach().float().cpu()) if isinstance(loss, torch.Tensor) else float(loss)
        if math.isfinite(value):
            return
        batch = engine.state.batch
        cases = batch.get("case_id") if isinstance(batch, dict) else None
        where = f"; cases of the batch: {list(cases)}" if cases is not None else ""
        raise NonFiniteLossError(
            f"The training loss is {value} at epoch {engine.state.epoch}, iteration {engine.state.iteration}{where}. "
            "Training stopped; the checkpoints on disk are those of the last finite epoch. Check the input data "
            "(NaN/inf voxels, a damaged slice store: preprocess again), or lower `learning_rate`."
        )
