"""Flip TTA (average of the softmax over the in-plane flips) and small enhancing components relabelled."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from diffmed_monai.inferers import FLIP_DIMS, ForegroundSliceInferer, SliceNetwork
from diffmed_monai.transforms import RelabelSmallComponentsd, relabel_small_components


def test_flip_tta_is_the_mean_softmax_over_the_four_flips():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 5, padding=2)  # not flip-equivariant: the four passes differ
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = SliceNetwork(net, flip_tta=True)(x)
        probs = [torch.softmax(torch.flip(net(torch.flip(x, d)), d) if d else net(x), 1) for d in FLIP_DIMS]
    expected = torch.stack(probs).mean(0)
    assert not torch.allclose(probs[0], expected, atol=1e-3)
    assert torch.allclose(torch.softmax(out, 1), expected, atol=1e-6)  # the bundle's softmax gives the mean


def test_flip_tta_through_the_slice_inferer_keeps_skipped_slices_background():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 3, 3, padding=1)
    volume = torch.randn(1, 2, 16, 16, 4)
    volume[..., 1] = 0  # an empty slice: skipped, background
    with torch.no_grad():
        plain = ForegroundSliceInferer(num_classes=3)(volume, net)
        tta = ForegroundSliceInferer(num_classes=3, flip_tta=True)(volume, net)
    assert tta.shape == plain.shape == (1, 3, 16, 16, 4)
    assert torch.softmax(tta, 1)[:, 0, :, :, 1].eq(1).all()
    assert not torch.allclose(torch.softmax(tta, 1), torch.softmax(plain, 1), atol=1e-4)


def test_small_enhancing_components_become_necrosis_by_volume_in_mm3():
    labels = np.zeros((20, 20, 20), np.uint8)
    labels[2:8, 2:8, 2:8] = 3  # 216 voxels
    labels[15:17, 15:17, 15:17] = 3  # 8 voxels, apart
    labels[10, 10, 10] = 2
    out, count = relabel_small_components(labels, source=3, target=1, min_volume=50.0, spacing=(1, 1, 1))
    assert count == 1 and (out[15:17, 15:17, 15:17] == 1).all() and (out[2:8, 2:8, 2:8] == 3).all()
    assert out[10, 10, 10] == 2 and (labels[15:17, 15:17, 15:17] == 3).all()  # input untouched
    # at 2 mm the small component is 64 mm^3: kept; the transform reads the spacing from the affine
    pred = MetaTensor(torch.as_tensor(labels[None]).float(), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    kept = RelabelSmallComponentsd("pred", source=3, target=1, min_volume=50.0)({"pred": pred})["pred"]
    assert isinstance(kept, MetaTensor) and torch.equal(kept.as_tensor(), pred.as_tensor())
    bigger = RelabelSmallComponentsd("pred", source=3, target=1, min_volume=100.0)({"pred": pred})["pred"]
    assert (bigger[0, 15:17, 15:17, 15:17] == 1).all() and (bigger[0, 2:8, 2:8, 2:8] == 3).all()
    with pytest.raises(ValueError, match="both"):
        RelabelSmallComponentsd("pred", source=1, target=1, min_volume=10.0)
