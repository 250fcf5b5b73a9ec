"""Per-modality token denoiser of the DDPM distillation (Eq. 7)."""

from __future__ import annotations

import torch
from monai.networks.blocks import TransformerBlock
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

__all__ = ["TokenDenoiser", "sincos_position_embedding"]


def sincos_position_embedding(h: int, w: int, width: int, device=None, temperature: float = 10000.0) -> torch.Tensor:
    """``(1, h*w, width)`` 2D sin-cos position embedding, the values of MONAI's ``build_sincos_position_embedding``
    (``spatial_dims=2``), made as a plain tensor on ``device``: MONAI's returns an ``nn.Parameter``, whose
    construction inside a compiled forward is a graph break, and builds it on the CPU (a host-to-device copy per
    call on a GPU)."""
    if width % 4:
        raise ValueError(f"The denoiser width {width} (`network_def#denoiser_width`) must be divisible by 4.")
    grid_h, grid_w = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=device), torch.arange(w, dtype=torch.float32, device=device),
        indexing="ij",
    )
    pos_dim = width // 4
    omega = 1.0 / (temperature ** (torch.arange(pos_dim, dtype=torch.float32, device=device) / pos_dim))
    out_h = grid_h.flatten()[:, None] * omega[None, :]
    out_w = grid_w.flatten()[:, None] * omega[None, :]
    return torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)[None]


class TokenDenoiser(nn.Module):
    """Light transformer that predicts the clean teacher tokens x0 from noisy student tokens (Eq. 7).

    ``x0_hat = sqrt(abar_t) * u_t + Head(Blocks(In(u_t) + pos + TimeMLP(t)))``: the skip term is the posterior
    mean of x0 for unit-variance features, and the zero-initialised head learns the correction.

    Args:
        dim: token width d (the teacher width).
        width: internal width of the transformer; depth, num_heads: its size.

    Input: ``u_t`` ``(B, d, h, w)``, ``t`` ``(B,)`` integer timesteps, ``sqrt_alpha_bar`` ``(B,)``.
    Output: ``(B, d, h, w)``.
    """

    def __init__(self, dim: int, width: int = 256, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.width = width
        self.inp = nn.Linear(dim, width)
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(
            TransformerBlock(width, int(width * mlp_ratio), num_heads, qkv_bias=True, use_flash_attention=True)
            for _ in range(depth)
        )
        for block in self.blocks:  # MONAI builds this norm even without cross-attention; unused params break DDP
            block.norm_cross_attn = nn.Identity()
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, dim)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, u_t: torch.Tensor, t: torch.Tensor, sqrt_alpha_bar: torch.Tensor) -> torch.Tensor:
        b, d, h, w = u_t.shape
        tokens = u_t.flatten(2).transpose(1, 2)  # (B, N, d)
        pos = sincos_position_embedding(h, w, self.width, device=tokens.device).to(tokens.dtype)
        temb = self.time_mlp(get_timestep_embedding(t, self.width).to(tokens))  # (B, width)
        x = self.inp(tokens) + pos + temb[:, None, :]
        for block in self.blocks:
            x = block(x)
        x0 = sqrt_alpha_bar.to(tokens).view(b, 1, 1) * tokens + self.head(self.norm(x))
        return x0.transpose(1, 2).reshape(b, d, h, w)
