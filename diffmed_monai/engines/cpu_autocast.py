"""bf16 autocast of a MONAI trainer's forward pass and loss on a CPU, where MONAI's ``amp`` does nothing, and the
frozen modules run only under it stored in bf16 where that changes no result."""

from __future__ import annotations

import logging

import torch
from monai.engines import SupervisedTrainer
from torch import nn

__all__ = ["autocast_on_cpu", "store_frozen_linears_in"]

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


def store_frozen_linears_in(module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Store the weights and biases of the ``nn.Linear`` layers of the frozen ``module`` in ``dtype``, in place.

    For a module called only under ``torch.autocast(..., dtype)``, such as the teacher of a ``cpu_bf16`` training
    step. Autocast casts a linear layer's float32 parameters to ``dtype`` at every call unless they require
    gradients (those casts are cached), so a frozen teacher's weights were re-cast at every step; stored in ``dtype``
    they give the same products bit for bit (a test). Other layers keep float32: autocast would not compute, for
    example, a normalisation or convolution the same way from rounded parameters. Measured on an AVX512-BF16 CPU: the
    ViT-B/16 teacher's forward pass over 16 slices of 256 x 256, 1.33 against 1.44 s (``docs/benchmarks.md``).
    Returns ``module``; called outside such autocast, its linear layers then need ``dtype`` inputs.
    """
    if any(p.requires_grad for p in module.parameters()):
        raise ValueError(f"store_frozen_linears_in: {type(module).__name__} has trainable parameters; it must be "
                         "frozen (autocast caches the casts of trainable weights itself).")
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            layer.to(dtype)
    return module
