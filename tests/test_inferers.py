"""ForegroundSliceInferer: empty slices never reach the network, batches follow the pixel budget, the rest equals
MONAI's SliceInferer."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer

from diffmed_monai.inferers import ForegroundSliceInferer
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
