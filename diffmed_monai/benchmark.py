"""Training and inference speed of DiffMedDINOv3 against the MONAI models a user would otherwise run.

One process, one device, the same synthetic data for every model:

* training: steps/s and slices/s of the full DiffMedDINOv3 KD step (frozen DINOv3 teacher forward, student
  forward + backward with :class:`~diffmed_monai.losses.DiffMedLoss`, AdamW step) against MONAI ``SwinUNETR``
  (2D, feature_size 48, 4 input channels, ``DiceCELoss``) at the same batch;
* inference: seconds per volume of DiffMedDINOv3 through ``SliceInferer`` (the bundle's inference settings)
  against MONAI ``SegResNet`` with the ``brats_mri_segmentation`` bundle's settings through
  ``SlidingWindowInferer``, and ``SwinUNETR``-2D through ``SliceInferer``;
* peak memory of each (``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the growth of the peak resident set).

Beside every measured figure stands its arithmetic floor: the FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode`` divided by the matmul rate measured in the same process (bf16 on a
GPU or with ``amp``, fp32 otherwise). No model reaches its floor; the floors show how far each figure could move
and which targets no optimisation can reach.

The teacher is always randomly initialised (no weights are needed to time it); the output says so.
Use :func:`run_benchmark` from Python or ``python scripts/benchmark.py`` from a shell.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["STUDENT_PRESETS", "count_benchmark_flops", "count_flops", "format_report", "matmul_rate", "run_benchmark"]

logger = logging.getLogger("diffmed_monai.benchmark")

MODALITIES = ("t1", "t1ce", "t2", "flair")
NUM_CLASSES = 4  # background + 3 tumour labels, as the BraTS preset

#: ``default`` = the network's defaults (Swin-T-size students); ``tiny`` = the test configuration (quick CPU runs).
STUDENT_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tiny": dict(
        feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, fusion_heads=2, fusion_depth=1,
        denoiser_width=32, denoiser_depth=1, denoiser_heads=2, decoder_dim=32,
    ),
}

#: Sizes used when an option is left at ``None``: the issue's real sizes on a GPU; on a CPU sizes that finish in
#: 1.5-3 minutes on 2 cores (87 s measured on the machine of docs/benchmarks.md).
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": dict(batch_size=4, image_size=256, volume_shape=(240, 240, 155), warmup=5, steps=20,
                 infer_warmup=1, infer_repeats=3),
    "cpu": dict(batch_size=4, image_size=128, volume_shape=(128, 128, 16), warmup=2, steps=5,
                infer_warmup=1, infer_repeats=3),
}

# The brats_mri_segmentation bundle (MONAI model zoo): network and inferer.
SEGRESNET_BUNDLE = dict(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4, out_channels=3,
                        dropout_prob=0.2)
SEGRESNET_SW = dict(sw_batch_size=1, overlap=0.5)
# DiffMedDINOv3's bundle inference.json: SliceInferer over axial slices.
SLICE_SW = dict(sw_batch_size=16, overlap=0.25)


# ---------------------------------------------------------------------------------------------------- utilities
def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` is 'cuda' but no CUDA GPU is available; use device='cpu' or 'auto'.")
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"Unsupported device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'.")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _malloc_trim() -> None:
    """Return freed heap to the OS (glibc), so that the next section's RSS growth is its own."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class _PeakMemory:
    """Peak memory of a section: CUDA ``max_memory_allocated`` (absolute), or on Linux the growth of the peak RSS.

    The CPU figure (approximate: the allocator may reuse memory an earlier section freed) trims the heap, resets the
    kernel's peak-RSS mark (``/proc/self/clear_refs``) and reads ``VmHWM`` minus the starting RSS; where that is not
    allowed it is ``None``. ``gb`` holds the result after the ``with`` block.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gb: float | None = None
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss_growth"
        self._base_kb: int | None = None

    def __enter__(self) -> _PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _malloc_trim()
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current RSS
                self._base_kb = _proc_status_kb("VmRSS")
            except OSError:
                self._base_kb = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.gb = torch.cuda.max_memory_allocated(self.device) / 2**30
        elif self._base_kb is not None:
            hwm = _proc_status_kb("VmHWM")
            self.gb = None if hwm is None else max(0, hwm - self._base_kb) / 2**20


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int | None = None, iters: int | None = None) -> dict:
    """Measured dense matmul rate (FLOP/s) of an ``n x n`` by ``n x n`` product.

    On a GPU the mean of ``iters`` back-to-back products between two CUDA events; on a CPU the best of ``iters``.
    """
    if n is None:
        n = 8192 if device.type == "cuda" else 2048
    if iters is None:
        iters = 20 if device.type == "cuda" else 5
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        torch.mm(a, b)
    best = math.inf
    if device.type == "cuda":
        _sync(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            torch.mm(a, b)
        end.record()
        _sync(device)
        best = start.elapsed_time(end) / 1000 / iters
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "flops_per_s": 2 * n**3 / best}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (matmul, convolution and attention, as ``FlopCounterMode`` counts them) of one call of ``fn``.

    Attention is counted on PyTorch's math path, so the fused CPU kernel (which the counter has no formula for)
    is not missed; the count is the same for every attention backend.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel([SDPBackend.MATH]), counter:
        fn()
    return int(counter.get_total_flops())


def _maybe_compile(module: nn.Module, compile: bool | str) -> Callable:
    if not compile:
        return module
    mode = compile if isinstance(compile, str) else None
    return torch.compile(module, mode=mode)


def _to_memory_format(module: nn.Module, ndim: int, channels_last: bool) -> nn.Module:
    if channels_last:
        module.to(memory_format=torch.channels_last if ndim == 2 else torch.channels_last_3d)
    return module


def _ceil_to(x: int, k: int) -> int:
    return int(math.ceil(x / k) * k)


def segresnet_roi(volume_shape: Sequence[int]) -> tuple[int, int, int]:
    """The bundle's ROI, [240, 240, 160] for BraTS volumes: the volume rounded up to multiples of 16."""
    return tuple(_ceil_to(int(s), 16) for s in volume_shape)  # type: ignore[return-value]


class _WindowCounter:
    """Wraps a network for an inferer and counts the windows (batch entries) it is called on."""

    def __init__(self, network: Callable) -> None:
        self.network = network
        self.windows = 0

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.windows += int(x.shape[0])
        return self.network(x, *args, **kwargs)


# ------------------------------------------------------------------------------------------------------- models
def build_diffmed(preset: str, teacher_dim: int, stacked_specific: bool) -> nn.Module:
    from .networks import DiffMedDINOv3

    if preset not in STUDENT_PRESETS:
        raise ValueError(f"Unknown student preset {preset!r}; choose one of {sorted(STUDENT_PRESETS)}.")
    return DiffMedDINOv3(
        modalities=MODALITIES, num_classes=NUM_CLASSES, teacher_dim=teacher_dim, stacked_specific=stacked_specific,
        **STUDENT_PRESETS[preset],
    )


def build_swin_unetr_2d() -> nn.Module:
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(in_channels=len(MODALITIES), out_channels=NUM_CLASSES, feature_size=48, spatial_dims=2)


def build_segresnet_bundle() -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=3, **SEGRESNET_BUNDLE)


def _apply_fused_attention(model: nn.Module, enabled: bool) -> None:
    if enabled:
        from .networks.fused_attention import use_fused_window_attention

        use_fused_window_attention(model)


# ----------------------------------------------------------------------------------------------------- sections
def _time_steps(
    step: Callable[[], None], warmup: int, steps: int, device: torch.device, count_syncs: bool = False
) -> dict:
    """Run ``warmup`` untimed steps, then time ``steps`` steps with one synchronisation at each end of the window.

    With ``count_syncs`` on CUDA, PyTorch's sync debug mode counts the host-device synchronisations that the timed
    steps trigger (``host_syncs``; 0 means the step never waits for the GPU).
    """
    for _ in range(warmup):
        step()
    _sync(device)
    step_times = []
    watch = count_syncs and device.type == "cuda"
    with warnings.catch_warnings(record=True) as caught:
        if watch:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        try:
            t0 = time.perf_counter()
            for _ in range(steps):
                ts = time.perf_counter()
                step()
                if device.type == "cpu":  # on a GPU this would time kernel launches only; no sync inside the window
                    step_times.append(time.perf_counter() - ts)
        finally:
            if watch:
                torch.cuda.set_sync_debug_mode("default")
    _sync(device)
    total = time.perf_counter() - t0
    out: dict[str, Any] = {"seconds": total, "seconds_per_step_mean": total / steps}
    if step_times:  # a CPU shared with other processes: the median step resists their bursts
        out["seconds_per_step"] = statistics.median(step_times)
        out["statistic"] = "median of per-step times"
    else:
        out["seconds_per_step"] = total / steps
        out["statistic"] = "mean over the timed window (one synchronisation at each end)"
    if watch:
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        out["host_syncs"] = len(syncs)
        out["host_sync_sites"] = sorted({f"{os.path.basename(w.filename)}:{w.lineno}" for w in syncs})[:10]
    for w in caught:  # pass the others on
        if not (watch and "synchroniz" in str(w.message).lower()):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if step_times:
        out["step_times_s"] = step_times
    return out


def _train_section(
    name: str, device: torch.device, build: Callable[[], tuple[Callable[[], None], Callable[[], None]]],
    batch_size: int, warmup: int, steps: int,
) -> dict:
    logger.info("training: %s", name)
    with _PeakMemory(device) as mem:
        count_step, step = build()
        flops = count_flops(count_step)
        timing = _time_steps(step, warmup, steps, device, count_syncs=True)
        del count_step, step
    sps = 1.0 / timing["seconds_per_step"]
    return {
        "steps_per_s": sps,
        "slices_per_s": sps * batch_size,
        "flops_per_slice": flops / batch_size,
        "peak_mem_gb": mem.gb,
        **timing,
    }


def _infer_section(
    name: str, device: torch.device, build: Callable[[], tuple[nn.Module, Callable, Any, dict]], volume: torch.Tensor,
    window_shape: Sequence[int], amp: bool, warmup: int, repeats: int,
) -> dict:
    logger.info("inference: %s", name)
    with _PeakMemory(device) as mem:
        eager, runner, inferer, inferer_desc = build()
        counter = _WindowCounter(runner)
        window = torch.randn(1, *window_shape, device=device)

        def one_window() -> None:  # no_grad: FlopCounterMode + inference_mode + autocast breaks einsum (torch 2.14)
            with torch.no_grad(), _autocast(device, amp):
                eager(window)

        flops_per_window = count_flops(one_window)

        def one_volume() -> None:
            with torch.inference_mode(), _autocast(device, amp):
                inferer(volume, counter)

        timing = _time_steps(one_volume, warmup, repeats, device)
        windows_per_volume = counter.windows // (warmup + repeats)
        del eager, runner, counter
    return {
        "seconds_per_volume": timing["seconds_per_step"],
        "flops_per_volume": flops_per_window * windows_per_volume,
        "flops_per_window": flops_per_window,
        "windows_per_volume": windows_per_volume,
        "inferer": inferer_desc,
        "peak_mem_gb": mem.gb,
        "repeats": repeats,
        "seconds": timing["seconds"],
        "seconds_per_volume_mean": timing["seconds_per_step_mean"],
        "statistic": timing["statistic"],
        **({"volume_times_s": timing["step_times_s"]} if "step_times_s" in timing else {}),
    }


# ------------------------------------------------------------------------------------------------------- driver
def run_benchmark(
    device: str = "auto",
    batch_size: int | None = None,
    image_size: int | None = None,
    teacher_arch: str = "vitb16",
    student: str = "default",
    volume_shape: Sequence[int] | None = None,
    warmup: int | None = None,
    steps: int | None = None,
    infer_warmup: int | None = None,
    infer_repeats: int | None = None,
    amp: bool | None = None,
    compile: bool | str = False,
    stacked_specific: bool | None = None,
    fused_attention: bool = True,
    channels_last: bool = False,
    output: str | None = "benchmark.json",
    threads: int | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> dict:
    """Time training and inference of DiffMedDINOv3 and the MONAI baselines; return (and write) the results.

    Args:
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda[:N]"``.
        batch_size: training batch (slices), the same for both trained models. Default: 4.
        image_size: square slice size for training and the ``SliceInferer`` ROI (a multiple of 32, >= 64).
            Default: 256 on a GPU, 128 on a CPU.
        teacher_arch: DINOv3 size (``tiny``, ``vits16``, ``vitb16``, ``vitl16``...), always randomly initialised.
        student: ``"default"`` (the network's defaults) or ``"tiny"``.
        volume_shape: (H, W, D) of the inference volume (4 channels). Default: BraTS (240, 240, 155) on a GPU,
            (128, 128, 16) on a CPU. SegResNet's ROI is the volume rounded up to multiples of 16 (the bundle's
            [240, 240, 160] for BraTS).
        warmup: untimed training steps per model. Default: 5 on a GPU, 2 on a CPU.
        steps: timed training steps per model. Default: 20 on a GPU, 5 on a CPU.
        infer_warmup: untimed volumes per model. Default: 1.
        infer_repeats: timed volumes per model. Default: 3.
        amp: bf16 autocast for students and baselines (default: on for CUDA, off on CPU); the teacher runs in bf16
            under ``inference_mode`` whenever ``amp`` is on.
        compile: ``torch.compile`` every model (``True``, or a mode such as ``"max-autotune"``,
            ``"reduce-overhead"`` for CUDA graphs).
        stacked_specific: run DiffMedDINOv3's modality-specific students and denoisers as one vmapped call
            (default: on for CUDA; off on a CPU, where the loop measured faster, see docs/benchmarks.md).
        fused_attention: SDPA windowed attention in all Swin models (training too on CUDA; on a CPU only without
            gradients, as PyTorch's fused CPU kernel cannot differentiate the bias).
        channels_last: channels-last memory format for every model (``channels_last_3d`` for SegResNet).
        output: JSON path (``None``: do not write).
        threads: ``torch.set_num_threads`` during this run (default: leave PyTorch's choice, one per core).
        seed: seed for weights and synthetic data.
        verbose: print the table.

    Returns the result dict (the JSON content).
    """
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _run(device, batch_size, image_size, teacher_arch, student, volume_shape, warmup, steps, infer_warmup,
                    infer_repeats, amp, compile, stacked_specific, fused_attention, channels_last, output, seed,
                    verbose)
    finally:
        torch.set_num_threads(previous_threads)


def _run(
    device, batch_size, image_size, teacher_arch, student, volume_shape, warmup, steps, infer_warmup, infer_repeats,
    amp, compile, stacked_specific, fused_attention, channels_last, output, seed, verbose,
) -> dict:
    from monai.inferers import SliceInferer, SlidingWindowInferer
    from monai.losses import DiceCELoss

    from .losses import DiffMedLoss
    from .networks import DINOv3Teacher

    wall0 = time.perf_counter()
    load_at_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    dev = _resolve_device(device)
    defaults = DEVICE_DEFAULTS[dev.type]
    batch_size = int(batch_size or defaults["batch_size"])
    image_size = int(image_size or defaults["image_size"])
    volume_shape = tuple(int(s) for s in (volume_shape or defaults["volume_shape"]))
    warmup = int(defaults["warmup"] if warmup is None else warmup)
    steps = int(steps or defaults["steps"])
    infer_warmup = int(defaults["infer_warmup"] if infer_warmup is None else infer_warmup)
    infer_repeats = int(infer_repeats or defaults["infer_repeats"])
    amp = dev.type == "cuda" if amp is None else bool(amp)
    stacked_specific = dev.type == "cuda" if stacked_specific is None else bool(stacked_specific)
    fused_attention = bool(fused_attention)
    if image_size % 32 or image_size < 64:
        raise ValueError(
            f"`image_size`={image_size} must be a multiple of 32 and >= 64 (SwinUNETR-2D downsamples by 32 and "
            "instance-normalises its bottleneck, which needs more than one pixel)."
        )
    if len(volume_shape) != 3:
        raise ValueError(f"`volume_shape` must be (H, W, D), got {volume_shape}.")
    if student not in STUDENT_PRESETS:
        raise ValueError(f"Unknown student preset {student!r}; choose one of {sorted(STUDENT_PRESETS)}.")
    if steps < 1 or infer_repeats < 1 or warmup < 0 or infer_warmup < 0:
        raise ValueError("`steps` and `infer_repeats` must be >= 1, warmups >= 0.")
    m = len(MODALITIES)

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch_size, m, image_size, image_size, generator=gen).to(dev)
    label = torch.randint(0, NUM_CLASSES, (batch_size, 1, image_size, image_size), generator=gen).to(dev)
    volume = torch.randn(1, m, *volume_shape, generator=gen).to(dev)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    rate = matmul_rate(dev, torch.bfloat16 if amp else torch.float32)

    # ---- training: DiffMedDINOv3 KD step (teacher + students + loss + AdamW)
    def build_diffmed_train():
        teacher = DINOv3Teacher(arch=teacher_arch, random_init=True).to(dev)
        net = build_diffmed(student, teacher.hidden_size, stacked_specific).to(dev)
        _apply_fused_attention(net, fused_attention)
        _to_memory_format(net, 2, channels_last)
        loss_fn = DiffMedLoss(m, teacher.hidden_size).to(dev)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, **({"fused": True} if dev.type == "cuda" else {}))
        run_net, run_teacher = _maybe_compile(net, compile), _maybe_compile(teacher, compile)

        def step_with(student_fn: Callable, teacher_fn: Callable, update: bool) -> None:
            with torch.inference_mode(), _autocast(dev, amp):
                tokens = teacher_fn(image)
            with _autocast(dev, amp):
                out = student_fn(image, return_training_outputs=True)
                loss = loss_fn(out, label, tokens)["loss"]
            loss.backward()
            if update:
                opt.step()
            opt.zero_grad(set_to_none=True)

        return (lambda: step_with(net, teacher, False)), (lambda: step_with(run_net, run_teacher, True))

    # ---- training: SwinUNETR-2D with DiceCELoss
    def build_swin_train():
        net = _to_memory_format(build_swin_unetr_2d().to(dev), 2, channels_last)
        _apply_fused_attention(net, fused_attention)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, **({"fused": True} if dev.type == "cuda" else {}))
        run_net = _maybe_compile(net, compile)

        def step_with(fn: Callable, update: bool) -> None:
            with _autocast(dev, amp):
                loss = loss_fn(fn(image).float(), label)
            loss.backward()
            if update:
                opt.step()
            opt.zero_grad(set_to_none=True)

        return (lambda: step_with(net, False)), (lambda: step_with(run_net, True))

    training = {
        "diffmed": _train_section("DiffMedDINOv3", dev, build_diffmed_train, batch_size, warmup, steps),
        "swin_unetr_2d": _train_section("SwinUNETR-2D", dev, build_swin_train, batch_size, warmup, steps),
    }
    _free(dev)

    # ---- inference
    slice_roi = (image_size, image_size)
    seg_roi = segresnet_roi(volume_shape)  # (240, 240, 160) for BraTS, as the bundle

    def slice_inferer():
        inf = SliceInferer(roi_size=slice_roi, spatial_dim=2, progress=False, **SLICE_SW)
        return inf, {"name": "SliceInferer", "roi_size": list(slice_roi), "spatial_dim": 2, **SLICE_SW}

    def build_diffmed_infer():
        net = build_diffmed(student, _teacher_dim(teacher_arch), stacked_specific).to(dev).eval()
        _apply_fused_attention(net, fused_attention)
        _to_memory_format(net, 2, channels_last)
        return (net, _maybe_compile(net, compile), *slice_inferer())

    def build_swin_infer():
        net = _to_memory_format(build_swin_unetr_2d().to(dev).eval(), 2, channels_last)
        _apply_fused_attention(net, fused_attention)
        return (net, _maybe_compile(net, compile), *slice_inferer())

    def build_segresnet_infer():
        net = _to_memory_format(build_segresnet_bundle().to(dev).eval(), 3, channels_last)
        inf = SlidingWindowInferer(roi_size=seg_roi, progress=False, **SEGRESNET_SW)
        desc = {"name": "SlidingWindowInferer", "roi_size": list(seg_roi), **SEGRESNET_SW}
        return net, _maybe_compile(net, compile), inf, desc

    slice_window = (m, *slice_roi)
    inference = {
        "diffmed": _infer_section("DiffMedDINOv3", dev, build_diffmed_infer, volume, slice_window, amp,
                                  infer_warmup, infer_repeats),
        "segresnet_3d": _infer_section("SegResNet-3D", dev, build_segresnet_infer, volume, (m, *seg_roi), amp,
                                       infer_warmup, infer_repeats),
        "swin_unetr_2d": _infer_section("SwinUNETR-2D", dev, build_swin_infer, volume, slice_window, amp,
                                        infer_warmup, infer_repeats),
    }
    _free(dev)

    # ---- floors and ratios
    r = rate["flops_per_s"]
    for entry in training.values():
        entry["floor_slices_per_s"] = r / entry["flops_per_slice"]
        entry["fraction_of_floor"] = entry["slices_per_s"] / entry["floor_slices_per_s"]
    for entry in inference.values():
        entry["floor_seconds_per_volume"] = entry["flops_per_volume"] / r
        entry["fraction_of_floor"] = entry["floor_seconds_per_volume"] / entry["seconds_per_volume"]
    td, ts = training["diffmed"], training["swin_unetr_2d"]
    idm, iseg, isw = inference["diffmed"], inference["segresnet_3d"], inference["swin_unetr_2d"]
    ratios = {
        "train_slices_per_s_diffmed_over_swin_unetr_2d": td["slices_per_s"] / ts["slices_per_s"],
        "train_floor_diffmed_over_swin_unetr_2d": td["floor_slices_per_s"] / ts["floor_slices_per_s"],
        "infer_s_per_volume_diffmed_over_segresnet_3d": idm["seconds_per_volume"] / iseg["seconds_per_volume"],
        "infer_floor_diffmed_over_segresnet_3d": idm["floor_seconds_per_volume"] / iseg["floor_seconds_per_volume"],
        "infer_s_per_volume_diffmed_over_swin_unetr_2d": idm["seconds_per_volume"] / isw["seconds_per_volume"],
        "infer_floor_diffmed_over_swin_unetr_2d": idm["floor_seconds_per_volume"] / isw["floor_seconds_per_volume"],
    }
    peak_train = td["peak_mem_gb"]
    targets = {
        "train_slices_per_s_at_least_swin_unetr_2d": ratios["train_slices_per_s_diffmed_over_swin_unetr_2d"] >= 1.0,
        "infer_s_per_volume_at_most_segresnet_3d": ratios["infer_s_per_volume_diffmed_over_segresnet_3d"] <= 1.0,
        "peak_train_mem_under_16gb": (peak_train < 16.0) if dev.type == "cuda" and peak_train is not None else None,
    }

    result = {
        "meta": _meta(dev, dict(
            batch_size=batch_size, image_size=image_size, modalities=m, volume_shape=list(volume_shape),
            teacher_arch=teacher_arch, teacher_random_init=True, student_preset=student, warmup=warmup, steps=steps,
            infer_warmup=infer_warmup, infer_repeats=infer_repeats, amp=amp, amp_dtype="bfloat16" if amp else None,
            compile=compile, stacked_specific=stacked_specific, fused_attention=fused_attention,
            channels_last=channels_last, seed=seed, load_average_at_start=load_at_start,
            wall_seconds=time.perf_counter() - wall0,
        )),
        "matmul": rate,
        "training": training,
        "inference": inference,
        "ratios": ratios,
        "targets": targets,
    }
    if output:
        path = os.path.abspath(os.fspath(output))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        result["meta"]["output"] = path
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    if verbose:
        print(format_report(result))
    return result


def count_benchmark_flops(
    image_size: int = 256,
    volume_shape: Sequence[int] = (240, 240, 155),
    teacher_arch: str = "vitb16",
    student: str = "default",
    device: str = "cpu",
) -> dict:
    """FLOPs per training slice and per inference volume of the benchmarked models, without timing them.

    Runs one training step (batch 1) and one inference window of each model under ``FlopCounterMode`` and counts
    the windows each inferer visits with a stand-in network. The ratios of these counts are the ratios of the
    arithmetic floors on any device, so the real-size (GPU) floor ratios can be checked on a CPU.
    """
    from monai.inferers import SliceInferer, SlidingWindowInferer
    from monai.losses import DiceCELoss

    from .losses import DiffMedLoss
    from .networks import DINOv3Teacher

    dev = _resolve_device(device)
    m, s = len(MODALITIES), int(image_size)
    volume_shape = tuple(int(v) for v in volume_shape)
    torch.manual_seed(0)
    image = torch.randn(1, m, s, s, device=dev)
    label = torch.randint(0, NUM_CLASSES, (1, 1, s, s), device=dev)
    teacher = DINOv3Teacher(arch=teacher_arch, random_init=True).to(dev)
    diffmed = build_diffmed(student, teacher.hidden_size, False).to(dev)
    kd_loss = DiffMedLoss(m, teacher.hidden_size).to(dev)

    def diffmed_step() -> None:
        with torch.inference_mode():
            tokens = teacher(image)
        kd_loss(diffmed(image, return_training_outputs=True), label, tokens)["loss"].backward()

    swin = build_swin_unetr_2d().to(dev)
    seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)
    train = {
        "diffmed": count_flops(diffmed_step),
        "diffmed_teacher_only": count_flops(lambda: teacher(image)),
        "swin_unetr_2d": count_flops(lambda: seg_loss(swin(image), label).backward()),
    }
    del teacher
    seg_roi = segresnet_roi(volume_shape)
    volume = torch.zeros(1, m, *volume_shape, device=dev)

    def windows(inferer, channels: int) -> int:
        counter = _WindowCounter(lambda x: torch.zeros(x.shape[0], channels, *x.shape[2:], device=x.device))
        inferer(volume, counter)
        return counter.windows

    slice_windows = windows(SliceInferer(roi_size=(s, s), spatial_dim=2, progress=False, **SLICE_SW), NUM_CLASSES)
    seg_windows = windows(SlidingWindowInferer(roi_size=seg_roi, progress=False, **SEGRESNET_SW), 3)
    segresnet = build_segresnet_bundle().to(dev)
    infer = {}
    for name, net, window, n in (
        ("diffmed", diffmed, (1, m, s, s), slice_windows),
        ("segresnet_3d", segresnet, (1, m, *seg_roi), seg_windows),
        ("swin_unetr_2d", swin, (1, m, s, s), slice_windows),
    ):
        net.eval()
        x = torch.randn(*window, device=dev)
        with torch.no_grad():
            infer[name] = {"flops_per_window": count_flops(lambda: net(x)), "windows_per_volume": n}
        infer[name]["flops_per_volume"] = infer[name]["flops_per_window"] * n
    return {
        "sizes": {"image_size": s, "volume_shape": list(volume_shape), "teacher_arch": teacher_arch,
                  "student_preset": student, "segresnet_roi": list(seg_roi)},
        "training_flops_per_slice": train,
        "inference": infer,
        "floor_ratios": {
            "train_slices_per_s_diffmed_over_swin_unetr_2d": train["swin_unetr_2d"] / train["diffmed"],
            "infer_s_per_volume_diffmed_over_segresnet_3d":
                infer["diffmed"]["flops_per_volume"] / infer["segresnet_3d"]["flops_per_volume"],
            "infer_s_per_volume_diffmed_over_swin_unetr_2d":
                infer["diffmed"]["flops_per_volume"] / infer["swin_unetr_2d"]["flops_per_volume"],
        },
    }


def _teacher_dim(arch: str) -> int:
    from .networks import TEACHER_ARCHS

    if arch not in TEACHER_ARCHS:
        raise ValueError(f"Unknown teacher architecture {arch!r}; choose one of {sorted(TEACHER_ARCHS)}.")
    return TEACHER_ARCHS[arch].hidden_size


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _meta(device: torch.device, settings: dict) -> dict:
    import monai

    meta: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_measure": "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_peak_rss_growth",
        **settings,
    }
    return meta


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def _loads(x: Sequence[float] | None) -> str:
    return "n/a" if not x else "/".join(f"{v:.2f}" for v in x)


def format_report(result: dict) -> str:
    """The human-readable table of a :func:`run_benchmark` result."""
    meta, tr, inf, ra = result["meta"], result["training"], result["inference"], result["ratios"]
    rate = result["matmul"]
    mem_label = "peak GPU mem GB" if meta["device"].startswith("cuda") else "peak RSS +GB"
    vol = "x".join(str(s) for s in meta["volume_shape"])
    lines = [
        f"DiffMedDINOv3 benchmark on {meta['device']} ({meta['device_name']}; torch {meta['torch']}, "
        f"{meta['torch_threads']} threads)",
        f"  teacher: DINOv3 {meta['teacher_arch']}, RANDOMLY INITIALISED (speed only); student preset: "
        f"{meta['student_preset']}; M={meta['modalities']}",
        f"  sizes: training batch {meta['batch_size']} x {meta['modalities']} x {meta['image_size']}x"
        f"{meta['image_size']}, {meta['warmup']} warm-up + {meta['steps']} timed steps; inference volume "
        f"{meta['modalities']}x{vol}, {meta['infer_warmup']} warm-up + {meta['infer_repeats']} timed",
        f"  load average (1/5/15 min) at start {_loads(meta.get('load_average_at_start'))}, at end "
        f"{_loads(meta.get('load_average_at_end'))}; whole run {meta.get('wall_seconds', 0):.0f} s",
        f"  amp={meta['amp']} compile={meta['compile']} stacked_specific={meta['stacked_specific']} "
        f"fused_attention={meta['fused_attention']} channels_last={meta['channels_last']}",
        f"  measured matmul rate ({rate['dtype']}, {rate['n']}^3): {rate['flops_per_s'] / 1e12:.3f} TFLOP/s; "
        "floor = counted FLOPs / this rate",
        f"  timing: {tr['diffmed']['statistic']}",
        "",
        "Training (teacher fwd + student fwd/bwd + optimiser step)",
        f"  {'model':<22}{'steps/s':>9}{'slices/s':>10}{'floor sl/s':>12}{'% floor':>9}{'GFLOP/slice':>13}"
        f"{mem_label:>17}",
    ]
    names = {"diffmed": "DiffMedDINOv3+teacher", "swin_unetr_2d": "SwinUNETR-2D"}
    for key, e in tr.items():
        lines.append(
            f"  {names[key]:<22}{e['steps_per_s']:>9.3g}{e['slices_per_s']:>10.3g}{e['floor_slices_per_s']:>12.3g}"
            f"{100 * e['fraction_of_floor']:>8.1f}%{e['flops_per_slice'] / 1e9:>13.4g}{_fmt(e['peak_mem_gb']):>17}"
        )
    if any("host_syncs" in e for e in tr.values()):
        lines.append("  host-device synchronisations inside the timed steps: " + ", ".join(
            f"{names[k]} {e.get('host_syncs', 'n/a')}" for k, e in tr.items()))
    lines += [
        "",
        f"Inference (one {meta['modalities']}x{vol} volume)",
        f"  {'model':<22}{'s/volume':>10}{'floor s':>10}{'% floor':>9}{'TFLOP/vol':>11}{'windows':>9}"
        f"{mem_label:>17}  inferer",
    ]
    names = {"diffmed": "DiffMedDINOv3", "segresnet_3d": "SegResNet-3D (bundle)", "swin_unetr_2d": "SwinUNETR-2D"}
    for key, e in inf.items():
        i = e["inferer"]
        desc = f"{i['name']}(roi={i['roi_size']}, sw_batch={i['sw_batch_size']}, overlap={i['overlap']})"
        lines.append(
            f"  {names[key]:<22}{e['seconds_per_volume']:>10.3g}{e['floor_seconds_per_volume']:>10.3g}"
            f"{100 * e['fraction_of_floor']:>8.1f}%{e['flops_per_volume'] / 1e12:>11.4g}{e['windows_per_volume']:>9}"
            f"{_fmt(e['peak_mem_gb']):>17}  {desc}"
        )
    t = result["targets"]
    target_train = t["train_slices_per_s_at_least_swin_unetr_2d"]
    target_infer = t["infer_s_per_volume_at_most_segresnet_3d"]
    lines += [
        "",
        "Ratios (measured | floor)",
        f"  training slices/s  DiffMed / SwinUNETR-2D : {ra['train_slices_per_s_diffmed_over_swin_unetr_2d']:.3g} | "
        f"{ra['train_floor_diffmed_over_swin_unetr_2d']:.3g}   (target >= 1 met: {target_train})",
        f"  inference s/volume DiffMed / SegResNet-3D : {ra['infer_s_per_volume_diffmed_over_segresnet_3d']:.3g} | "
        f"{ra['infer_floor_diffmed_over_segresnet_3d']:.3g}   (target <= 1 met: {target_infer})",
        f"  inference s/volume DiffMed / SwinUNETR-2D : {ra['infer_s_per_volume_diffmed_over_swin_unetr_2d']:.3g} | "
        f"{ra['infer_floor_diffmed_over_swin_unetr_2d']:.3g}",
        f"  peak training memory DiffMed < 16 GB: {t['peak_train_mem_under_16gb']}"
        + ("" if meta["device"].startswith("cuda") else " (n/a: not a GPU)"),
    ]
    if meta.get("output"):
        lines.append(f"JSON written to {meta['output']}")
    return "\n".join(lines)
