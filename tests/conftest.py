"""Shared fixtures: the tiny preset of the bundle, so the suite runs on a 2-core CPU."""

from __future__ import annotations

import os

import pytest
import torch
from monai.bundle import ConfigParser

from diffmed_monai.networks import teacher_width

from .helpers import PRESETS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _tiny_network_kwargs() -> dict:
    """``DiffMedDINOv3`` keyword arguments of ``configs/tiny.json`` (all but modalities/classes)."""
    preset = ConfigParser.load_config_file(str(PRESETS / "tiny.json"))
    kwargs = {key.split("#", 1)[1]: value for key, value in preset.items() if key.startswith("network_def#")}
    return {**kwargs, "teacher_dim": teacher_width(preset["teacher_arch"])}


TINY_NET = _tiny_network_kwargs()


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
