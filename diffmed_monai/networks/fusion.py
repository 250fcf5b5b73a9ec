"""Shared/specific fusion (Eq. 4) and the per-modality projection to the teacher width (Proj_m)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import BasicLayer
from torch import nn

__all__ = ["ModalityProjection", "SwinFusion"]


class SwinFusion(nn.Module):
    """Fuse shared and specific stride-16 features with a Swin stage over their concatenation (Eq. 4).

    ``H~ = A + Linear(SwinBlocks(Concat(A, H)))``: a residual on the shared feature, so the fused map degrades
    gracefully to the shared one. One module serves every modality (applied to the batch of all modalities).

    ``use_flash_attention``: MONAI's fused (``scaled_dot_product_attention``) window attention when no gradient
    is recorded (inference and validation); MONAI's explicit attention in training. ``use_checkpoint``: MONAI's
    activation checkpointing of each block.

    Input: ``shared, specific`` each ``(N, C, h, w)``. Output: ``(N, C, h, w)``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        window_size: int = 8,
        depth: int = 2,
        use_flash_attention: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = BasicLayer(
            dim=2 * channels,
            depth=depth,
            num_heads=num_heads,
            window_size=(window_size, window_size),
            drop_path=[0.0] * depth,
            qkv_bias=True,
            downsample=None,
            use_flash_attention=use_flash_attention,
            use_checkpoint=use_checkpoint,
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
