"""Shared/specific fusion (Eq. 4), projection to the teacher width and the per-modality token denoiser (Eq. 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import TransformerBlock
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from monai.networks.nets.swin_unetr import BasicLayer
from torch import nn

__all__ = ["SwinFusion", "ModalityProjection", "TokenDenoiser"]


class SwinFusion(nn.Module):
    """Fuse shared and specific stride-16 features with a Swin stage over their concatenation (Eq. 4).

    ``H~ = A + Linear(SwinBlocks(Concat(A, H)))``: a residual on the shared feature, so the fused map degrades
    gracefully to the shared one. One module serves every modality (applied to the batch of all modalities).

    Input: ``shared, specific`` each ``(N, C, h, w)``. Output: ``(N, C, h, w)``.
    """

    def __init__(self, channels: int, num_heads: int = 8, window_size: int = 8, depth: int = 2) -> None:
        super().__init__()
        self.blocks = BasicLayer(
            dim=2 * channels,
            depth=depth,
            num_heads=num_heads,
            window_size=(window_size, window_size),
            drop_path=[0.0] * depth,
            qkv_bias=True,
            downsample=None,
        )
        self.norm = nn.LayerNorm(2 * channels)
        self.proj = nn.Linear(2 * channels, channels)

    def forward(self, shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.cat([shared, specific], dim=1))  # (N, 2C, h, w)
        delta = self.proj(self.norm(x.permute(0, 2, 3, 1)))  # (N, h, w, C)
        return shared + delta.permute(0, 3, 1, 2)


class ModalityProjection(nn.Module):
    """Per-modality linear map from the student width C to the teacher width d (``Proj_m``), then standardised.

    The M projections are one batched ``einsum`` over stacked weights. The output is layer-normalised without
    affine parameters, so the feature that the diffusion process noises has unit scale (DDPM assumes it).

    Input: ``(B, M, C, h, w)``. Output: ``(B, M, d, h, w)``.
    """

    def __init__(self, num_modalities: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_modalities, in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(num_modalities, out_channels))
        nn.init.trunc_normal_(self.weight, std=in_channels**-0.5)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bmchw,mcd->bmhwd", x, self.weight) + self.bias[None, :, None, None, :]
        y = F.layer_norm(y, (self.out_channels,))
        return y.permute(0, 1, 4, 2, 3)


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
        pos = build_sincos_position_embedding([h, w], self.width, spatial_dims=2).to(tokens)
        temb = self.time_mlp(get_timestep_embedding(t, self.width).to(tokens))  # (B, width)
        x = self.inp(tokens) + pos + temb[:, None, :]
        for block in self.blocks:
            x = block(x)
        x0 = sqrt_alpha_bar.to(tokens).view(b, 1, 1) * tokens + self.head(self.norm(x))
        return x0.transpose(1, 2).reshape(b, d, h, w)
