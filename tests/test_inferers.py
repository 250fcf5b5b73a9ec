"""ForegroundSliceInferer: empty slices never reach the network, batches follow the pixel budget, the rest equals
MONAI's SliceInferer."""

from __future__ import annotations

import threading

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer

from diffmed_monai.inferers import ForegroundSliceInferer, default_cpu_workers
from diffmed_monai.networks import DiffMedDINOv3


class Recorder(torch.nn.Module):
    """Calls ``net`` and keeps the shape of each batch and whether each of its slices holds a non-zero voxel."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.batches: list[tuple[int, ...]] = []
        self.occupied: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(tuple(x.shape))
        self.occupied += x.ne(0).flatten(1).any(1).tolist()
        return self.net(x)


@pytest.fixture(scope="module")
def tiny_net():
    from .conftest import TINY_NET

    torch.manual_seed(0)
    return DiffMedDINOv3(["t1", "t1ce", "t2", "flair"], num_classes=4, **TINY_NET).eval()


def _volume() -> torch.Tensor:
    """``(1, 4, 32, 48, 9)``: foreground on slices 1, 2, 3, 6 (slice 6: one voxel of one channel), 0 elsewhere."""
    vol = torch.zeros(1, 4, 32, 48, 9)
    vol[0, :, 5:27, 8:40, 1:4] = torch.randn(4, 22, 32, 3, generator=torch.Generator().manual_seed(0))
    vol[0, 2, 16, 20, 6] = 1.5
    return vol


def test_empty_slices_never_reach_the_network_and_are_background(tiny_net):
    vol = MetaTensor(_volume(), affine=torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0])))
    rec = Recorder(tiny_net)
    inferer = ForegroundSliceInferer(num_classes=4, max_batch_pixels=10**9)
    with torch.no_grad():
        out = inferer(vol, rec)
        reference = SliceInferer(roi_size=(32, 48), spatial_dim=2, sw_batch_size=9, progress=False)(vol, tiny_net)
    assert rec.occupied == [True] * 4 and rec.batches == [(4, 4, 32, 48)]  # one call, the four occupied slices
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, vol.affine) and out.shape == (1, 4, 32, 48, 9)
    kept = [1, 2, 3, 6]
    torch.testing.assert_close(out[..., kept].as_tensor(), reference[..., kept].as_tensor(), rtol=1e-4, atol=1e-4)
    empty = [0, 4, 5, 7, 8]
    probs = out[..., empty].softmax(1)
    assert torch.equal(probs[:, 0], torch.ones_like(probs[:, 0]))  # background, certainly
    assert not torch.equal(out[..., kept].argmax(1), torch.zeros_like(out[..., kept].argmax(1)))  # not all background


def test_skip_empty_off_runs_every_slice(tiny_net):
    rec = Recorder(tiny_net)
    with torch.no_grad():
        ForegroundSliceInferer(num_classes=4, skip_empty=False)(_volume(), rec)
    assert len(rec.occupied) == 9 and rec.occupied.count(False) == 5


def test_all_empty_volume_never_calls_the_network(tiny_net):
    rec = Recorder(tiny_net)
    out = ForegroundSliceInferer(num_classes=4)(torch.zeros(1, 4, 32, 48, 5), rec)
    assert rec.batches == [] and out.shape == (1, 4, 32, 48, 5)
    assert torch.equal(out.argmax(1), torch.zeros(1, 32, 48, 5, dtype=torch.long))


@pytest.mark.parametrize("budget, per_call", [(3 * 32 * 48, 3), (32 * 48 - 1, 1), (10**9, 4)])
def test_batches_stay_within_the_pixel_budget(tiny_net, budget, per_call):
    rec = Recorder(tiny_net)
    with torch.no_grad():
        ForegroundSliceInferer(num_classes=4, max_batch_pixels=budget)(_volume(), rec)
    assert max(b[0] for b in rec.batches) == per_call and sum(b[0] for b in rec.batches) == 4


def test_wrong_class_count_and_sw_batch_size_are_refused(tiny_net):
    with pytest.raises(ValueError, match="num_classes"):
        ForegroundSliceInferer(num_classes=3)(_volume(), tiny_net)
    with pytest.raises(ValueError, match="max_batch_pixels"):
        ForegroundSliceInferer(num_classes=4, sw_batch_size=8)


def test_crop_is_whole_tiles_of_the_padded_uncropped_volume():
    """The crop holds the foreground's bounding box widened to the 16-px tiles that ``pad_to_network`` makes of the
    whole volume, and nothing else: the same pixels at the same tile positions, and it inverts exactly."""
    from monai.transforms import Compose

    from diffmed_monai.transforms import CropForegroundOnGridd, pad_to_network

    vol = torch.zeros(2, 40, 50, 6)
    vol[0, 13:29, 21:37, 1:4] = torch.rand(16, 16, 3) + 0.1
    vol[1, 30, 40, 4] = -2.0  # a negative voxel of another channel is foreground too
    crop, pad = CropForegroundOnGridd("image"), pad_to_network("image")
    out = pad(crop({"image": MetaTensor(vol)}))
    full = pad({"image": MetaTensor(vol)})["image"]  # 48 x 64: 4 and 7 voxels of padding before voxel 0
    # foreground rows 13..30 -> padded 17..34 -> tiles 16..47; columns 21..40 -> 28..47 -> tiles 16..47; slices 1..4
    assert out["image"].shape == (2, 32, 32, 4)
    assert torch.equal(out["image"].as_tensor(), full.as_tensor()[:, 16:48, 16:48, 1:5])
    assert torch.equal(Compose([crop, pad]).inverse(out)["image"].as_tensor(), vol)
    empty = pad(crop({"image": MetaTensor(torch.zeros(1, 40, 50, 6))}))["image"]
    assert empty.shape == (1, 48, 64, 6)  # nothing to crop to: kept whole


class AutocastProbe(torch.nn.Module):
    """Records whether CPU bf16 autocast is on at each call and returns a matmul's output (bf16 under it)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))
        self.autocast: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return torch.einsum("nmhw,mc->nchw", x, self.weight)


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_cpu_bf16_runs_the_network_under_bf16_autocast_and_returns_float32(cpu_bf16):
    probe = AutocastProbe()
    vol = _volume()
    with torch.no_grad():
        out = ForegroundSliceInferer(num_classes=4, cpu_bf16=cpu_bf16)(vol, probe)
        reference = ForegroundSliceInferer(num_classes=4)(vol, AutocastProbe())
    assert probe.autocast == [cpu_bf16] and out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=2e-2, atol=2e-2)  # bf16 keeps 8 bits of mantissa
    assert torch.equal(out, reference) != cpu_bf16  # bf16 rounding did happen (and only when asked)


def test_cpu_has_native_bf16_reads_the_cpu_flags(tmp_path):
    from diffmed_monai.inferers import cpu_has_native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert cpu_has_native_bf16(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n")
    assert cpu_has_native_bf16(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_has_native_bf16(str(info))
    assert not cpu_has_native_bf16(str(tmp_path / "missing"))


def test_crop_slices_runs_each_slice_on_its_own_box_of_whole_tiles():
    """Slices 1-3 hold foreground in rows 5-26, columns 8-39 (box rows 0-32, columns 0-48 on the 16-px grid), slice
    6 one voxel at (16, 20) (box 16-32, 16-32): a per-pixel network gives exactly the uncropped logits inside each
    box, and background outside it."""
    torch.manual_seed(0)
    pixelwise = torch.nn.Conv2d(4, 4, kernel_size=1)
    rec = Recorder(pixelwise)
    vol = _volume()
    inferer = ForegroundSliceInferer(num_classes=4, crop_slices=True, slice_multiple=16, max_batch_pixels=10**9)
    assert inferer.occupied_slices(vol).tolist() == [1, 2, 3, 6]
    with torch.no_grad():
        out = inferer(vol, rec)
        full = ForegroundSliceInferer(num_classes=4)(vol, pixelwise)
    assert sorted(rec.batches) == [(1, 4, 16, 16), (3, 4, 32, 48)]  # one call per box size
    torch.testing.assert_close(out[..., 1:4], full[..., 1:4])  # the box is the whole (32 x 48) slice
    torch.testing.assert_close(out[:, :, 16:32, 16:32, 6], full[:, :, 16:32, 16:32, 6])
    outside = torch.ones(32, 48, dtype=torch.bool)
    outside[16:32, 16:32] = False
    assert torch.equal(out[0, :, :, :, 6][:, outside].argmax(0), torch.zeros(int(outside.sum()), dtype=torch.long))
    assert torch.equal(out[..., [0, 4, 5, 7, 8]].argmax(1), torch.zeros(1, 32, 48, 5, dtype=torch.long))


def test_crop_slices_batches_within_the_pixel_budget_and_refuses_windows():
    rec = Recorder(torch.nn.Conv2d(4, 4, kernel_size=1))
    with torch.no_grad():
        ForegroundSliceInferer(num_classes=4, crop_slices=True, max_batch_pixels=32 * 48 * 2)(_volume(), rec)
    assert sorted(rec.batches) == [(1, 4, 16, 16), (1, 4, 32, 48), (2, 4, 32, 48)]
    with pytest.raises(ValueError, match="roi_size"):
        ForegroundSliceInferer(num_classes=4, crop_slices=True, roi_size=(16, 16))


class ThreadProbe(torch.nn.Module):
    """Calls ``net``; notes each call's thread, intra-op threads, gradient and inference modes and batch shape."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.calls: list[tuple] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((threading.current_thread().name, torch.get_num_threads(), torch.is_grad_enabled(),
                           torch.is_inference_mode_enabled(), tuple(x.shape)))
        return self.net(x)


def test_cpu_workers_run_calls_in_threads_with_the_callers_modes_and_the_same_logits(tiny_net):
    vol, slice_pixels = _volume(), 32 * 48
    threads = torch.get_num_threads()
    probes = {workers: ThreadProbe(tiny_net) for workers in (1, 2)}
    with torch.inference_mode():
        out = {workers: ForegroundSliceInferer(num_classes=4, crop_slices=True, max_batch_pixels=slice_pixels,
                                               cpu_workers=workers)(vol, probe) for workers, probe in probes.items()}
    torch.testing.assert_close(out[2], out[1], rtol=1e-5, atol=1e-5)  # the same calls, summed on fewer threads
    for probe in probes.values():  # each call within the budget of one call
        assert sorted(call[4] for call in probe.calls) == [(1, 4, 16, 16)] + [(1, 4, 32, 48)] * 3
    assert {call[:4] for call in probes[1].calls} == {(threading.current_thread().name, threads, False, True)}
    assert {call[0].startswith("slice-inferer") for call in probes[2].calls} == {True}
    assert {call[1:4] for call in probes[2].calls} == {(max(1, threads // 2), False, True)}
    assert torch.get_num_threads() == threads

    with pytest.raises(ValueError, match="num_classes"):  # a worker's error reaches the caller
        ForegroundSliceInferer(num_classes=4, crop_slices=True, max_batch_pixels=slice_pixels, cpu_workers=2)(
            vol, torch.nn.Conv2d(4, 3, kernel_size=1))
    with pytest.raises(ValueError, match="cpu_workers"):
        ForegroundSliceInferer(num_classes=4, cpu_workers=0)


def test_default_cpu_workers_one_per_thread_up_to_two_then_one_per_two_threads():
    assert [default_cpu_workers(t) for t in (1, 2, 3, 4, 16)] == [1, 2, 1, 2, 8]
    assert default_cpu_workers() == default_cpu_workers(torch.get_num_threads())
