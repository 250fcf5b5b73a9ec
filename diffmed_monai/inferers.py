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

__all__ = ["FLIP_DIMS", "ForegroundSliceInferer", "SliceNetwork"]

logger = logging.getLogger(__name__)

#: logit of every class but background (class 0, logit 0) on a skipped slice: softmax gives background 1, others 0
SKIPPED_SLICE_LOGIT = -1e4

#: the in-plane flips of the test-time mirroring of a ``(N, M, H, W)`` slice batch: none, H, W, both (nnU-Net 2D)
FLIP_DIMS = ((), (2,), (3,), (2, 3))


class SliceNetwork:
    """The 2D network as the slice inferer calls it: with the case's modality mask and, optionally, flip TTA.

    Called with a slice batch ``(N, M, H, W)``; returns ``(N, C, H, W)``. ``modality_mask`` ``(M,)`` (or ``None``:
    every modality present) is expanded to ``(N, M)`` and passed as the network's ``modality_mask``.
    ``flip_tta``: the network also runs on the slices flipped along H, along W and along both; the outputs are
    flipped back, turned into probabilities (softmax over C) and averaged, as nnU-Net mirrors. The result is
    returned as log-probabilities, so a later softmax (the bundle's ``Activationsd``) gives exactly the mean
    probability and argmax is unchanged.
    """

    def __init__(self, network: Callable[..., torch.Tensor], modality_mask: torch.Tensor | None = None,
                 flip_tta: bool = False) -> None:
        self.network = network
        self.modality_mask = modality_mask
        self.flip_tta = bool(flip_tta)

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.modality_mask is not None:
            kwargs["modality_mask"] = self.modality_mask.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1)
        if not self.flip_tta:
            return self.network(x, *args, **kwargs)
        total = None
        for dims in FLIP_DIMS:
            out = self.network(torch.flip(x, dims) if dims else x, *args, **kwargs)
            prob = torch.softmax((torch.flip(out, dims) if dims else out).float(), dim=1)
            total = prob if total is None else total + prob
        return torch.log((total / len(FLIP_DIMS)).clamp_min(1e-12)).to(out.dtype)


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
        flip_tta: test-time mirroring (config key ``flip_tta``): each slice batch also runs flipped along each
            in-plane axis and both, the softmax outputs are averaged (:class:`SliceNetwork`); 4x the network calls.
        kwargs: other ``SliceInferer`` / ``SlidingWindowInferer`` arguments (``overlap``, ``mode``, ...), except
            ``sw_batch_size``, which ``max_batch_pixels`` sets.

    Input: ``(B, M, H, W, D)`` (a ``MetaTensor`` keeps its metadata) and, as a keyword, an optional
    ``modality_mask`` ``(B, M)`` (1 present; the same row for every item of the batch), passed to the network
    unless every modality is present. Output: ``(B, num_classes, H, W, D)`` logits (log-probabilities with
    ``flip_tta``).
    """

    def __init__(
        self,
        num_classes: int,
        max_batch_pixels: int = 16 * 256 * 256,
        skip_empty: bool = True,
        spatial_dim: int = 2,
        roi_size: Sequence[int] = (-1, -1),
        flip_tta: bool = False,
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
        self.flip_tta = bool(flip_tta)

    def slices_per_call(self, inputs: torch.Tensor) -> int:
        """Slices per network call for ``inputs`` ``(B, M, H, W, D)``: the budget over one window's pixels."""
        in_plane = [s for i, s in enumerate(inputs.shape[2:]) if i != self.spatial_dim]
        window = [r if r > 0 else s for r, s in zip(self.orig_roi_size, in_plane)]
        return max(1, self.max_batch_pixels // math.prod(window))

    @staticmethod
    def _mask_row(modality_mask: torch.Tensor | None, inputs: torch.Tensor) -> torch.Tensor | None:
        """The ``(M,)`` mask shared by the batch, or ``None`` when every modality is present."""
        if modality_mask is None:
            return None
        mask = convert_to_tensor(modality_mask, track_meta=False).float()
        if mask.ndim != 2 or tuple(mask.shape) != (inputs.shape[0], inputs.shape[1]):
            raise ValueError(f"`modality_mask` must be (B, M)={tuple(inputs.shape[:2])}, got {tuple(mask.shape)}.")
        if not bool((mask == mask[:1]).all()):
            raise ValueError("The cases of one batch have different modalities present; use batch_size 1.")
        return None if bool(mask.all()) else mask[0]

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
        modality_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W, D)`` of ``network`` over the slices of ``inputs`` ``(B, M, H, W, D)``."""
        network = SliceNetwork(network, self._mask_row(modality_mask, inputs), self.flip_tta)
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
