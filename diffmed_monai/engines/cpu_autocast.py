"""bf16 autocast of a MONAI trainer's forward pass and loss on a CPU, where MONAI's ``amp`` does nothing."""

from __future__ import annotations

import logging

import torch
from monai.engines import SupervisedTrainer

__all__ = ["autocast_on_cpu"]

logger = logging.getLogger(__name__)


def autocast_on_cpu(trainer: SupervisedTrainer, dtype: torch.dtype = torch.bfloat16) -> SupervisedTrainer:
    """Run ``trainer``'s ``inferer`` and ``loss_function`` under ``torch.autocast("cpu", dtype)``, in place.

    That is the region MONAI's ``amp`` autocasts on CUDA (``SupervisedTrainer`` autocasts CUDA only): the forward pass
    and the loss. Backward and the optimiser step stay outside it and the weights stay float32, as PyTorch's AMP
    recipe asks. Worth it where the CPU multiplies bf16 natively
    (:func:`~diffmed_monai.inferers.cpu_has_native_bf16`): a default DiffMedDINOv3 training step is 2.1x faster on
    AVX512-BF16 (``docs/benchmarks.md``). Returns ``trainer``.
    """
    trainer.inferer = torch.autocast("cpu", dtype=dtype)(trainer.inferer)
    trainer.loss_function = torch.autocast("cpu", dtype=dtype)(trainer.loss_function)
    logger.info("%s: forward pass and loss under %s autocast on the CPU (config key `cpu_bf16`).",
                type(trainer).__name__, dtype)
    return trainer
