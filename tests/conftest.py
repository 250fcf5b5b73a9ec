"""Shared fixtures: tiny configurations so the suite runs on a 2-core CPU."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_NET = dict(
    teacher_dim=32,
    feature_size=12,
    depths=(1, 1, 1, 1),
    num_heads=(1, 1, 2, 2),
    window_size=4,
    fusion_heads=2,
    fusion_depth=1,
    denoiser_width=32,
    denoiser_depth=1,
    denoiser_heads=2,
    decoder_dim=32,
)


@pytest.fixture
def tiny_net_kwargs():
    return dict(TINY_NET)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
