"""MLP segmentation decoders (Eq. 10-11)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import UnetrBasicBlock, UnetResBlock
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
        self,
        tokens: torch.Tensor,
        skips: Sequence[torch.Tensor] = (),
        out_size: Sequence[int] | None = None,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = self.classifier(self.mlp(tokens))
        size = tuple(out_size) if out_size is not None else tuple(s * 16 for s in tokens.shape[-2:])
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class MultiScaleMLPDecoder(nn.Module):
    """SegFormer-style all-MLP decoder over the stride-16 tokens and the students' stride-8 and stride-4 maps,
    optionally refined at full resolution from the input slices.

    Each level is linearly embedded, upsampled to stride 4 and concatenated; a fusing MLP follows. Without the
    full-resolution path a classifier and bilinear upsampling to the input size give the logits. With
    ``full_resolution_channels`` > 0, a residual convolution block on the input slices (UNETR's first encoder
    block, MONAI ``UnetrBasicBlock``) gives full-resolution features; the fused map is upsampled to the input size,
    concatenated with them and refined by a residual 3x3 block (MONAI ``UnetResBlock``) before the classifier, so
    boundaries and thin structures (enhancing rims) are drawn at the input's resolution.

    Input: ``tokens`` ``(B, M*d, h, w)``; ``skips`` ``[(B, c8, H/8, W/8), (B, c4, H/4, W/4)]``; ``image``
    ``(B, image_channels, H, W)`` (needed only with the full-resolution path).
    Output: ``(B, n_class, H, W)`` logits.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        skip_channels: Sequence[int],
        embed_dim: int = 256,
        image_channels: int = 0,
        full_resolution_channels: int = 0,
        **_: object,
    ) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Conv2d(c, embed_dim, 1) for c in (in_channels, *skip_channels))
        self.fuse = nn.Sequential(
            nn.Conv2d(embed_dim * (1 + len(skip_channels)), embed_dim, 1), nn.GroupNorm(8, embed_dim), nn.GELU()
        )
        self.full_resolution_channels = int(full_resolution_channels)
        if self.full_resolution_channels:
            if image_channels < 1:
                raise ValueError("The full-resolution decoder path needs `image_channels` (the input's channels).")
            width = self.full_resolution_channels
            self.image_stem = UnetrBasicBlock(2, image_channels, width, 3, 1, norm_name="instance", res_block=True)
            self.refine = UnetResBlock(2, embed_dim + width, width, 3, 1, norm_name="instance")
            self.classifier = nn.Conv2d(width, num_classes, 1)
        else:
            self.classifier = nn.Conv2d(embed_dim, num_classes, 1)

    def forward(
        self,
        tokens: torch.Tensor,
        skips: Sequence[torch.Tensor] = (),
        out_size: Sequence[int] | None = None,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        levels = [tokens, *skips]
        if len(levels) != len(self.embed):
            raise ValueError(f"mlp_multiscale decoder expects {len(self.embed) - 1} skip maps, got {len(skips)}.")
        fine = levels[-1].shape[-2:]
        feats = [
            F.interpolate(proj(x), size=fine, mode="bilinear", align_corners=False) if x.shape[-2:] != fine else proj(x)
            for proj, x in zip(self.embed, levels)
        ]
        fused = self.fuse(torch.cat(feats, dim=1))
        size = tuple(out_size) if out_size is not None else tuple(s * 4 for s in fine)
        if not self.full_resolution_channels:
            return F.interpolate(self.classifier(fused), size=size, mode="bilinear", align_corners=False)
        if image is None or tuple(image.shape[-2:]) != size:
            raise ValueError(
                f"The full-resolution decoder path needs the input slices of size {size}, got "
                f"{None if image is None else tuple(image.shape)}."
            )
        fused = F.interpolate(fused, size=size, mode="bilinear", align_corners=False)
        return self.classifier(self.refine(torch.cat([fused, self.image_stem(image)], dim=1)))


def build_decoder(
    name: str,
    in_channels: int,
    num_classes: int,
    skip_channels: Sequence[int],
    embed_dim: int,
    image_channels: int = 0,
    full_resolution_channels: int = 0,
) -> nn.Module:
    """``"mlp"`` -> :class:`MLPDecoder`; ``"mlp_multiscale"`` -> :class:`MultiScaleMLPDecoder` (with its
    full-resolution path when ``full_resolution_channels`` > 0)."""
    if name == "mlp":
        if full_resolution_channels:
            raise ValueError(
                "`network_def#decoder_full_resolution` needs `network_def#decoder` 'mlp_multiscale'; the paper's "
                "'mlp' decoder has no full-resolution path."
            )
        return MLPDecoder(in_channels, num_classes, embed_dim=embed_dim)
    if name == "mlp_multiscale":
        return MultiScaleMLPDecoder(
            in_channels, num_classes, skip_channels, embed_dim=embed_dim, image_channels=image_channels,
            full_resolution_channels=full_resolution_channels,
        )
    raise ValueError(f"Unknown decoder {name!r} (config key `network_def#decoder`); use 'mlp' or 'mlp_multiscale'.")
