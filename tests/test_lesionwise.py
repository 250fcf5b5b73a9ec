"""BraTS 2023 lesion-wise Dice and HD95 on cases computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffmed_monai.metrics import LesionWiseMetric, lesion_wise_scores

SHAPE = (60, 60, 30)


def _box(mask, corner, size):
    x, y, z = corner
    mask[x : x + size[0], y : y + size[1], z : z + size[2]] = True
    return mask


def _empty():
    return np.zeros(SHAPE, bool)


def test_empty_and_empty_is_perfect():
    assert lesion_wise_scores(_empty(), _empty()) == (1.0, 0.0)


def test_identical_lesions_are_perfect():
    ref = _box(_box(_empty(), (5, 5, 5), (5, 5, 5)), (40, 40, 20), (6, 6, 4))
    assert lesion_wise_scores(ref, ref.copy()) == (1.0, 0.0)


def test_missed_lesion_scores_zero_and_the_maximal_distance():
    ref = _box(_box(_empty(), (5, 5, 5), (5, 5, 5)), (40, 40, 20), (6, 6, 4))  # two lesions, 125 and 144 mm^3
    pred = _box(_empty(), (5, 5, 5), (5, 5, 5))  # finds the first only
    dice, hd95 = lesion_wise_scores(pred, ref)
    assert dice == pytest.approx((1.0 + 0.0) / 2)
    assert hd95 == pytest.approx((0.0 + 374.0) / 2)


def test_false_positive_lesion_adds_to_the_denominator():
    ref = _box(_empty(), (5, 5, 5), (5, 5, 5))
    pred = _box(ref.copy(), (40, 40, 20), (4, 4, 4))  # the lesion, plus a far-away spurious blob
    dice, hd95 = lesion_wise_scores(pred, ref)
    assert dice == pytest.approx(1.0 / 2) and hd95 == pytest.approx(374.0 / 2)
    assert lesion_wise_scores(pred, _empty()) == (0.0, 374.0)  # nothing to find: every component is spurious


def test_split_prediction_counts_as_one_match():
    ref = _box(_empty(), (10, 10, 10), (10, 4, 4))  # one 160 mm^3 lesion
    pred = _box(_box(_empty(), (10, 10, 10), (4, 4, 4)), (16, 10, 10), (4, 4, 4))  # two pieces, 2-voxel gap
    dice, _ = lesion_wise_scores(pred, ref)
    assert dice == pytest.approx(2 * 128 / (128 + 160))  # both pieces matched, none a false positive


def test_nearby_reference_lesions_merge_by_dilation():
    ref = _box(_box(_empty(), (10, 10, 10), (4, 4, 4)), (16, 10, 10), (4, 4, 4))  # 2 voxels apart: one lesion
    pred = _box(_empty(), (10, 10, 10), (4, 4, 4))
    dice, _ = lesion_wise_scores(pred, ref)
    assert dice == pytest.approx(2 * 64 / (64 + 128))  # one merged lesion, half found
    far = _box(_box(_empty(), (10, 10, 10), (4, 4, 4)), (30, 10, 10), (4, 4, 4))  # far apart: two lesions
    assert lesion_wise_scores(pred, far)[0] == pytest.approx((1.0 + 0.0) / 2)


def test_small_reference_lesions_are_left_out():
    ref = _box(_box(_empty(), (5, 5, 5), (5, 5, 5)), (40, 40, 20), (3, 3, 3))  # 125 mm^3 and 27 mm^3 (<= 50)
    pred = _box(_empty(), (5, 5, 5), (5, 5, 5))
    assert lesion_wise_scores(pred, ref) == (1.0, 0.0)  # the missed small lesion does not count
    assert lesion_wise_scores(pred, ref, min_volume=10.0)[0] == pytest.approx(0.5)
    assert lesion_wise_scores(pred, ref, spacing=(0.5, 0.5, 0.5))[0] == pytest.approx(1.0)  # volumes in mm^3


def test_metric_reduces_over_cases():
    ref = _box(_empty(), (5, 5, 5), (5, 5, 5))
    y = torch.as_tensor(np.stack([ref, ref]))[:, None].float()
    y_pred = torch.as_tensor(np.stack([ref, _empty()]))[:, None].float()
    dice = LesionWiseMetric("dice")
    dice(y_pred, y)
    assert dice.aggregate().item() == pytest.approx(0.5)
    hd95 = LesionWiseMetric("hd95")
    hd95(y_pred, y)
    assert hd95.aggregate().item() == pytest.approx(374.0 / 2)
