"""scripts/make_teacher.py: a teacher trained on a disjoint pool of hard phantoms, saved in the timm (.pth,
.safetensors) and Hugging Face layouts, reloaded by ``DINOv3Teacher`` to identical tokens, and used by train.json."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from diffmed_monai.networks.teacher import DINOv3Teacher

from .helpers import BUNDLE, PRESETS, REPO, workflow

sys.path.insert(0, str(REPO / "scripts"))
import make_teacher  # noqa: E402

ARGS = {"num_cases": 2, "steps": 6, "pixdim": 4.0, "roi_size": (64, 64), "batch_size": 4}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "made"
    meta = make_teacher.main(output_dir=str(out), **ARGS)
    return out, meta


def test_made_teacher_reloads_to_identical_tokens_in_every_layout(made):
    out, meta = made
    assert meta["arch"] == "tiny" and meta["steps"] == ARGS["steps"] and meta["pool_cases"] == 2
    assert meta["pool_case_seeds"] == [24000, 24001]  # its own seeds, disjoint from the students' seed-0 cases
    written = json.loads((out / "teacher.json").read_text())
    assert written["reload_max_abs_token_diff"] == meta["reload_max_abs_token_diff"]
    x = torch.randn(2, 4, 64, 48)
    layouts = {"timm_pth": out / "teacher_timm.pth", "timm_safetensors": out / "teacher_timm.safetensors",
               "hf": out / "teacher_hf"}
    tokens = {}
    for name, path in layouts.items():
        teacher = DINOv3Teacher(str(path), arch="tiny")
        assert teacher.backend == ("hf" if name == "hf" else "timm")
        tokens[name] = teacher(x)
        assert tokens[name].shape == (2, 4, 32, 4, 3)
    torch.testing.assert_close(tokens["timm_safetensors"], tokens["timm_pth"], rtol=0, atol=0)
    torch.testing.assert_close(tokens["hf"], tokens["timm_pth"], rtol=0, atol=1e-5)
    # trained: not the random initialisation it started from
    torch.manual_seed(0)
    start = DINOv3Teacher(None, arch="tiny", backend="timm", random_init=True)
    assert not torch.allclose(start(x), tokens["timm_pth"])
    saved = torch.load(out / "teacher_timm.pth", weights_only=True)
    assert any(not torch.equal(saved[k], v) for k, v in start.model.state_dict().items())


def test_output_is_never_overwritten_unless_asked(made):
    out, _ = made
    before = (out / "teacher_timm.pth").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_teacher.main(output_dir=str(out), **ARGS)
    assert (out / "teacher_timm.pth").read_bytes() == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".made-")]  # no temporary folder left


def test_timm_to_hf_refuses_unknown_keys():
    state = DINOv3Teacher(None, arch="tiny", backend="timm", random_init=True).model.state_dict()
    state["blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="extra"):
        make_teacher.timm_to_hf_state_dict(state, "tiny")


@pytest.mark.parametrize("layout", ["teacher_timm.pth", "teacher_hf"])
def test_train_json_loads_the_made_teacher_unchanged(made, layout):
    out, _ = made
    wf = workflow([BUNDLE / "configs" / "train.json", PRESETS / "tiny.json"], teacher_arch="tiny",
                  teacher_random_init=False, teacher_weights=str(out / layout))
    wf.initialize()
    teacher = wf.parser.get_parsed_content("teacher")
    assert isinstance(teacher, DINOv3Teacher) and teacher.backend == ("hf" if layout == "teacher_hf" else "timm")
    x = torch.randn(1, 4, 96, 96)
    reference = DINOv3Teacher(str(out / "teacher_timm.pth"), arch="tiny")(x)
    torch.testing.assert_close(teacher(x), reference, rtol=0, atol=1e-5)
    # the tiny network built beside it takes the made teacher's width
    assert wf.parser.get_parsed_content("teacher_dim") == teacher.hidden_size == 32
