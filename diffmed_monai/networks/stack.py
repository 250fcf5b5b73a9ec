"""M modules of one architecture, each with its own weights, run as one call over their stacked weights."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence

import torch
import torch.utils.checkpoint
from torch import nn

__all__ = ["ModalityStack"]


def _attr(name: str) -> str:
    """Attribute name of the stack of parameter or buffer ``name`` (module attributes cannot hold dots)."""
    return name.replace(".", "-")


class ModalityStack(nn.Module):
    """``modules`` (M of one architecture, each its own weights) stored as stacked parameters ``(M, ...)`` and run as
    one call: ``torch.func.functional_call`` of a weightless template under ``torch.func.vmap``
    (``torch.func.stack_module_state``).

    Module i takes slice i of the first argument along ``in_dim``; the other arguments go to every module. Outputs (a
    tensor or a tuple of tensors) are stacked along ``out_dim``. Compared with calling the M modules in turn, every
    operation is dispatched once instead of M times, forward and backward, and the optimiser sees one tensor per
    parameter name instead of M; values and gradients equal to rounding (a test).

    The ``state_dict`` is that of ``nn.ModuleList(modules)`` (keys ``"{i}.{name}"``), saved and loaded slice by slice,
    so checkpoints of either layout load into both. ``train()``/``eval()`` reach the template (dropout, MONAI's
    inference-only fused attention).

    ``checkpoint``: activation checkpointing of the whole call (``torch.utils.checkpoint``, non-reentrant, random
    state replayed): its intermediate activations are recomputed in backward instead of kept. (Checkpointing inside
    the modules, such as MONAI's ``use_checkpoint``, cannot run under ``vmap``: build them without it.)
    """

    __jit_ignored_attributes__ = ["_template"]  # TorchScript: the weightless (meta) templates are not the model's

    def __init__(self, modules: Sequence[nn.Module], checkpoint: bool = False) -> None:
        super().__init__()
        self.checkpoint = bool(checkpoint)
        modules = list(modules)
        if not modules:
            raise ValueError("ModalityStack needs at least one module.")
        params, buffers = torch.func.stack_module_state(modules)
        persistent = set(modules[0].state_dict().keys())
        self.num_modules = len(modules)
        self._names = list(params) + list(buffers)
        self._persistent = [n for n in self._names if n in persistent]
        for name, value in params.items():
            self.register_parameter(_attr(name), nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.register_buffer(_attr(name), value.clone(), persistent=name in persistent)
        template = copy.deepcopy(modules[0]).to("meta")  # its architecture only: every tensor comes from the stacks
        template.train(modules[0].training)
        # plain attributes, not submodules: no parameters of their own; [0] the prototype of each thread's template
        # (functional_call swaps a module's tensors while it runs: one template per thread, for concurrent calls such
        # as the CPU slice inferer's workers), [1:] for tracing in turn
        self._template = (template, *(copy.deepcopy(template) for _ in modules))
        self._local = threading.local()

    def train(self, mode: bool = True) -> ModalityStack:
        super().train(mode)
        for template in self._template:
            template.train(mode)
        return self

    def __getstate__(self) -> dict:  # copy and pickle without the per-thread templates
        state = self.__dict__.copy()
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    def _thread_template(self) -> nn.Module:
        """This thread's weightless template (made on first use from the prototype, in the module's mode)."""
        if torch.compiler.is_compiling():
            return self._template[0]
        template = getattr(self._local, "template", None)
        if template is None:
            template = self._local.template = copy.deepcopy(self._template[0])
        return template.train(self.training)

    def stacked(self) -> dict[str, torch.Tensor]:
        """``{name: (M, ...) tensor}`` of every parameter and buffer of the template."""
        return {name: getattr(self, _attr(name)) for name in self._names}

    def named_parameter_slices(self) -> Iterator[tuple[str, nn.Parameter, int]]:
        """``("{i}.{name}", stacked parameter, i)``: the ``ModuleList`` name of each module's parameter."""
        for i in range(self.num_modules):
            for name, param in self.named_parameters():
                yield f"{i}.{name.replace('-', '.')}", param, i

    def _traced_in_turn(self, *args: torch.Tensor, in_dim: int, out_dim: int):
        """The modules called in turn, for TorchScript tracing (which cannot record ``functional_call`` or ``vmap``):
        weightless copies of the template read module i's weights as slices of the stacks, so the trace computes from
        the stacked parameters."""
        state, outs = self.stacked(), []
        for i, (module, x) in enumerate(zip(self._template[1:], args[0].unbind(in_dim))):
            for name, value in state.items():
                owner, _, leaf = name.rpartition(".")
                sub = module.get_submodule(owner)
                sub._parameters.pop(leaf, None)
                sub._buffers.pop(leaf, None)
                object.__setattr__(sub, leaf, value[i])  # a plain attribute: nn.Module refuses tensors for parameters
            outs.append(module(x, *args[1:]))
        if isinstance(outs[0], torch.Tensor):
            return torch.stack(outs, dim=out_dim)
        return tuple(torch.stack(parts, dim=out_dim) for parts in zip(*outs))

    def forward(self, *args: torch.Tensor, in_dim: int = 0, out_dim: int = 0):
        template = self._thread_template()
        if torch.jit.is_tracing():
            return self._traced_in_turn(*args, in_dim=in_dim, out_dim=out_dim)

        def call(state: dict[str, torch.Tensor], *inputs: torch.Tensor):
            return torch.func.functional_call(template, state, inputs)

        in_dims = (0, in_dim) + (None,) * (len(args) - 1)
        batched = torch.func.vmap(call, in_dims=in_dims, out_dims=out_dim, randomness="different")
        if self.checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(batched, self.stacked(), *args, use_reentrant=False)
        return batched(self.stacked(), *args)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001 - nn.Module's signature
        for i in range(self.num_modules):
            for name in self._persistent:
                value = getattr(self, _attr(name))[i]
                destination[f"{prefix}{i}.{name}"] = value if keep_vars else value.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # noqa: ANN001 - nn.Module's signature
        expected = set()
        for name in self._persistent:
            keys = [f"{prefix}{i}.{name}" for i in range(self.num_modules)]
            expected.update(keys)
            absent = [k for k in keys if k not in state_dict]
            if absent:
                missing_keys.extend(absent)
                continue
            target = getattr(self, _attr(name))
            values = [state_dict[k] for k in keys]
            wrong = [(k, tuple(v.shape)) for k, v in zip(keys, values) if tuple(v.shape) != tuple(target.shape[1:])]
            if wrong:
                error_msgs.append(f"size mismatch for {wrong[0][0]}: copying a param with shape {wrong[0][1]} from "
                                  f"checkpoint, the shape in current model is {tuple(target.shape[1:])}.")
                continue
            with torch.no_grad():
                target.copy_(torch.stack([torch.as_tensor(v) for v in values]))
        if strict:
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in expected)
