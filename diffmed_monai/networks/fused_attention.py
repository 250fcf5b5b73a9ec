"""Fused (``scaled_dot_product_attention``) windowed attention for MONAI's Swin blocks, in training too.

MONAI's ``WindowAttention(use_flash_attention=True)`` takes the fused path only when autograd is off. For the
students and the fusion stage :func:`use_fused_window_attention` switches every ``WindowAttention`` of a model to
a forward that calls ``torch.nn.functional.scaled_dot_product_attention`` with the relative-position bias (and the
shifted-window mask) as an additive ``attn_mask`` whether gradients are recorded or not; gradients reach the bias
table through the mask. With gradients on CUDA it keeps to the backends that differentiate the mask
(memory-efficient attention, else math); with gradients on a CPU it takes MONAI's explicit path, because
PyTorch's fused CPU kernel does not differentiate ``attn_mask``. Parameters, ``state_dict`` and results (to fp
tolerance) are unchanged. On a GPU this avoids materialising the (windows x heads x N x N) score tensors; on the
2-core CPU of docs/benchmarks.md it made inference 7-9 % faster and left training unchanged.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["use_fused_window_attention"]


def _fused_forward(self: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if not torch.is_grad_enabled():  # (requires_grad of a vmapped parameter is not visible, so grad mode decides)
        return _sdpa_window_attention(self, x, mask)
    if x.device.type != "cuda":
        # PyTorch's fused CPU kernel has no gradient for attn_mask: MONAI's explicit path is the fast one here
        return WindowAttention.forward(self, x, mask)
    # on CUDA, keep to the backends that return the bias gradient (memory-efficient attention, else math)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        return _sdpa_window_attention(self, x, mask)


def _sdpa_window_attention(self: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    b, n, c = x.shape
    heads = self.num_heads
    q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)  # (b, heads, n, hd)
    index = self.relative_position_index[:n, :n].reshape(-1)  # type: ignore[index]
    bias = self.relative_position_bias_table[index].reshape(n, n, heads).permute(2, 0, 1)  # (heads, n, n)
    if mask is None:
        attn_mask = bias.unsqueeze(0).to(q.dtype)  # broadcast over the windows
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
    else:
        # windows are ordered (image, window): fold them so the (window, head) bias broadcasts over images
        nw = mask.shape[0]
        attn_mask = (bias.unsqueeze(0) + mask.unsqueeze(1).to(bias.dtype)).to(q.dtype)  # (nw, heads, n, n)
        fold = lambda t: t.reshape(b // nw, nw * heads, n, t.shape[-1])  # noqa: E731
        out = F.scaled_dot_product_attention(
            fold(q), fold(k), fold(v), attn_mask=attn_mask.reshape(1, nw * heads, n, n), scale=self.scale
        )
        out = out.reshape(b, heads, n, c // heads)
    out = out.transpose(1, 2).reshape(b, n, c)
    return self.proj_drop(self.proj(out))


def use_fused_window_attention(model: nn.Module, enabled: bool = True) -> int:
    """Switch every MONAI ``WindowAttention`` in ``model`` to (or, ``enabled=False``, back from) the fused forward.

    Attention dropout is not applied on the fused path (DiffMedDINOv3 and MONAI's defaults use none); modules with
    ``attn_drop.p > 0`` are left unchanged. Returns the number of modules switched.
    """
    count = 0
    for module in model.modules():
        if not isinstance(module, WindowAttention):
            continue
        if enabled:
            if module.attn_drop.p > 0:
                continue
            module.forward = types.MethodType(_fused_forward, module)  # type: ignore[method-assign]
            module.use_flash_attention = True
        else:
            module.__dict__.pop("forward", None)
            module.use_flash_attention = False
        count += 1
    return count
