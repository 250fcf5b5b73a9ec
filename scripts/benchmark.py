#!/usr/bin/env python
"""Speed of DiffMedDINOv3 as the bundle runs it, against the MONAI models a user would otherwise run.

    python scripts/benchmark.py                                          # training, then one BraTS-size volume
    python scripts/benchmark.py --sections "['inference']" --repeats 1 --warmup 0    # inference only, once
    python scripts/benchmark.py --presets "['tiny']" --image_size 64 --volume_shape "[64,64,8]"   # seconds
    python scripts/benchmark.py --device cuda --output benchmark_gpu.json

Everything DiffMedDINOv3 runs is built from the bundle configs, not from a copy:

* training: ``train#trainer`` of ``train.json`` (+ presets) -- :class:`~diffmed_monai.engines.DiffMedTrainer`
  with the config's network, frozen teacher (always randomly initialised here: only its speed matters), loss and
  optimiser, in the precision the config ships -- fed synthetic slice batches; against MONAI ``SwinUNETR`` (2D,
  feature_size 48, ``DiceCELoss``, AdamW) in MONAI's ``SupervisedTrainer`` on the same batches, as MONAI runs it
  and, where DiffMed trains bf16 on a CPU, in bf16 too; ``training_precision``: the same trainer in float32 and
  ``cpu_bf16`` from the same weights, every step's losses compared;
* inference: one BraTS-like case (by default 4 x 240 x 240 x 155 at 1 mm, zero outside an ellipsoidal brain as in
  real BraTS; one NIfTI file per modality) run end to end -- ``preprocessing`` (loading included), ``network``
  through ``inferer`` and ``postprocessing`` (all but the file writer) of ``inference.json`` (+ presets); against
  MONAI ``SegResNet`` with the ``brats_mri_segmentation`` bundle's network, preprocessing and sliding window, and
  ``SwinUNETR``-2D through MONAI's ``SliceInferer`` at the training slice size, on the same files in the same run.

Timing is wall time (median over repeats, after a warm-up; CUDA synchronised at both ends of each run). Beside each
training figure stands its arithmetic floor: FLOPs counted with ``torch.utils.flop_counter.FlopCounterMode``
(attention on a CPU included, :data:`CPU_SDPA_FLOPS`) divided by the matmul rate measured in the same process (for
inference too with ``--inference_flops True``, which costs one more pass of each model). Results go to a JSON file
and a table on stdout; see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

BUNDLE_CONFIGS = Path(__file__).resolve().parents[1] / "bundle" / "configs"
PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"

#: MONAI Model Zoo ``brats_mri_segmentation``: its network and sliding-window settings (the 3D peer).
SEGRESNET_BUNDLE = dict(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, out_channels=3, dropout_prob=0.2)
SEGRESNET_WINDOW = dict(sw_batch_size=1, overlap=0.5)
#: SwinUNETR-2D through MONAI's SliceInferer: whole-volume slices at the training size (roi from ``train.json``)
SWIN_SLICE_WINDOW = dict(sw_batch_size=4, overlap=0.25)
#: semi-axes of an adult brain in the BraTS grid, as fractions of 240 x 240 x 155 (about 140 x 175 x 137 mm at 1 mm)
BRAIN_SEMI_AXES = (70 / 240, 87 / 240, 68 / 155)

logger = logging.getLogger("benchmark")


def bundle_parser(config: str, presets: Sequence[str] = (), **overrides: Any) -> ConfigParser:
    """``ConfigParser`` over ``bundle/configs/<config>.json`` and ``configs/<preset>.json``."""
    files = [BUNDLE_CONFIGS / f"{config}.json", *(PRESETS_DIR / f"{p}.json" for p in presets)]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(overrides)
    return parser


def synthetic_batches(num_batches: int, batch_size: int, modalities: int, num_classes: int, size: int) -> list:
    """``num_batches`` dicts of ``image`` ``(B, M, size, size)`` and ``label`` ``(B, 1, size, size)`` class indices."""
    gen = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(batch_size, modalities, size, size, generator=gen),
            "label": torch.randint(0, num_classes, (batch_size, 1, size, size), generator=gen).float(),
        }
        for _ in range(num_batches)
    ]


def build_diffmed_trainer(presets: Sequence[str], batches: list, device: torch.device, amp: bool,
                          overrides: dict | None = None):
    """The bundle's ``train#trainer`` (a ``DiffMedTrainer``) over ``batches``, without handlers or metrics."""
    parser = bundle_parser("train", presets, **(overrides or {}), device=device, amp=amp, teacher_random_init=True,
                           teacher_weights=None)
    parser["train#trainer#train_data_loader"] = batches
    parser["train#trainer#max_epochs"] = 1
    for key in ("train_handlers", "key_train_metric", "postprocessing"):
        parser[f"train#trainer#{key}"] = None
    return parser.get_parsed_content("train#trainer")


def build_peer_trainer(batches: list, device: torch.device, amp: bool, num_classes: int, cpu_bf16: bool = False):
    """MONAI ``SupervisedTrainer`` training ``SwinUNETR``-2D with ``DiceCELoss`` and AdamW over ``batches``; with
    ``cpu_bf16`` on a CPU, its forward pass and loss under bf16 autocast as ``DiffMedTrainer(cpu_bf16=True)`` runs
    (not what MONAI's trainer does on a CPU: a like-for-like comparison row)."""
    from monai.engines import SupervisedTrainer
    from monai.inferers import SimpleInferer
    from monai.losses import DiceCELoss
    from monai.networks.nets import SwinUNETR

    network = SwinUNETR(
        in_channels=batches[0]["image"].shape[1], out_channels=num_classes, feature_size=48, spatial_dims=2
    ).to(device)
    bf16 = cpu_bf16 and device.type == "cpu"
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    return SupervisedTrainer(
        device=device, max_epochs=1, train_data_loader=batches, network=network,
        optimizer=torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=1e-4),
        loss_function=CpuAutocast(loss) if bf16 else loss, inferer=CpuAutocast(SimpleInferer()) if bf16 else None,
        amp=amp, amp_kwargs={"dtype": torch.bfloat16},
    )


class CpuAutocast:
    """``fn`` (the peer's inferer or loss) called under ``torch.autocast("cpu", torch.bfloat16)``: the region
    ``DiffMedTrainer(cpu_bf16=True)`` autocasts, for the comparison row of SwinUNETR-2D in bf16 on a CPU."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.fn(*args, **kwargs)


def autocast_precision(device: torch.device, amp: bool, cpu_bf16: bool) -> str:
    """``"bfloat16"`` where a run autocasts its matrix products (CUDA with ``amp``; a CPU with ``cpu_bf16``), as
    the trainers and case runners here do, else ``"float32"``: the precision whose matmul rate is its floor."""
    return "bfloat16" if (amp if device.type == "cuda" else cpu_bf16) else "float32"


def median_seconds(fn, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after exactly ``warmup`` untimed runs; CUDA is synchronised
    at both ends of each run. (``torch.utils.benchmark.Timer.timeit`` would add two untimed runs of its own and
    default to one thread.)"""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cpu_sdpa_flops(query, key, value, *args, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


#: ``FlopCounterMode`` counts the CUDA kernels of ``scaled_dot_product_attention`` but not the CPU one (it counted
#: 0 FLOPs for the teacher's and the denoisers' attention on a CPU); the same formulas as its CUDA kernels'.
CPU_SDPA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """``FlopCounterMode`` that also counts ``scaled_dot_product_attention`` on a CPU (:data:`CPU_SDPA_FLOPS`)."""
    return FlopCounterMode(display=False, custom_mapping=CPU_SDPA_FLOPS)


def share_of_floor(flops: float, seconds: float, precision: str, rates: dict) -> float:
    """Arithmetic floor over wall time: ``flops`` at the matmul rate measured for ``precision`` (``rates``), over
    the ``seconds`` they took."""
    return flops / rates[precision] / seconds


def count_flops(fn) -> int:
    with flop_counter() as counter:
        fn()
    return counter.get_total_flops()


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype) -> float:
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    timer = Timer(stmt="a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads())
    return 2 * n**3 / timer.blocked_autorange(min_run_time=1.0).median


class PeakMemory:
    """Peak memory in GB of a section: ``torch.cuda.max_memory_allocated`` on CUDA; on a CPU the peak growth of the
    process's resident set above its size at the start (sampled every 5 ms from ``/proc/self/statm``; Linux)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gb: float | None = None
        self._stop = threading.Event()
        self._peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._start = self._peak = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.gb = torch.cuda.max_memory_allocated(self.device) / 1e9
        else:
            self._stop.set()
            self._thread.join()
            self.gb = (max(self._peak, self._rss()) - self._start) / 1e9


class OpCounter:
    """Aten operations that run a kernel, counted by ``torch.profiler`` while active: the profiler's ``aten::`` events
    with no ``aten::`` event inside them (``aten::linear``, which runs ``aten::addmm``, counts once). On a GPU each is
    a kernel launch or more; a step of many small ones is bound by launches, not arithmetic."""

    def __init__(self) -> None:
        self.count = 0
        self._profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])

    def __enter__(self) -> OpCounter:
        self._profile.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._profile.__exit__(*exc)
        events = [e for e in self._profile.events() if e.name.startswith("aten::")]
        self.count = sum(1 for e in events if not any(c.name.startswith("aten::") for c in e.cpu_children))


def count_step(trainer) -> dict:
    """One ``trainer.run()``: FLOPs of its first iteration (teacher, forward, loss, backward, optimiser step) and the
    aten operations dispatched in its last iteration (``ops_per_step``: the same parts, once the optimiser's state
    exists; the first iteration if the loader has one batch).

    The FLOP count covers one step, not the epoch: under ``FlopCounterMode`` the resident memory of a default-size
    DiffMedDINOv3 step grows by about 6 GB per further step on a CPU (a 24 GB machine ran out in the third). The run
    still completes its epoch, so Ignite's ``epoch_length`` is the loader's for the timed runs that follow.
    """
    from ignite.engine import Events

    counter, ops, last = flop_counter(), OpCounter(), len(trainer.data_loader)
    handles = [
        trainer.add_event_handler(Events.ITERATION_STARTED(once=1), lambda _: counter.__enter__()),
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda _: counter.__exit__(None, None, None)),
        trainer.add_event_handler(Events.ITERATION_STARTED(once=last), lambda _: ops.__enter__()),
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=last), lambda _: ops.__exit__(None, None, None)),
    ]
    try:
        trainer.run()
    finally:
        for handle in handles:
            handle.remove()
    return {"flops": counter.get_total_flops(), "ops": ops.count}


def count_first_step_flops(trainer) -> int:
    """FLOPs of the first iteration of one ``trainer.run()`` (:func:`count_step`)."""
    return count_step(trainer)["flops"]


def time_training(trainer, batch_size: int, repeats: int, warmup: int, precision: str) -> dict:
    """Slices/s of one epoch of ``trainer`` (its loader's batches), FLOPs per slice counted on its first step and
    aten operations per step (:func:`count_step`); ``precision`` (of its matrix products,
    :func:`autocast_precision`) is recorded for the floor."""
    steps = len(trainer.data_loader)
    counted = count_step(trainer)
    with PeakMemory(trainer.state.device) as mem:
        seconds = median_seconds(trainer.run, repeats, warmup)
    return {
        "slices_per_s": steps * batch_size / seconds,
        "seconds_per_step": seconds / steps,
        "flops_per_slice": counted["flops"] / batch_size,
        "ops_per_step": counted["ops"],
        "peak_mem_gb": mem.gb,
        "precision": precision,
    }


def time_training_parts(presets: Sequence[str], batches: list, device: torch.device, amp: bool, overrides: dict,
                        num_classes: int, repeats: int, warmup: int) -> dict:
    """Seconds and FLOPs per training step of each part of DiffMedDINOv3 (network and teacher of ``train.json``) and
    of SwinUNETR-2D, on the first of ``batches``: each part's forward and backward (the teacher: forward without
    gradients), on the tensors the part receives in a step, inputs requiring gradients as in the step, both models
    in the precision of ``train#trainer`` (:func:`autocast_precision`). The loss, optimiser step and the trainer's
    own work are not in any part."""
    from monai.networks.nets import SwinUNETR

    parser = bundle_parser("train", presets, **overrides, device=device, amp=amp, teacher_random_init=True,
                           teacher_weights=None)
    network, teacher = parser.get_parsed_content("network").train(), parser.get_parsed_content("teacher")
    precision = autocast_precision(device, amp, parser.get_parsed_content("cpu_bf16"))
    bf16 = precision == "bfloat16"
    image = batches[0]["image"].to(device)
    b, m, h, w = image.shape
    peer = SwinUNETR(in_channels=m, out_channels=num_classes, feature_size=48, spatial_dims=2).to(device).train()

    def specific_students(x: torch.Tensor) -> list[torch.Tensor]:
        """The modality-specific students' maps ``(B*M, ...)`` as the network runs them (stacked or in turn)."""
        if network.batched:
            return [f.flatten(0, 1) for f in network.specific_students(x.unsqueeze(2), in_dim=1, out_dim=1)]
        maps = [st(x[:, i : i + 1]) for i, st in enumerate(network.specific_students)]
        return [torch.stack([m[k] for m in maps], dim=1).flatten(0, 1) for k in range(3)]

    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        u0, skips = network.encode(image)
        a16 = network.shared_student(image.reshape(b * m, 1, h, w))[2]
        h16 = specific_students(image)[2]

    def step(fn: Callable[..., Any], *inputs: torch.Tensor, input_grad: bool = True, trained: bool = True):
        leaves = [x.detach().float().requires_grad_(input_grad and trained) for x in inputs]

        def run() -> None:
            with torch.set_grad_enabled(trained), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                out = fn(*leaves)
            if trained:
                outs = out if isinstance(out, (tuple, list)) else [out]
                sum(o.float().square().mean() for o in outs).backward()

        return run

    t = torch.randint(1, network.max_train_timestep + 1, (b,), device=device)
    t_seg = torch.full_like(t, network.seg_timestep)
    parts = {
        "diffmed: teacher (forward, no gradient)": step(teacher, image, trained=False),
        "diffmed: shared student (B x M slices)": step(network.shared_student, image.reshape(b * m, 1, h, w),
                                                       input_grad=False),
        "diffmed: specific students (M x B slices)": step(specific_students, image, input_grad=False),
        "diffmed: fusion + projection": step(lambda a, s: network.projection(network.fusion(a, s).unflatten(0, (b, m))),
                                             a16, h16),
        "diffmed: denoisers (both passes)": step(
            lambda u: network.denoise(torch.cat([u, u]), torch.cat([t_seg, t])) if network.batched
            else [network.denoise(u, t_seg), network.denoise(u, t)], u0),
        "diffmed: decoder": step(lambda d, s8, s4: network.decode(d, [s8, s4], image), u0, *skips),
        "swin_unetr_2d: Swin encoder (swinViT)": step(peer.swinViT, image, input_grad=False),
        "swin_unetr_2d: whole network": step(peer, image, input_grad=False),
    }
    result = {}
    for name, run in parts.items():
        logger.info("training parts: %s", name)
        result[name] = {"flops_per_step": count_flops(run), "seconds_per_step": median_seconds(run, repeats, warmup),
                        "precision": precision}
    return result


def blob_batches(num_batches: int, batch_size: int, modalities: int, num_classes: int, size: int) -> list:
    """``num_batches`` learnable batches: smooth random ``image`` ``(B, M, size, size)`` and a ``label`` that is a
    function of it (class c where modality c - 1 is above a threshold, the last class winning; needs M >= C - 1)."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(num_batches):
        image = torch.nn.functional.avg_pool2d(torch.randn(batch_size, modalities, size, size, generator=gen), 9, 1, 4)
        image = image * 3  # about unit variance after the smoothing
        label = torch.zeros(batch_size, 1, size, size)
        for c in range(1, num_classes):
            label[image[:, c - 1 : c] > 0.4] = c
        batches.append({"image": image, "label": label})
    return batches


def compare_training_precision(presets: Sequence[str], batches: list, device: torch.device, overrides: dict,
                               epochs: int) -> dict:
    """``train#trainer`` of ``train.json`` run twice from the same weights and random state over the same
    ``batches`` for ``epochs`` epochs: float32 and ``cpu_bf16``. Returns the losses of every step of both, their
    largest and mean relative difference per loss, and seconds per step."""
    from ignite.engine import Events

    from diffmed_monai.engines import loss_parts

    runs = {}
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        torch.manual_seed(0)
        trainer = build_diffmed_trainer(presets, batches, device, False, {**overrides, "cpu_bf16": bf16})
        trainer.state.max_epochs = epochs
        losses: list[dict] = []

        def record(engine, seen=losses) -> None:
            first = engine.state.output[0] if isinstance(engine.state.output, list) else engine.state.output
            seen.append({"loss": float(first["loss"]), **{k: float(v) for k, v in loss_parts(first).items()}})

        trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
        start = time.perf_counter()
        trainer.run()
        runs[name] = {"losses": losses, "seconds_per_step": (time.perf_counter() - start) / len(losses)}
    pairs = list(zip(runs["float32"]["losses"], runs["bfloat16"]["losses"]))
    relative = {key: [abs(b[key] - a[key]) / max(abs(a[key]), 1e-12) for a, b in pairs] for key in pairs[0][0]}
    return {**runs, "max_relative_difference": {k: max(v) for k, v in relative.items()},
            "mean_relative_difference": {k: statistics.fmean(v) for k, v in relative.items()}}


def brats_like_case(folder: str, shape: Sequence[int], modalities: Sequence[str], seed: int = 0) -> list[str]:
    """Write one BraTS-like case, one float32 NIfTI per modality (1 mm, BraTS's LPS voxel order), into ``folder``
    and return the paths: a smooth, noisy ellipsoidal brain with :data:`BRAIN_SEMI_AXES`, exactly 0 outside."""
    import nibabel as nib
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    size = torch.tensor([int(s) for s in shape], dtype=torch.float32)
    axes = [(torch.arange(int(n), dtype=torch.float32) - (n - 1) / 2) / (a * n) for n, a in zip(size, BRAIN_SEMI_AXES)]
    r2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    texture = F.interpolate(torch.rand(1, len(modalities), 8, 8, 6, generator=gen), size=tuple(int(s) for s in shape),
                            mode="trilinear", align_corners=True)[0]
    volume = (400.0 + 600.0 * texture + 40.0 * torch.randn(texture.shape, generator=gen)).clamp_min(1.0)
    volume = (volume * (r2 < 1.0)).numpy()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    paths = []
    for m, name in enumerate(modalities):
        paths.append(os.path.join(folder, f"case_{name}.nii"))
        nib.save(nib.Nifti1Image(volume[m], affine), paths[-1])
    return paths


def diffmed_case_runner(parser: ConfigParser, files: list[str], amp: bool) -> Callable[[], Any]:
    """One case as ``inference.json`` runs it: ``preprocessing`` (loading included), ``inferer`` over ``network``
    (bf16 autocast on CUDA when ``amp``, as ``SupervisedEvaluator``), ``postprocessing`` without the file writer."""
    from diffmed_monai.transforms import SaveLabelNiftid

    preprocessing, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    network = parser.get_parsed_content("network").eval()
    post = [t for t in parser.get_parsed_content("postprocessing").transforms if not isinstance(t, SaveLabelNiftid)]
    device = parser.get_parsed_content("device")

    def run() -> Any:
        data = preprocessing({"image": files})
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=amp and device.type == "cuda"):
            data["pred"] = inferer(data["image"][None].to(device), network)[0]
        for transform in post:
            data = transform(data)
        return data["pred"]

    return run


def monai_case_runner(network: torch.nn.Module, inferer, files: list[str], pixdim, device: torch.device, amp: bool,
                      sigmoid: bool, cpu_bf16: bool = False) -> Callable[[], Any]:
    """One case as MONAI's ``brats_mri_segmentation`` bundle runs it: ``LoadImaged`` -> RAS -> ``Spacingd`` ->
    ``NormalizeIntensityd`` (non-zero, per channel), ``inferer`` over ``network``, then sigmoid + threshold 0.5
    (``sigmoid``, the bundle's 3 overlapping regions) or softmax + argmax. bf16 autocast on CUDA when ``amp``, as
    MONAI's evaluators do; on a CPU only with ``cpu_bf16`` (not what MONAI's bundles do: a comparison row)."""
    from monai.transforms import Activations, AsDiscrete, Compose, LoadImaged, NormalizeIntensityd, Orientationd, Spacingd

    preprocessing = Compose([
        LoadImaged("image", image_only=True, ensure_channel_first=True), Orientationd("image", axcodes="RAS"),
        Spacingd("image", pixdim=pixdim, mode="bilinear"),
        NormalizeIntensityd("image", nonzero=True, channel_wise=True),
    ])
    post = Compose([Activations(sigmoid=True), AsDiscrete(threshold=0.5)] if sigmoid else
                   [Activations(softmax=True), AsDiscrete(argmax=True)])
    network = network.to(device).eval()

    def run() -> Any:
        image = preprocessing({"image": files})["image"]
        bf16 = amp if device.type == "cuda" else cpu_bf16
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            return post(inferer(image[None].to(device), network)[0].float())

    return run


def time_case(run: Callable[[], Any], device: torch.device, repeats: int, warmup: int, flops: bool) -> dict:
    """Seconds per case of ``run()`` (loading to label map), its peak memory and, if ``flops``, its FLOPs."""
    with PeakMemory(device) as mem:
        seconds = median_seconds(run, repeats, warmup)
    entry = {"seconds_per_volume": seconds, "peak_mem_gb": mem.gb}
    if flops:
        entry["flops_per_volume"] = count_flops(run)
    return entry


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` gives it (``/proc/cpuinfo``), else ``platform``'s answer."""
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]}, {os.cpu_count()} logical CPUs"
    except (OSError, IndexError):
        return platform.processor() or platform.machine()


def run_benchmark(
    presets: Sequence[str] = (),
    device: str = "auto",
    batch_size: int = 4,
    steps: int = 3,
    image_size: int | None = None,
    volume_shape: Sequence[int] = (240, 240, 155),
    repeats: int = 3,
    warmup: int = 1,
    amp: bool | None = None,
    sections: Sequence[str] = ("training", "inference"),
    inference_flops: bool = False,
    precision_epochs: int = 6,
    threads: int | None = None,
    overrides: dict | None = None,
    output: str | None = "benchmark.json",
) -> dict:
    """Time training and inference of DiffMedDINOv3 (from the bundle configs) and the MONAI peers; return the dict.

    Args:
        presets: names in ``configs/`` merged over the bundle configs (e.g. ``["tiny"]``).
        device: ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda[:N]"``.
        batch_size: training slices per step, the same for both trained models. steps: steps per timed epoch.
        image_size: training slice size, and SwinUNETR-2D's inference window (default: ``train.json``'s ``roi_size``).
        volume_shape: ``(H, W, D)`` of the BraTS-like inference case (1 mm; brain as :data:`BRAIN_SEMI_AXES`).
        repeats, warmup: timed and untimed repetitions of each measurement.
        amp: bf16 autocast on CUDA (default: on, as the configs). On a CPU, DiffMed follows the configs' ``cpu_bf16``
            (on where the CPU has native bf16; ``overrides={"cpu_bf16": False}`` turns it off); the peers run float32
            as MONAI ships them, and, where DiffMed runs bf16, once more in bf16 (rows ``*_bf16``). Each share of the
            FLOP floor is taken against the matmul rate of its own precision.
        sections: ``"training"``, ``"training_parts"`` (seconds and FLOPs of each part of a training step of both
            models, :func:`time_training_parts`), ``"training_precision"`` and/or ``"inference"``.
        inference_flops: also count each inference's FLOPs (one more pass of each model) and its share of the floor.
        precision_epochs: epochs over the ``steps`` learnable batches of the ``"training_precision"`` section
            (:func:`compare_training_precision`: float32 against ``cpu_bf16`` from the same weights; CPU only).
        threads: CPU threads of PyTorch (default: its own choice, one per core).
        overrides: config keys merged over ``train.json`` and ``inference.json`` (+ presets) for DiffMedDINOv3,
            e.g. ``{"crop_slices": False}``, to time a variant the same way.
        output: JSON path (``None``: do not write).
    """
    from monai.inferers import SliceInferer, SlidingWindowInferer
    from monai.networks.nets import SegResNet, SwinUNETR

    if threads:
        torch.set_num_threads(int(threads))
    presets = [presets] if isinstance(presets, str) else list(presets)
    sections = [sections] if isinstance(sections, str) else list(sections)
    unknown = set(sections) - {"training", "training_parts", "training_precision", "inference"}
    if unknown or not sections:
        raise ValueError("`sections` must name 'training', 'training_parts', 'training_precision' and/or 'inference', "
                         f"got {sections}.")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else "cpu" if device == "auto" else device)
    amp = dev.type == "cuda" if amp is None else bool(amp)
    overrides = dict(overrides or {})
    infer_parser = bundle_parser("inference", presets, **overrides, device=dev, amp=amp)
    modalities, num_classes = infer_parser["modalities"], infer_parser.get_parsed_content("num_classes")
    size = int(image_size or bundle_parser("train", presets, **overrides)["roi_size"][0])
    if size % 32 or size < 64:
        raise ValueError(f"`image_size`={size} must be a multiple of 32 and >= 64 (SwinUNETR-2D downsamples by 32).")
    rates = {name: matmul_flops_per_s(dev, getattr(torch, name)) for name in ("float32", "bfloat16")}
    meta = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "presets": presets, "amp": amp,
        "repeats": repeats, "warmup": warmup, "matmul_flops_per_s": rates, "overrides": overrides,
    }
    result: dict = {"meta": meta, "ratios": {}}

    if "inference" in sections:
        segresnet_roi = [max(16, -(-s // 16) * 16) for s in volume_shape]  # the bundle's [240, 240, 160] for BraTS
        with tempfile.TemporaryDirectory() as folder:
            files = brats_like_case(folder, volume_shape, modalities)
            diffmed = diffmed_case_runner(infer_parser, files, amp)
            image = infer_parser.get_parsed_content("preprocessing")({"image": files})["image"]
            slices_run = int(infer_parser.get_parsed_content("inferer").occupied_slices(image[None]).numel())

            def segresnet_3d(cpu_bf16: bool = False) -> Callable[[], Any]:
                return monai_case_runner(
                    SegResNet(spatial_dims=3, in_channels=len(modalities), **SEGRESNET_BUNDLE),
                    SlidingWindowInferer(roi_size=segresnet_roi, progress=False, **SEGRESNET_WINDOW), files,
                    infer_parser["pixdim"], dev, amp, sigmoid=True, cpu_bf16=cpu_bf16)

            runners = {
                "diffmed": diffmed,
                "segresnet_3d": segresnet_3d(),
                "swin_unetr_2d": monai_case_runner(
                    SwinUNETR(in_channels=len(modalities), out_channels=num_classes, feature_size=48, spatial_dims=2),
                    SliceInferer(roi_size=(size, size), spatial_dim=2, progress=False, **SWIN_SLICE_WINDOW), files,
                    infer_parser["pixdim"], dev, amp, sigmoid=False),
            }
            cpu_bf16 = dev.type == "cpu" and bool(infer_parser.get_parsed_content("cpu_bf16"))
            if cpu_bf16:  # DiffMed runs bf16 on this CPU: the same peer in bf16 too, for a like-for-like ratio
                runners["segresnet_3d_bf16"] = segresnet_3d(cpu_bf16=True)
            meta.update(cpu_bf16=cpu_bf16, volume_shape=list(volume_shape), segresnet_roi=segresnet_roi,
                        swin_unetr_2d_roi=[size, size],
                        diffmed_network_input=list(image.shape), diffmed_slices_run=slices_run,
                        max_batch_pixels=infer_parser.get_parsed_content("max_batch_pixels"))
            runner_cpu_bf16 = {"diffmed": cpu_bf16, "segresnet_3d_bf16": True}  # the others as MONAI ships them
            inference = result["inference"] = {}
            for name, run in runners.items():
                logger.info("inference: %s on one %s case", name, list(volume_shape))
                timed = time_case(run, dev, repeats, warmup, inference_flops)
                precision = autocast_precision(dev, amp, runner_cpu_bf16.get(name, False))
                inference[name] = {**timed, "precision": precision}
                _save(result, output)  # what is measured survives an interrupted run
        if inference_flops:
            for entry in inference.values():
                entry["fraction_of_floor"] = share_of_floor(entry["flops_per_volume"], entry["seconds_per_volume"],
                                                            entry["precision"], rates)
        result["ratios"].update({
            "infer_s_per_volume_diffmed_over_segresnet_3d":
                inference["diffmed"]["seconds_per_volume"] / inference["segresnet_3d"]["seconds_per_volume"],
            "infer_s_per_volume_diffmed_over_swin_unetr_2d":
                inference["diffmed"]["seconds_per_volume"] / inference["swin_unetr_2d"]["seconds_per_volume"],
        })
        if "segresnet_3d_bf16" in inference:
            result["ratios"]["infer_s_per_volume_diffmed_over_segresnet_3d_bf16"] = (
                inference["diffmed"]["seconds_per_volume"] / inference["segresnet_3d_bf16"]["seconds_per_volume"])

    if "training" in sections:
        batches = synthetic_batches(steps, batch_size, len(modalities), num_classes, size)
        logger.info("training: DiffMedDINOv3 (bundle train#trainer) and SwinUNETR-2D, batch %d, %dx%d", batch_size,
                    size, size)
        diffmed_trainer = build_diffmed_trainer(presets, batches, dev, amp, overrides)
        train_bf16 = diffmed_trainer.cpu_bf16  # on a CPU with native bf16, as train.json's `cpu_bf16` sets it
        training = {"diffmed": time_training(diffmed_trainer, batch_size, repeats, warmup,
                                             autocast_precision(dev, amp, train_bf16))}
        del diffmed_trainer
        peers = {"swin_unetr_2d": False, **({"swin_unetr_2d_bf16": True} if train_bf16 else {})}
        for name, peer_bf16 in peers.items():  # as MONAI trains it; where DiffMed trains bf16, in bf16 too
            training[name] = time_training(build_peer_trainer(batches, dev, amp, num_classes, peer_bf16), batch_size,
                                           repeats, warmup, autocast_precision(dev, amp, peer_bf16))
        for entry in training.values():
            entry["fraction_of_floor"] = share_of_floor(entry["flops_per_slice"], 1 / entry["slices_per_s"],
                                                        entry["precision"], rates)
        meta.update(batch_size=batch_size, steps=steps, image_size=size, teacher_random_init=True,
                    train_cpu_bf16=train_bf16)
        result["training"] = training
        for name in peers:
            result["ratios"][f"train_slices_per_s_diffmed_over_{name}"] = (
                training["diffmed"]["slices_per_s"] / training[name]["slices_per_s"])
            result["ratios"][f"train_share_of_floor_diffmed_over_{name}"] = (
                training["diffmed"]["fraction_of_floor"] / training[name]["fraction_of_floor"])

    if "training_precision" in sections:
        if dev.type != "cpu":
            raise ValueError("The 'training_precision' section compares float32 with `cpu_bf16`: use --device cpu.")
        logger.info("training precision: float32 and cpu_bf16 from the same weights, %d epochs", precision_epochs)
        batches = blob_batches(steps, batch_size, len(modalities), num_classes, size)
        result["training_precision"] = compare_training_precision(presets, batches, dev, overrides, precision_epochs)
        meta.update(batch_size=batch_size, steps=steps, image_size=size, precision_epochs=precision_epochs)
        _save(result, output)

    if "training_parts" in sections:
        batches = synthetic_batches(1, batch_size, len(modalities), num_classes, size)
        parts = result["training_parts"] = time_training_parts(presets, batches, dev, amp, overrides, num_classes,
                                                               repeats, warmup)
        for entry in parts.values():
            entry["fraction_of_floor"] = share_of_floor(entry["flops_per_step"], entry["seconds_per_step"],
                                                        entry["precision"], rates)
        meta.update(batch_size=batch_size, image_size=size, teacher_random_init=True)
        _save(result, output)
    _save(result, output)
    return result


def _save(result: dict, output: str | None) -> None:
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")


def format_report(result: dict) -> str:
    """Markdown tables of a :func:`run_benchmark` result."""
    meta = result["meta"]
    lines = [
        f"Device: {meta['device']} ({meta['threads']} threads), torch {meta['torch']}, presets {meta['presets']}, "
        f"amp {meta['amp']}" + (", DiffMed inference in bf16 on the CPU (`cpu_bf16`)." if meta.get("cpu_bf16") else "."),
    ]
    if "training" in result:
        lines += [
            "", "DINOv3 teacher RANDOMLY INITIALISED (speed only).", "",
            f"| training, batch {meta['batch_size']} at {meta['image_size']}^2 | precision | slices/s | GFLOP/slice | "
            "share of FLOP floor | peak memory (GB) | aten ops/step |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, e in result["training"].items():
            lines.append(f"| {name} | {e['precision']} | {e['slices_per_s']:.3g} | {e['flops_per_slice'] / 1e9:.3g} | "
                         f"{e['fraction_of_floor']:.1%} | {e['peak_mem_gb']:.2f} | {e.get('ops_per_step', 0)} |")
    if "training_parts" in result:
        lines += ["", f"| training step part, batch {meta['batch_size']} at {meta['image_size']}^2 | precision | "
                  "s/step | GFLOP/step | share of FLOP floor |", "|---|---|---|---|---|"]
        for name, e in result["training_parts"].items():
            lines.append(f"| {name} | {e['precision']} | {e['seconds_per_step']:.3g} | "
                         f"{e['flops_per_step'] / 1e9:.4g} | {e['fraction_of_floor']:.1%} |")
    if "training_precision" in result:
        e = result["training_precision"]
        losses = {name: e[name]["losses"] for name in ("float32", "bfloat16")}
        n = len(losses["float32"])
        lines += ["", f"| training precision, batch {meta['batch_size']} at {meta['image_size']}^2, step | "
                  "loss float32 | loss bf16 | loss_seg float32 | loss_seg bf16 |", "|---|---|---|---|---|"]
        for i in sorted({0, n // 2, n - 1}):
            a, b = losses["float32"][i], losses["bfloat16"][i]
            lines.append(f"| {i + 1} of {n} | {a['loss']:.4f} | {b['loss']:.4f} | {a['loss_seg']:.4f} | "
                         f"{b['loss_seg']:.4f} |")
        differences = ", ".join(f"{k} {e['max_relative_difference'][k]:.2%} / {e['mean_relative_difference'][k]:.2%}"
                                for k in e["max_relative_difference"])
        lines += ["", f"Relative difference of bf16 from float32 over all steps, largest / mean: {differences}. "
                  f"Seconds per step: float32 {e['float32']['seconds_per_step']:.3g}, "
                  f"bf16 {e['bfloat16']['seconds_per_step']:.3g}."]
    if "inference" in result:
        flops = "flops_per_volume" in result["inference"]["diffmed"]
        lines += ["", f"| inference, one {meta['volume_shape']} case, loading to label map | precision | s/volume | "
                  "peak memory (GB) |" + (" GFLOP/volume | share of FLOP floor |" if flops else ""),
                  "|---|---|---|---|" + ("---|---|" if flops else "")]
        for name, e in result["inference"].items():
            lines.append(f"| {name} | {e['precision']} | {e['seconds_per_volume']:.3g} | {e['peak_mem_gb']:.2f} |" + (
                f" {e['flops_per_volume'] / 1e9:.3g} | {e['fraction_of_floor']:.1%} |" if flops else ""))
        lines += ["", f"DiffMedDINOv3's network input after cropping: {meta['diffmed_network_input']}, of which "
                  f"{meta['diffmed_slices_run']} slices hold foreground and run."]
    rates = ", ".join(f"{name} {rate / 1e9:.4g}" for name, rate in meta["matmul_flops_per_s"].items())
    lines += ["", f"Matmul rate (GFLOP/s), the floors: {rates}.",
              *(f"{k}: {v:.3g}" for k, v in result["ratios"].items())]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# data section: the slice store against the CacheDataset pipeline, on BraTS-size cases made here

BRATS_SHAPE = (240, 240, 155)


def skull_stripped_phantom(seed: int, shape: Sequence[int] = BRATS_SHAPE) -> tuple[dict, Any]:
    """A BraTS-like case at 1 mm: :func:`~diffmed_monai.data.make_demo_case`'s head phantom, skull-stripped (every
    voxel outside the brain exactly 0, as in real BraTS). Returns ``({modality: (X, Y, Z) float32}, seg uint8)``."""
    import numpy as np

    from diffmed_monai.data import DEMO_TISSUES, make_demo_case

    images, seg, tissue = make_demo_case(shape, seed=seed, spacing=(1.0, 1.0, 1.0), return_tissue=True)
    outside = np.isin(tissue, [DEMO_TISSUES.index(t) for t in ("background", "scalp", "skull")])
    for volume in images.values():
        volume[outside] = 0.0
    return images, seg


def write_brats_like_cases(root: Path, num_cases: int, distinct: int, shape: Sequence[int] = BRATS_SHAPE) -> list[dict]:
    """``num_cases`` case folders in the BraTS 2021 layout under ``root`` (``.nii.gz``, LPS affine as BraTS): the
    first ``distinct`` are generated, case ``i`` is a hard link of case ``i % distinct`` under its own name (the
    store still reads and preprocesses every case). Returns the cases as datalist entries (absolute paths)."""
    import nibabel as nib

    from diffmed_monai.data import BRATS_MODALITIES, demo_affine

    affine = demo_affine(shape, (1.0, 1.0, 1.0))
    cases = []
    for i in range(num_cases):
        case_id = f"BraTS2021_{i:05d}"
        folder = root / case_id
        names = [f"{case_id}_{m}.nii.gz" for m in BRATS_MODALITIES] + [f"{case_id}_seg.nii.gz"]
        if not all((folder / n).is_file() for n in names):
            folder.mkdir(parents=True, exist_ok=True)
            if i < distinct:
                images, seg = skull_stripped_phantom(seed=i, shape=shape)
                for m, n in zip(BRATS_MODALITIES, names):
                    nib.save(nib.Nifti1Image(images[m], affine), str(folder / n))
                nib.save(nib.Nifti1Image(seg, affine), str(folder / names[-1]))
            else:
                source = root / f"BraTS2021_{i % distinct:05d}"
                for n in names:
                    (folder / n).unlink(missing_ok=True)
                    os.link(source / n.replace(case_id, source.name), folder / n)
        images = [str(folder / n) for n in names[:-1]]
        cases.append({"case_id": case_id, "image": images, "label": str(folder / names[-1])})
    return cases


def _datalist(path: Path, train: list[dict], val: list[dict]) -> str:
    path.write_text(json.dumps({"training": train, "validation": val, "testing": val}, indent=1))
    return str(path)


def _process_memory() -> dict:
    """Peak and current resident memory of this process in MB (``/proc/self/status``): ``peak_rss`` (VmHWM),
    ``rss`` (VmRSS), ``rss_anon`` (private memory: what the process itself holds) and ``rss_file`` (mapped files,
    page cache shared with other processes)."""
    fields = {"VmHWM": "peak_rss", "VmRSS": "rss", "RssAnon": "rss_anon", "RssFile": "rss_file"}
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in fields:
                out[fields[key]] = int(line.split()[1]) / 1024
    return out


def _read_slices(loader, warmup: int, slices: int) -> tuple[float, list]:
    """Slices/s of ``loader`` over ``slices`` slices after ``warmup`` (re-iterated across epochs as needed)."""
    count, t0, start = 0, None, 0
    while t0 is None or count - start < slices:
        for batch in loader:
            count += batch["image"].shape[0]
            if t0 is None and count >= warmup:
                t0, start = time.perf_counter(), count
            elif t0 is not None and count - start >= slices:
                break
    return (count - start) / (time.perf_counter() - t0), list(batch["image"].shape[1:])


def loader_child(spec: dict) -> dict:
    """Run in a fresh process, one torch thread: build the bundle's ``train#dataloader`` from
    ``spec["config_files"]`` and ``spec["overrides"]`` twice and read ``spec["slices"]`` slices after
    ``spec["warmup"]``: with ``num_workers`` 0 (build seconds, slices/s in this process with MetaTensors, and this
    process's memory: it holds the dataset) and with one worker process (slices/s per worker, the figure that
    matters: the bundle's worker_init_fn switches MetaTensor tracking off there)."""
    torch.set_num_threads(1)

    def build(workers: int):
        parser = ConfigParser()
        parser.read_config(spec["config_files"])
        parser.update({**spec["overrides"], "num_workers": workers})
        return parser.get_parsed_content("train#dataloader")

    started = time.perf_counter()
    loader = build(0)
    built = time.perf_counter() - started
    memory_built = _process_memory()
    in_process, shape = _read_slices(loader, spec["warmup"], spec["slices"])
    memory = _process_memory()
    del loader
    per_worker, _ = _read_slices(build(1), spec["warmup"], spec["slices"])
    return {"build_s": built, "slices_per_s": per_worker, "slices_per_s_in_process": in_process,
            "slices": spec["slices"], "slice_shape": shape, "memory_after_build_mb": memory_built, "memory_mb": memory}


def _child(spec: dict, timeout: float = 900) -> dict:
    """Run :func:`loader_child` in a fresh Python process (its memory is its own) and return its result."""
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        done = subprocess.run([sys.executable, __file__, "--section", "loader_child", "--spec", f.name],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(f.name)
    if done.returncode:
        raise RuntimeError(f"benchmark child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class FirstStepTimer:
    """Training handler of the first-step measurement: at the first ``ITERATION_STARTED`` (model, teacher, store
    checked, loader workers up and the first batch loaded) write ``time.time()`` to ``path`` and end the process."""

    def __init__(self, path: str) -> None:
        self.path = path

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine) -> None:
        Path(self.path).write_text(json.dumps({"time": time.time(), "batch": list(engine.state.batch["image"].shape)}))
        os._exit(0)  # the measurement ends here; a CPU training step of the full network would take minutes


def time_to_first_step(config_files: Sequence[str], overrides: dict, work: Path, timeout: float = 600) -> dict:
    """Seconds from launching ``python -m monai.bundle run training`` until its first training step starts."""
    import subprocess
    import sys

    marker = work / "first_step.json"
    marker.unlink(missing_ok=True)
    extra = work / "first_step_config.json"
    extra.write_text(json.dumps({
        "+imports": ["$from benchmark import FirstStepTimer"],
        "train#trainer#train_handlers": f"$[FirstStepTimer({str(marker)!r})] + @train#handlers",
    }))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--config_file", json.dumps([*map(str, config_files), str(extra)]),
           "--meta_file", str(BUNDLE_CONFIGS / "metadata.json"), "--logging_file", str(BUNDLE_CONFIGS / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", value if isinstance(value, str) else repr(value)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    started = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(work))
    if done.returncode or not marker.is_file():
        raise RuntimeError(f"training did not reach its first step:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result = json.loads(marker.read_text())
    return {"seconds": result["time"] - started, "first_batch": result["batch"]}


def store_formats(store, case_id: str, reads: int = 200) -> dict:
    """Bytes of one stored case and the time to read one random axial slice, for the store's format (``.npy``
    per case, memory-mapped, opened per read) and two compressed alternatives: the whole case in one ``.npz``
    (``np.savez_compressed``) and each slice compressed on its own (zlib level 1, a chunked container)."""
    import tempfile
    import zlib

    import numpy as np

    image, label = (np.asarray(a) for a in store.read_volume(case_id))
    rng = np.random.default_rng(0)
    picks = rng.integers(0, image.shape[0], reads)
    npy_bytes = os.path.getsize(store.image_path(case_id)) + os.path.getsize(store.label_path(case_id))
    t0 = time.perf_counter()
    for z in picks:
        store.read_slice(case_id, int(z))
    npy_read = (time.perf_counter() - t0) / reads
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "case.npz")
        t0 = time.perf_counter()
        np.savez_compressed(path, image=image, label=label)
        npz_write = time.perf_counter() - t0
        npz_bytes = os.path.getsize(path)
        t0 = time.perf_counter()
        for z in picks[:3]:
            with np.load(path) as f:
                f["image"][z], f["label"][z]
        npz_read = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    chunks = [(zlib.compress(image[z].tobytes(), 1), zlib.compress(label[z].tobytes(), 1)) for z in range(len(image))]
    chunk_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    for z in picks:
        np.frombuffer(zlib.decompress(chunks[z][0]), np.float16), np.frombuffer(zlib.decompress(chunks[z][1]), np.uint8)
    chunk_read = (time.perf_counter() - t0) / reads
    return {
        "npy_mmap": {"bytes": npy_bytes, "slice_read_s": npy_read, "write_s": None},
        "npz_compressed_case": {"bytes": npz_bytes, "slice_read_s": npz_read, "write_s": npz_write},
        "zlib_per_slice": {"bytes": sum(len(a) + len(b) for a, b in chunks), "slice_read_s": chunk_read,
                           "write_s": chunk_write},
    }


def run_data_benchmark(
    num_cases: Sequence[int] = (8, 32),
    distinct: int = 4,
    old_cases: Sequence[int] = (2, 4),
    workers: int = 2,
    slices: int = 400,
    old_slices: int = 40,
    presets: Sequence[str] = ("brats",),
    workdir: str | None = None,
    shape: Sequence[int] = BRATS_SHAPE,
    output: str | None = "benchmark_data.json",
) -> dict:
    """The data section: preprocessing, store size, loader speed and memory, and time to the first step.

    Args:
        num_cases: training-set sizes N at which the store pipeline's memory is measured (the largest is
            preprocessed; each smaller store is its first cases). One more case is the validation case.
        distinct: phantoms generated at ``shape``; the other cases hard-link them under their own names (each is
            still read and preprocessed as a case of its own).
        old_cases: training-set sizes for the ``CacheDataset`` pipeline (``in_memory_train.json``); it caches every
            case at each start, so it is measured on few cases.
        workers: preprocessing processes.
        slices, old_slices: slices timed per loader measurement (after a warm-up of one batch or more).
        presets: merged over ``train.json`` (the BraTS preset: 1 mm, 256 x 256 slices, the full augmentation).
        workdir: cases, datalists and the store go there (default ``<tmp>/diffmed_benchmark_data``); the cases are
            kept for the next run, the store is written anew by each run.
        output: JSON path (``None``: do not write).
    """
    from diffmed_monai.data import SliceStore

    import tempfile

    work = Path(workdir or os.path.join(tempfile.gettempdir(), "diffmed_benchmark_data")).resolve()
    data_dir, store_dir = work / "data", work / "store"
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(store_dir, ignore_errors=True)  # this benchmark's own store: preprocessing is measured every run
    presets = [presets] if isinstance(presets, str) else list(presets)
    files = [str(BUNDLE_CONFIGS / "train.json"), *(str(PRESETS_DIR / f"{p}.json") for p in presets)]
    n_max = max(num_cases)
    load_start = os.getloadavg()

    logger.info("data: writing %d BraTS-like cases %s (%d distinct) to %s", n_max + 1, list(shape), distinct, data_dir)
    t0 = time.perf_counter()
    cases = write_brats_like_cases(data_dir, n_max + 1, distinct, shape)
    make_s = time.perf_counter() - t0
    val = cases[-1:]
    sizes = sorted(set(num_cases) | set(old_cases))
    datalists = {n: _datalist(work / f"datalist_{n}.json", cases[:n], val) for n in sizes}
    common = {"dataset_dir": str(data_dir), "store_dir": str(store_dir), "bundle_root": str(work / "run")}

    # preprocessing: smallest N first, then the rest (a rerun of the same command continues the store)
    preprocess = {}
    for n in sorted(num_cases):
        parser = bundle_parser("train", presets, **common, datalist=datalists[n], preprocess_workers=workers)
        store: SliceStore = parser.get_parsed_content("store")
        summary = store.preprocess(parser.get_parsed_content("store_cases"), num_workers=workers, progress=False)
        preprocess[n] = summary
    written = [s for s in preprocess.values() if s.written]
    case_seconds = [c for s in written for c in s.case_seconds]
    files_per_case = ("image.npy", "label.npy", "case.json")
    store_bytes = sum(os.path.getsize(os.path.join(store.case_dir(c["case_id"]), f))
                      for c in cases for f in files_per_case) / len(cases)
    shapes = [r.shape for r in store.records(cases)]
    verify = store.preprocess(parser.get_parsed_content("store_cases"), progress=False)  # what each start does

    logger.info("data: store format comparison")
    formats = store_formats(store, cases[0]["case_id"])

    logger.info("data: loader speed and memory, store pipeline at N = %s", list(num_cases))
    new = {n: _child({"config_files": files, "overrides": {**common, "datalist": datalists[n]}, "slices": slices,
                      "warmup": 8}) for n in num_cases}
    logger.info("data: loader speed and memory, CacheDataset pipeline at N = %s", list(old_cases))
    old_files = files[:1] + [str(BUNDLE_CONFIGS / "in_memory_train.json")] + files[1:]
    old = {n: _child({"config_files": old_files, "overrides": {**common, "datalist": datalists[n], "cache_rate": 1.0},
                      "slices": old_slices, "warmup": 4}) for n in old_cases}

    logger.info("data: time to the first training step on a second start (N = %d, store complete)", n_max)
    first = time_to_first_step(files, {**common, "datalist": datalists[n_max], "teacher_random_init": True,
                                       "epochs": 1}, work)

    n_lo, n_hi = min(num_cases), max(num_cases)
    rss = {n: new[n]["memory_mb"]["peak_rss"] for n in num_cases}
    result = {
        "meta": {
            "cpu": cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__, "presets": presets,
            "shape": list(shape), "cases": n_max + 1, "distinct_phantoms": distinct, "workers": workers,
            "load_average_start": load_start, "load_average_end": os.getloadavg(), "make_cases_s": make_s,
            "roi_size": bundle_parser("train", presets)["roi_size"],
        },
        "preprocess": {
            "cases_written": sum(s.written for s in preprocess.values()),
            "seconds_per_case_per_worker": statistics.mean(case_seconds) if case_seconds else None,
            "wall_seconds_per_case": sum(s.seconds for s in written) / max(sum(s.written for s in written), 1),
            "store_bytes_per_case": store_bytes,
            "stored_shape_zmxy_mean": [statistics.mean(s[i] for s in shapes) for i in range(4)],
            "verify_s_per_case": verify.seconds / verify.total,
        },
        "formats": formats,
        "store_loader": {str(n): v for n, v in new.items()},
        "cache_loader": {str(n): v for n, v in old.items()},
        "first_step_second_start": first,
        "summary": {
            "store_slices_per_s_per_worker": new[n_hi]["slices_per_s"],
            "cache_slices_per_s_per_worker": old[max(old_cases)]["slices_per_s"],
            "speedup": new[n_hi]["slices_per_s"] / old[max(old_cases)]["slices_per_s"],
            "store_peak_rss_growth": rss[n_hi] / rss[n_lo] - 1.0,
            "store_peak_rss_mb_per_case": (rss[n_hi] - rss[n_lo]) / (n_hi - n_lo),
            "cache_peak_rss_mb_per_case": (old[max(old_cases)]["memory_mb"]["peak_rss"]
                                           - old[min(old_cases)]["memory_mb"]["peak_rss"])
            / max(max(old_cases) - min(old_cases), 1),
            "cache_build_s_per_case": old[max(old_cases)]["build_s"] / max(old_cases),
            "first_step_s": first["seconds"],
            "brats2021_store_gb": store_bytes * 1251 / 1e9,
        },
    }
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2) + "\n")
    return result


def format_data_report(result: dict) -> str:
    """Markdown tables of a :func:`run_data_benchmark` result."""
    meta, pre, summ = result["meta"], result["preprocess"], result["summary"]
    lines = [
        f"CPU: {meta['cpu']} ({meta['cpus']} cores), torch {meta['torch']}, presets {meta['presets']}, "
        f"{meta['cases']} cases {meta['shape']} at 1 mm ({meta['distinct_phantoms']} distinct phantoms), "
        f"load average {meta['load_average_start'][0]:.2f} -> {meta['load_average_end'][0]:.2f}.",
        "",
        "| preprocessing | value |",
        "|---|---|",
        f"| seconds per case per worker | {pre['seconds_per_case_per_worker']:.2f} |",
        f"| wall seconds per case ({meta['workers']} workers) | {pre['wall_seconds_per_case']:.2f} |",
        f"| store MB per case | {pre['store_bytes_per_case'] / 1e6:.1f} |",
        f"| BraTS 2021 (1,251 cases) store GB | {summ['brats2021_store_gb']:.1f} |",
        f"| ms per case to check a complete store (every start) | {pre['verify_s_per_case'] * 1e3:.2f} |",
        "",
        "| format | MB per case | ms per slice read | s to write |",
        "|---|---|---|---|",
    ]
    for name, f in result["formats"].items():
        write = "-" if f["write_s"] is None else f"{f['write_s']:.2f}"
        lines.append(f"| {name} | {f['bytes'] / 1e6:.1f} | {f['slice_read_s'] * 1e3:.2f} | {write} |")
    lines += ["", f"| loader, slices {meta['roi_size']} | N cases | build s | slices/s, one worker | "
              "slices/s in process | peak RSS MB | RssAnon MB |", "|---|---|---|---|---|---|---|"]
    for kind, key in (("slice store", "store_loader"), ("CacheDataset", "cache_loader")):
        for n, e in result[key].items():
            lines.append(f"| {kind} | {n} | {e['build_s']:.1f} | {e['slices_per_s']:.1f} | "
                         f"{e['slices_per_s_in_process']:.1f} | {e['memory_mb']['peak_rss']:.0f} | "
                         f"{e['memory_mb']['rss_anon']:.0f} |")
    lines += [
        "",
        f"speedup (store / CacheDataset slices/s per worker): {summ['speedup']:.1f}x",
        f"store peak RSS growth N={min(map(int, result['store_loader']))} -> {max(map(int, result['store_loader']))}: "
        f"{summ['store_peak_rss_growth']:.1%} ({summ['store_peak_rss_mb_per_case']:.2f} MB per case; CacheDataset "
        f"{summ['cache_peak_rss_mb_per_case']:.0f} MB per case)",
        f"time to the first training step, second start: {summ['first_step_s']:.1f} s",
    ]
    return "\n".join(lines)


def main(section: str = "model", spec: str | None = None, **kwargs: Any) -> None:
    """``--section model`` (default): training and inference speed; ``--section data``: the data pipeline."""
    if section == "model":
        print(format_report(run_benchmark(**kwargs)))
    elif section == "data":
        print(format_data_report(run_data_benchmark(**kwargs)))
    elif section == "loader_child":
        print(json.dumps(loader_child(json.loads(Path(spec).read_text()))))
    else:
        raise ValueError(f"Unknown --section {section!r}; use model or data.")


if __name__ == "__main__":
    import fire

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("diffmed_monai.networks.teacher").setLevel(logging.ERROR)  # the table says it is random
    fire.Fire(main)
