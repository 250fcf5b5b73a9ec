"""Slice-by-slice inference that computes only where there is something to segment."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.utils import convert_to_dst_type, convert_to_tensor

from .utils import TOKEN_STRIDE

__all__ = ["FLIP_DIMS", "ForegroundSliceInferer", "SliceNetwork", "cpu_has_native_bf16", "default_cpu_workers"]

logger = logging.getLogger(__name__)

#: logit of every class but background (class 0, logit 0) on a skipped slice: softmax gives background 1, others 0
SKIPPED_SLICE_LOGIT = -1e4

#: the in-plane flips of the test-time mirroring of a ``(N, M, H, W)`` slice batch: none, H, W, both (nnU-Net 2D)
FLIP_DIMS = ((), (2,), (3,), (2, 3))


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16 in the ``flags`` of ``cpuinfo``; Linux
    only, ``False`` elsewhere). The default of the config key ``cpu_bf16``: without these instructions bf16
    autocast on a CPU is emulated (``docs/benchmarks.md`` compares it with float32).
    """
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_cpu_workers(threads: int | None = None) -> int:
    """Concurrent slice-network calls on a CPU of ``threads`` PyTorch threads (default: ``torch.get_num_threads()``):
    one per thread on up to two threads, else one per two threads: a slice network's many small operations keep a
    few threads each busier in separate calls than many threads in one call (the measurements behind this rule are
    in ``docs/benchmarks.md``)."""
    threads = torch.get_num_threads() if threads is None else int(threads)
    return max(1, threads if threads <= 2 else threads // 2)


class SliceNetwork:
    """The 2D network as the slice inferer calls it: with the case's modality mask and, optionally, flip TTA.

    Called with a slice batch ``(N, M, H, W)``; returns ``(N, C, H, W)``. ``modality_mask`` ``(M,)`` (or ``None``:
    every modality present) is expanded to ``(N, M)`` and passed as the network's ``modality_mask``.
    ``flip_tta``: the network also runs on the slices flipped along H, along W and along both; the outputs are
    flipped back, turned into probabilities (softmax over C) and averaged, as nnU-Net mirrors. The result is
    returned as log-probabilities, so a later softmax (the bundle's ``Activationsd``) gives exactly the mean
    probability and argmax is unchanged.
    ``cpu_bf16``: on a CPU, the network runs under bf16 autocast and its output is returned as float32 (on CUDA
    MONAI's evaluators autocast already, config key ``amp``).
    """

    def __init__(self, network: Callable[..., torch.Tensor], modality_mask: torch.Tensor | None = None,
                 flip_tta: bool = False, cpu_bf16: bool = False) -> None:
        self.network = network
        self.modality_mask = modality_mask
        self.flip_tta = bool(flip_tta)
        self.cpu_bf16 = bool(cpu_bf16)

    def _run(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not (self.cpu_bf16 and x.device.type == "cpu"):
            return self.network(x, *args, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.network(x, *args, **kwargs)
        return out.float()

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.modality_mask is not None:
            kwargs["modality_mask"] = self.modality_mask.to(device=x.device, dtype=x.dtype).expand(x.shape[0], -1)
        if not self.flip_tta:
            return self._run(x, *args, **kwargs)
        total = None
        for dims in FLIP_DIMS:
            out = self._run(torch.flip(x, dims) if dims else x, *args, **kwargs)
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
            in-plane axis and both, the softmax outputs are averaged (:class:`SliceNetwork`); four network calls
            per slice batch.
        cpu_bf16: on a CPU, run the network under bf16 autocast (config key ``cpu_bf16``; see
            :func:`cpu_has_native_bf16`; ``docs/benchmarks.md`` compares it with float32).
        crop_slices: with ``skip_empty``, each slice with foreground runs cropped to its own non-zero box, grown to
            the ``slice_multiple``-px grid of the slice (config key ``crop_slices``): a brain's top and bottom slices
            are much smaller than its widest one. Outside the box the output is background, as on skipped slices.
            Slices of one box size are batched together. Needs the whole slice as window (``roi_size`` (-1, -1)).
            It trades the pixels outside the boxes for more, smaller calls, which pays on a CPU and not on a GPU:
            the configs turn it on for CPUs only (``docs/benchmarks.md`` has both).
        cpu_workers: with ``crop_slices`` on a CPU, this many network calls run at a time, each on its share of
            PyTorch's CPU threads (config key ``cpu_workers``, default :func:`default_cpu_workers`): a slice
            network's many small operations keep two threads busier than one call with twice the threads does.
            Each call keeps its ``max_batch_pixels``, so peak memory is bounded by ``cpu_workers`` calls' worth.
            On CUDA calls run one at a time.
        slice_multiple: the grid of ``crop_slices`` (the network's input multiple, 16 for DiffMedDINOv3); the
            slices' in-plane size must be a multiple of it (``pad_to_network`` does that).
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
        cpu_bf16: bool = False,
        crop_slices: bool = False,
        slice_multiple: int = TOKEN_STRIDE,
        cpu_workers: int = 1,
        **kwargs: Any,
    ) -> None:
        if "sw_batch_size" in kwargs:
            raise ValueError("ForegroundSliceInferer sizes its batches from `max_batch_pixels`; drop `sw_batch_size`.")
        if int(num_classes) < 1 or int(max_batch_pixels) < 1 or int(cpu_workers) < 1:
            raise ValueError(
                f"`num_classes` ({num_classes}), `max_batch_pixels` ({max_batch_pixels}) and `cpu_workers` "
                f"({cpu_workers}) must be positive."
            )
        kwargs.setdefault("progress", False)
        super().__init__(spatial_dim=spatial_dim, roi_size=roi_size, sw_batch_size=1, **kwargs)
        self.num_classes = int(num_classes)
        self.max_batch_pixels = int(max_batch_pixels)
        self.skip_empty = bool(skip_empty)
        self.flip_tta = bool(flip_tta)
        self.cpu_bf16 = bool(cpu_bf16)
        self.crop_slices = bool(crop_slices)
        self.slice_multiple = int(slice_multiple)
        self.cpu_workers = int(cpu_workers)
        if self.crop_slices and (any(r > 0 for r in self.orig_roi_size) or self.slice_multiple < 1):
            raise ValueError(
                f"`crop_slices` runs whole slices: it needs roi_size (-1, -1) (got {list(self.orig_roi_size)}) and a "
                f"positive `slice_multiple` (got {slice_multiple})."
            )

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

    def _foreground(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(S, P, Q)`` bool: voxels of ``inputs`` ``(B, M, H, W, D)`` non-zero in any batch item and channel, slice
        axis first (the in-plane axes in their order)."""
        x = convert_to_tensor(inputs, track_meta=False)
        return x.ne(0).any(dim=1).any(dim=0).movedim(self.spatial_dim, 0)

    @staticmethod
    def _occupied(foreground: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(foreground.flatten(1).any(dim=1)).flatten()

    def occupied_slices(self, inputs: torch.Tensor) -> torch.Tensor:
        """Indices ``(n,)`` of the slices of ``inputs`` ``(B, M, H, W, D)`` with at least one non-zero voxel."""
        return self._occupied(self._foreground(inputs))

    def __call__(
        self,
        inputs: torch.Tensor,
        network: Callable[..., torch.Tensor],
        *args: Any,
        modality_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Logits ``(B, num_classes, H, W, D)`` of ``network`` over the slices of ``inputs`` ``(B, M, H, W, D)``."""
        network = SliceNetwork(network, self._mask_row(modality_mask, inputs), self.flip_tta, self.cpu_bf16)
        self.sw_batch_size = self.slices_per_call(inputs)
        if not self.skip_empty:
            return super().__call__(inputs, network, *args, **kwargs)
        axis = self.spatial_dim + 2
        foreground = self._foreground(inputs)  # one pass over the volume for the slices and their boxes
        keep = self._occupied(foreground)
        total = inputs.shape[axis]
        logger.debug("%d of %d slices hold foreground; %d per network call", len(keep), total, self.sw_batch_size)
        if len(keep) == total and not self.crop_slices:
            return super().__call__(inputs, network, *args, **kwargs)
        meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
        x = convert_to_tensor(inputs, track_meta=False)
        shape = list(x.shape)
        shape[1] = self.num_classes
        out = torch.full(shape, SKIPPED_SLICE_LOGIT, dtype=x.dtype, device=x.device)
        out[:, 0] = 0.0
        if len(keep) and self.crop_slices:
            self._run_cropped_slices(x, out, keep, self._boxes(foreground[keep]), network, *args, **kwargs)
        elif len(keep):
            kept = self._checked(super().__call__(x.index_select(axis, keep), network, *args, **kwargs))
            out.index_copy_(axis, keep, convert_to_tensor(kept, track_meta=False).to(out.dtype))
        return convert_to_dst_type(out, meta if meta is not None else x)[0]

    def _checked(self, logits: Any) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.shape[1] != self.num_classes:
            raise ValueError(
                f"The network must return one tensor of `num_classes`={self.num_classes} channels; got "
                f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}."
            )
        return logits

    def _boxes(self, occupied: torch.Tensor) -> list[tuple[int, int, int, int]]:
        """In-plane box ``(p0, p1, q0, q1)`` of each kept slice's foreground ``occupied`` ``(n, P, Q)`` (non-zero in
        any batch item and channel), grown outwards to the ``slice_multiple``-px grid."""
        k = self.slice_multiple
        boxes = []
        for rows, cols in zip(occupied.any(dim=2).tolist(), occupied.any(dim=1).tolist()):
            p = [i for i, v in enumerate(rows) if v]
            q = [i for i, v in enumerate(cols) if v]
            boxes.append((p[0] // k * k, -(-(p[-1] + 1) // k) * k, q[0] // k * k, -(-(q[-1] + 1) // k) * k))
        return boxes

    def _run_cropped_slices(self, x: torch.Tensor, out: torch.Tensor, keep: torch.Tensor,
                            boxes: list[tuple[int, int, int, int]], network: Callable[..., torch.Tensor], *args: Any,
                            **kwargs: Any) -> None:
        """Fill ``out`` ``(B, C, H, W, D)`` on the slices ``keep`` of ``x`` ``(B, M, H, W, D)``, each slice cropped
        to its box (``boxes``, :meth:`_boxes`), slices of one box size batched within the pixel budget."""
        axis = self.spatial_dim + 2
        xs, outs = x.movedim(axis, -1), out.movedim(axis, -1)  # (B, M, P, Q, D) views; in-plane dims first
        if xs.shape[2] % self.slice_multiple or xs.shape[3] % self.slice_multiple:
            raise ValueError(f"`crop_slices` needs slices whose size {tuple(xs.shape[2:4])} is a multiple of "
                             f"`slice_multiple`={self.slice_multiple}; pad them first (pad_to_network).")
        by_size: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int]]]] = {}
        for d, box in zip(keep.tolist(), boxes):
            by_size.setdefault((box[1] - box[0], box[3] - box[2]), []).append((d, box))
        b = x.shape[0]
        chunks = []
        for (h, w), items in by_size.items():
            per_call = max(1, self.max_batch_pixels // (h * w * b))
            chunks += [items[start:start + per_call] for start in range(0, len(items), per_call)]
        workers = self.cpu_workers if x.device.type == "cpu" else 1

        def run(chunk: list[tuple[int, tuple[int, int, int, int]]]) -> torch.Tensor:
            batch = torch.cat([xs[:, :, p0:p1, q0:q1, d] for d, (p0, p1, q0, q1) in chunk])  # (n*B, M, h, w)
            return self._checked(network(batch, *args, **kwargs))

        if workers > 1 and len(chunks) > 1:
            threads = torch.get_num_threads()
            try:
                with ThreadPoolExecutor(workers, thread_name_prefix="slice-inferer") as pool:
                    results = pool.map(_in_worker_threads(run, max(1, threads // workers)), chunks)  # in order
                    self._write(outs, chunks, results, b)
            finally:
                torch.set_num_threads(threads)  # the caller's, whatever the workers set
        else:
            self._write(outs, chunks, map(run, chunks), b)

    @staticmethod
    def _write(outs: torch.Tensor, chunks: list, results: Any, b: int) -> None:
        """Put each chunk's logits ``(n*B, C, h, w)`` into ``outs`` ``(B, C, P, Q, D)`` at its slices' boxes."""
        for chunk, logits in zip(chunks, results):
            for i, (d, (p0, p1, q0, q1)) in enumerate(chunk):
                outs[:, :, p0:p1, q0:q1, d] = logits[i * b:(i + 1) * b].to(outs.dtype)


def _in_worker_threads(fn: Callable[[Any], torch.Tensor], threads: int) -> Callable[[Any], torch.Tensor]:
    """``fn`` for a worker thread: with the caller's gradient, inference-mode and CPU-autocast state (PyTorch keeps
    them per thread) and ``threads`` intra-op threads of its own."""
    grad, inference = torch.is_grad_enabled(), torch.is_inference_mode_enabled()
    autocast, dtype = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def call(item: Any) -> torch.Tensor:
        torch.set_num_threads(threads)
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), torch.autocast(
            "cpu", dtype=dtype, enabled=autocast
        ):
            return fn(item)

    return call
