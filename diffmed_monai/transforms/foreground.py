"""Crop a volume to its non-zero voxels and pad its slices to what the network needs (inference and validation)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import CropForeground, CropForegroundd, DivisiblePadd

from ..utils import TOKEN_STRIDE

__all__ = ["NETWORK_GRID", "CropForegroundOnGrid", "CropForegroundOnGridd", "is_nonzero",
           "pad_to_network"]

logger = logging.getLogger(__name__)

#: the network's stride in-plane, none across slices: slices are padded to it and crops start on it
NETWORK_GRID = (TOKEN_STRIDE, TOKEN_STRIDE, 1)


def is_nonzero(x: torch.Tensor) -> torch.Tensor:
    """Foreground test of the crop: ``x != 0`` (MRI background is exactly zero; brain voxels may be negative after
    normalisation)."""
    return x != 0


class CropForegroundOnGrid(CropForeground):
    """MONAI ``CropForeground`` whose box starts and ends on the grid that tiles the uncropped volume.

    The bounding box of the foreground (``select_fn`` over all channels, widened by ``margin``, within the image) is
    widened, outward, to the nearest lines of the ``grid`` on which :func:`pad_to_network` puts the whole volume
    (its symmetric padding included). The crop therefore consists of whole 16 x 16 tiles of the uncropped volume at
    their places: the network's patches and first-stage attention windows (2 x 8 pixels) are the same with and
    without the crop, and the tiles supply the background margin (0 to 15 voxels a side). A box reaching past the
    image is zero-padded there (``CropForeground`` records it; ``Invertd`` undoes crop and padding). A volume
    without foreground is kept whole.

    Input ``(C, H, W, D)``; output ``(C, h, w, d)``, each of ``h, w, d`` a multiple of its ``grid`` entry.
    """

    def __init__(self, grid: Sequence[int] = NETWORK_GRID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grid = tuple(int(k) for k in grid)

    def compute_bounding_box(self, img: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Box ``(start, end)`` per spatial axis; may reach outside ``[0, size)`` where the grid asks for it."""
        shape = np.asarray(img.peek_pending_shape() if isinstance(img, MetaTensor) else img.shape[1:])
        start, end = (np.asarray(b, dtype=np.int64) for b in super().compute_bounding_box(img))
        if len(self.grid) != len(shape):
            raise ValueError(f"`grid` {self.grid} needs one entry per spatial axis of an image of shape {shape}.")
        if np.any(end <= start):  # no foreground: keep everything
            logger.debug("no foreground voxel: the volume is not cropped")
            return np.zeros_like(shape), shape
        grid = np.asarray(self.grid)
        offset = (-shape % grid) // 2  # pad_to_network's symmetric padding before voxel 0
        start = (start + offset) // grid * grid - offset
        end = start - (-(end - start) // grid) * grid
        return start, end


class CropForegroundOnGridd(CropForegroundd):
    """Dictionary version of :class:`CropForegroundOnGrid`, with this package's defaults: the foreground is every
    non-zero voxel of ``source_key`` (:func:`is_nonzero`), no extra margin (the grid's tiles give one), the grid
    :data:`NETWORK_GRID`. ``keys`` are all cropped with the box of ``source_key``.

    Input: ``(C, H, W, D)`` items; output: ``(C, h, w, d)`` items (see :class:`CropForegroundOnGrid`).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        source_key: str = "image",
        margin: Sequence[int] | int = 0,
        grid: Sequence[int] = NETWORK_GRID,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("select_fn", is_nonzero)
        kwargs.setdefault("allow_smaller", True)
        super().__init__(keys, source_key, margin=margin, **kwargs)
        self.cropper = CropForegroundOnGrid(
            grid=grid,
            select_fn=kwargs["select_fn"],
            channel_indices=kwargs.get("channel_indices"),
            margin=margin,
            allow_smaller=kwargs["allow_smaller"],
            lazy=self.lazy,
        )


def pad_to_network(keys: KeysCollection = "image") -> DivisiblePadd:
    """MONAI ``DivisiblePadd`` that zero-pads each slice, symmetrically, to a multiple of the network's stride in-plane
    (:data:`NETWORK_GRID`); the slice axis is left alone. The Swin stages pad their own windows.

    Input ``(C, h, w, d)``; output ``(C, ceil(h / 16) * 16, ceil(w / 16) * 16, d)``.
    """
    return DivisiblePadd(keys=keys, k=NETWORK_GRID)
