"""Slice-by-slice inference that computes only where there is something to segment."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.utils import convert_to_dst_type, convert_to_tensor

__all__ = ["ForegroundSliceInferer"]

logger = logging.getLogger(__name__)

#: logit of every class but background (class 0, logit 0) on a skipped slice: softmax gives background 1, others 0
SKIPPED_SLICE_LOGIT = -1e4


class ForegroundSliceInferer(SliceInferer):
    """MONAI ``SliceInferer`` that runs a 2D network only on the slices holding a non-zero voxel, in batches
    sized by a pixel budget.

    Slices whose every voxel (all channels, all batch items) is zero are never passed to the network: their
    output is background (class 0 logit 0, every other class :data:`SKIPPED_SLICE_LOGIT`). The other slices go
    through ``SliceInferer`` as one smaller volume and are put back in place. With the default ``roi_size``
    ``(-1, -1)`` each slice is one window (MONAI's fall-back to the image size), so the input's in-plane size
    must already suit the network (see :func:`diffmed_monai.transforms.pad_to_network`).

    Args:
        num_classes: channels of the network's output (needed to fill the slices that are skipped).
        max_batch_pixels: memory budget: each network call gets ``max(1, max_batch_pixels // (h * w))`` slices
            of ``h x w`` (window) pixels, so peak memory does not grow with the number of slices.
        skip_empty: skip the all-zero slices (``False``: every slice runs, as plain ``SliceInferer``).
        spatial_dim: the slice axis of the ``(H, W, D)`` volume (2: axial).
        roi_size: in-plane window; non-positive entries take the slice's size.
        kwargs: other ``SliceInferer`` / ``SlidingWindowInferer`` arguments (``overlap``, ``mode``, ...), except
            ``sw_batch_size``, which ``max_batch_pixels`` sets.

    Input: ``(B, M, H, W, D)`` (a ``MetaTensor`` keeps its metadata). Output: ``(B, num_classes, H, W, D)`` logits.
    """

    def __init__(
        self,
        num_classes: int,
        max_batch_pixels: int = 16 * 256 * 256,
        skip_empty: bool = True,
        spatial_dim: int = 2,
        roi_size: Sequence[int] = (-1, -1),
        **kwargs: Any,
    ) -> None:
        if "sw_batch_size" in kwargs:
            raise ValueError("ForegroundSliceInferer sizes its batches from `max_batch_pixels`; drop `sw_batch_size`.")
        if int(num_classes) < 1 or int(max_batch_pixels) < 1:
            raise ValueError(
                f"`num_classes` ({num_classes}) and `max_batch_pixels` ({max_batch_pixels}) must be positive."
            )
        kwargs.setdefault("progress", False)
        super().__init__(spatial_dim=spatial_dim, roi_size=roi_size, sw_batch_size=1, **kwargs)
        self.num_classes = int(num_classes)
        self.max_batch_pixels = int(max_batch_pixels)
        self.skip_empty = bool(skip_empty)

    def slices_per_call(self, inputs: torch.Tensor) -> int:
        """Slices per network call for ``inputs`` ``(B, M, H, W, D)``: the budget over one window's pixels."""
        in_plane = [s for i, s in enumerate(inputs.shape[2:]) if i != self.spatial_dim]
        window = [r if r > 0 else s for r, s in zip(self.orig_roi_size, in_plane)]
        return max(1, self.max_batch_pixels // math.prod(window))

    def occupied_slices(self, inputs: torch.Tensor) -> torch.Tensor:
        """Indices ``(n,)`` of the slices of ``inputs`` ``(B, M, H, W, D)`` with at least one non-zero voxel."""
        axis = self.spatial_dim + 2
        x = convert_to_tensor(inputs, track_meta=False)
        return torch.nonzero(x.ne(0).any(dim=tuple(d for d in range(x.ndim) if d != axis))).flatten()

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., torch.Tensor],
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W, D)`` of ``network`` over the slices of ``inputs`` ``(B, M, H, W, D)``."""
        self.sw_batch_size = self.slices_per_call(inputs)
        if not self.skip_empty:
            return super().__call__(inputs, network, *args, **kwargs)
        axis = self.spatial_dim + 2
        keep = self.occupied_slices(inputs).to(inputs.device)
        total = inputs.shape[axis]
        logger.debug("%d of %d slices hold foreground; %d per network call", len(keep), total, self.sw_batch_size)
        if len(keep) == total:
            return super().__call__(inputs, network, *args, **kwargs)
        meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
        x = convert_to_tensor(inputs, track_meta=False)
        shape = list(x.shape)
        shape[1] = self.num_classes
        out = torch.full(shape, SKIPPED_SLICE_LOGIT, dtype=x.dtype, device=x.device)
        out[:, 0] = 0.0
        if len(keep):
            kept = super().__call__(x.index_select(axis, keep), network, *args, **kwargs)
            if not isinstance(kept, torch.Tensor) or kept.shape[1] != self.num_classes:
                raise ValueError(
                    f"The network must return one tensor of `num_classes`={self.num_classes} channels; got "
                    f"{tuple(kept.shape) if isinstance(kept, torch.Tensor) else type(kept).__name__}."
                )
            out.index_copy_(axis, keep, convert_to_tensor(kept, track_meta=False).to(out.dtype))
        return convert_to_dst_type(out, meta if meta is not None else x)[0]
