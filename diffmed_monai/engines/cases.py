"""Inference one case at a time: a case that fails is reported and the others go on."""

from __future__ import annotations

import logging

from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines import Evaluator

from ..data.cases import InferenceCases
from .checkpoint import CheckpointError

__all__ = ["run_cases"]

logger = logging.getLogger(__name__)


def run_cases(cases: InferenceCases, evaluator: Evaluator) -> None:
    """Segment ``cases.valid`` one at a time with ``evaluator`` (the bundle's ``run``); the outcome of each case goes
    to ``cases`` (:attr:`~diffmed_monai.data.InferenceCases.segmented` or its failures) for its ``report``.

    Each case gets its own one-case loader over the evaluator's dataset transform. An exception while one case is
    loaded, segmented or written (out of memory, a transform failure) is caught through the evaluator's
    ``EXCEPTION_RAISED`` event, becomes that case's entry in the report, and the next case runs; a checkpoint that
    does not fit, or an interrupt, stops the run. The evaluator must have no other ``EXCEPTION_RAISED`` handler that
    re-raises (MONAI's ``StatsHandler`` does: leave it out of inference).
    """
    errors: list[BaseException] = []

    def record(engine, error: BaseException) -> None:
        errors.append(error)

    transform = evaluator.data_loader.dataset.transform
    evaluator.add_event_handler(Events.EXCEPTION_RAISED, record)
    try:
        for index, case in enumerate(cases.valid, 1):
            errors.clear()
            evaluator.data_loader = DataLoader(Dataset([case], transform=transform), batch_size=1, num_workers=0)
            evaluator.state.epoch_length = 1  # the evaluator was built for the whole list
            logger.info("Case %s (%d/%d), modalities: %s", case["case_id"], index, len(cases.valid),
                        cases.describe(case["modalities_present"]))
            evaluator.run()
            if not errors:
                cases.segmented.append(case["case_id"])
            elif isinstance(errors[0], CheckpointError) or not isinstance(errors[0], Exception):
                raise errors[0]
            else:  # one bad case never stops the others
                cases.fail(case["case_id"], f"{type(errors[0]).__name__}: {_root_cause(errors[0])}")
    finally:
        evaluator.remove_event_handler(record, Events.EXCEPTION_RAISED)


def _root_cause(error: BaseException) -> str:
    """The innermost message of a chain (MONAI wraps transform errors in "applying transform ..." errors)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error)
