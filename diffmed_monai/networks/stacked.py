"""Run M identically built modules as one batched call (stacked weights, ``functional_call`` and ``torch.vmap``).

DiffMedDINOv3 has one Swin student and one token denoiser per modality. Called in a Python loop they launch M
small kernels per layer; :func:`stacked_forward` runs them as a single call whose linear layers become batched
matmuls (bmm) and whose convolutions become grouped convolutions, i.e. M times fewer, M times larger kernels.

The parameters stay where they are (``specific_students.0.…``, ``denoisers.3.…``): they are stacked with
``torch.stack`` at each call, in the same layout ``torch.func.stack_module_state`` produces, but differentiably, so
gradients flow back to the original parameters and the optimiser, DDP, checkpoints and ``state_dict`` are
unchanged. (``stack_module_state`` itself returns detached copies, which would make a second set of parameters.)
Stacking costs one copy of the M modules' weights per call (and one of their gradients in backward).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["stacked_forward"]


def _check_stackable(modules: Sequence[nn.Module]) -> list[str]:
    first = modules[0]
    names = [n for n, _ in first.named_parameters()]
    for i, m in enumerate(modules[1:], start=1):
        if type(m) is not type(first) or m.training != first.training:
            raise ValueError(f"stacked_forward: module {i} differs from module 0 in class or train/eval mode.")
        if [n for n, _ in m.named_parameters()] != names:
            raise ValueError(f"stacked_forward: module {i} has other parameters than module 0.")
    if any(getattr(sub, "use_checkpoint", False) for sub in first.modules()):
        raise ValueError("stacked_forward: gradient checkpointing (`use_checkpoint`) does not work under vmap.")
    for name, buf in first.named_buffers():
        if buf.is_floating_point():
            raise ValueError(
                f"stacked_forward: buffer {name!r} is floating point (running statistics?); only constant integer "
                "buffers (shared by all modules) are supported."
            )
    return names


def stacked_forward(
    modules: Sequence[nn.Module],
    inputs: torch.Tensor,
    *args: Any,
    args_in_dims: Sequence[int | None] | None = None,
) -> Any:
    """Apply ``modules[i]`` to ``inputs[i]`` for every i in one vmapped call; outputs gain a leading M dimension.

    Args:
        modules: M modules of the same class and configuration (e.g. an ``nn.ModuleList``).
        inputs: ``(M, ...)``: ``inputs[i]`` is what ``modules[i]`` would receive.
        args: further positional arguments of the modules' ``forward``.
        args_in_dims: for each of ``args``, the dimension holding M, or ``None`` when it is shared (default: all
            shared).

    Returns what ``modules[0](inputs[0], *args)`` returns, each tensor with a leading dimension of size M; equal
    (to floating-point tolerance) to stacking the outputs of the loop ``[m(x, *args) for m, x in zip(modules,
    inputs)]``. Integer buffers (Swin's ``relative_position_index``) are taken from ``modules[0]``: they depend
    only on the architecture. Random layers (dropout, drop-path) draw different masks per module, as the loop does.
    Gradient checkpointing inside the modules is not supported under ``vmap``.
    """
    if len(modules) == 0:
        raise ValueError("stacked_forward: no modules given.")
    if inputs.shape[0] != len(modules):
        raise ValueError(f"stacked_forward: inputs have leading size {inputs.shape[0]} for {len(modules)} modules.")
    names = _check_stackable(modules)
    per_module = [dict(m.named_parameters()) for m in modules]
    params = {n: torch.stack([p[n] for p in per_module]) for n in names}
    template = modules[0]
    buffers = dict(template.named_buffers())
    in_dims = tuple(args_in_dims) if args_in_dims is not None else (None,) * len(args)
    if len(in_dims) != len(args):
        raise ValueError(f"stacked_forward: {len(args)} extra arguments but {len(in_dims)} args_in_dims.")

    def call(p: dict[str, torch.Tensor], x: torch.Tensor, *a: Any) -> Any:
        return functional_call(template, (p, buffers), (x, *a))

    return torch.vmap(call, in_dims=(0, 0, *in_dims), randomness="different")(params, inputs, *args)
