"""Swin students on MONAI's 2D ``SwinTransformer``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

__all__ = ["SwinStudent"]


class SwinStudent(nn.Module):
    """2D Swin encoder returning the stride-4, stride-8 and stride-16 feature maps.

    Built on MONAI's ``SwinTransformer(spatial_dims=2)`` with ``patch_size=2``. MONAI's last stage would merge to
    stride 32; here its patch merging is removed, so its attention blocks run at stride 16 — the DINOv3 token grid.

    Args:
        in_channels: channels of one modality (1).
        feature_size: embedding width F; the maps have 2F, 4F and 8F channels.
        depths, num_heads: blocks and heads of the four stages.
        window_size: attention window (8 avoids padding at 256 px).
        use_flash_attention: MONAI's fused (``scaled_dot_product_attention``) window attention when no gradient is
            recorded (inference and validation); training keeps MONAI's explicit attention (MONAI's classes as
            they ship, nothing swapped after construction).

    Input: ``(N, in_channels, H, W)``, H and W multiples of 16.
    Output: tuple ``(s4 (N, 2F, H/4, W/4), s8 (N, 4F, H/8, W/8), s16 (N, 8F, H/16, W/16))``, each layer-normalised
    over channels.
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 8,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(f"Swin student needs 4 stages: got depths={list(depths)}, num_heads={list(num_heads)}.")
        self.feature_size = feature_size
        self.swin = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=(window_size, window_size),
            patch_size=(2, 2),
            depths=depths,
            num_heads=num_heads,
            drop_path_rate=drop_path_rate,
            use_checkpoint=use_checkpoint,
            spatial_dims=2,
            use_flash_attention=use_flash_attention,
        )
        # Keep the last stage at stride 16: its blocks then refine the map aligned with the teacher grid.
        self.swin.layers4[0].downsample = None

    @property
    def out_channels(self) -> tuple[int, int, int]:
        f = self.feature_size
        return 2 * f, 4 * f, 8 * f

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # MONAI returns the (normalised) maps at strides 2, 4, 8, 16 and, with the last merge removed, 16 again
        _, s4, s8, _, s16 = self.swin(x, normalize=True)
        return s4, s8, s16
