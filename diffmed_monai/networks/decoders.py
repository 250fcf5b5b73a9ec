"""MLP segmentation decoders (Eq. 10-11)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLPDecoder", "MultiScaleMLPDecoder", "build_decoder"]


class MLPDecoder(nn.Module):
    """The paper's decoder: a per-token MLP on the stride-16 grid, logits upsampled to the input size.

    Input: ``tokens`` ``(B, M*d, h, w)`` (concatenated denoised features); ``out_size`` ``(H, W)``.
    Output: ``(B, n_class, H, W)`` logits.
    """

    def __init__(self, in_channels: int, num_classes: int, embed_dim: int = 256, **_: object) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Conv2d(in_channels, embed_dim, 1), nn.GELU(), nn.Conv2d(embed_dim, embed_dim, 1), nn.GELU()
        )
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(
        self, tokens: torch.Tensor, skips: Sequence[torch.Tensor] = (), out_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        logits = self.classifier(self.mlp(tokens))
        size = tuple(out_size) if out_size is not None else tuple(s * 16 for s in tokens.shape[-2:])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class MultiScaleMLPDecoder(nn.Module):
    """SegFormer-style all-MLP decoder over the stride-16 tokens and the students' stride-8 and stride-4 maps.

    Each level is linearly embedded, upsampled to stride 4 and concatenated; a fusing MLP and a classifier follow,
    then bilinear upsampling to the input size. The fine levels keep small structures (enhancing tumour).

    Input: ``tokens`` ``(B, M*d, h, w)``; ``skips`` ``[(B, c8, H/8, W/8), (B, c4, H/4, W/4)]``.
    Output: ``(B, n_class, H, W)`` logits.
    """

    def __init__(
        self, in_channels: int, num_classes: int, skip_channels: Sequence[int], embed_dim: int = 256, **_: object
    ) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in (in_channels, *skip_channels))
        self.fuse = nn.Sequential(
            nn.Conv2d(embed_dim * (1 + len(skip_channels)), embed_dim, 1), nn.GroupNorm(8, embed_dim), nn.GELU()
        )
        self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(
        self, tokens: torch.Tensor, skips: Sequence[torch.Tensor] = (), out_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        levels = [tokens, *skips]
        if len(levels) != len(self.embed):
            raise ValueError(f"mlp_multiscale decoder expects {len(self.embed) - 1} skip maps, got {len(skips)}.")
        fine = levels[-1].shape[-2:]
        feats = [
            F.interpolate(proj(x), size=fine, mode="bilinear", align_corners=False) if x.shape[-2:] != fine else proj(x)
            for proj, x in zip(self.embed, levels)
        ]
        logits = self.classifier(self.fuse(torch.cat(feats, dim=1)))
        size = tuple(out_size) if out_size is not None else tuple(s * 4 for s in fine)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def build_decoder(
    name: str, in_channels: int, num_classes: int, skip_channels: Sequence[int], embed_dim: int
) -> nn.Module:
    """``"mlp"`` -> :class:`MLPDecoder`; ``"mlp_multiscale"`` -> :class:`MultiScaleMLPDecoder`."""
    if name == "mlp":
        return MLPDecoder(in_channels, num_classes, embed_dim=embed_dim)
    if name == "mlp_multiscale":
        return MultiScaleMLPDecoder(in_channels, num_classes, skip_channels, embed_dim=embed_dim)
    raise ValueError(f"Unknown decoder {name!r} (config key `network_def#decoder`); use 'mlp' or 'mlp_multiscale'.")
