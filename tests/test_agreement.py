"""scripts/agreement.py: two settings of the bundle's inference.json compared, with given weights."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from diffmed_monai.data import make_demo_data
from diffmed_monai.engines import CheckpointError

from .helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
import benchmark  # noqa: E402
import agreement  # noqa: E402


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("agreement")
    datalist = make_demo_data(str(root / "data"), num_cases=2, shape=(48, 48, 32), val_fraction=0.5)
    torch.manual_seed(0)
    network = benchmark.bundle_parser("inference", ["tiny"]).get_parsed_content("network_def")
    checkpoint = root / "model.pt"
    torch.save({"model": network.state_dict()}, checkpoint)  # a training checkpoint's layout
    return root, datalist, checkpoint


def test_agreement_compares_bf16_with_float32_per_region(demo):
    root, datalist, checkpoint = demo
    out = root / "agreement.json"
    result = agreement.measure(str(checkpoint), str(root / "data"), datalist=datalist, presets=["tiny"],
                               devices=["cpu"], output=str(out))
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    entry = result["devices"]["cpu"]
    assert len(entry["per_case"]) == 1
    case = entry["per_case"][0]
    for region in ("et", "tc", "wt"):
        assert 0.0 <= case[region] <= 1.0 and entry["dice_min"][region] == case[region]
        assert case["voxels_baseline"][region] >= 0
    assert all(s > 0 for s in entry["seconds_per_volume"].values())
    assert result["meta"]["baseline"] == agreement.FLOAT32 and result["meta"]["variant"] == agreement.BF16
    assert "variant vs baseline" in agreement.format_report(result)


def test_agreement_refuses_weights_of_another_network(demo):
    root, datalist, _ = demo
    other = benchmark.bundle_parser("inference", ["tiny"], **{"network_def#decoder_dim": 16})
    bad = root / "other.pt"
    torch.save(other.get_parsed_content("network_def").state_dict(), bad)
    with pytest.raises(CheckpointError, match="does not fit the network"):
        agreement.measure(str(bad), str(root / "data"), datalist=datalist, presets=["tiny"], devices=["cpu"],
                          output=None)
