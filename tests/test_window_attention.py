"""LogitsDtypeWindowAttention: MONAI's window attention, bias in the logits' dtype under CPU autocast training."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets.swin_unetr import SwinTransformer, SwinTransformerBlock, WindowAttention

from diffmed_monai.networks import DiffMedDINOv3, LogitsDtypeWindowAttention, use_logits_dtype_bias

from .conftest import TINY_NET

WINDOWS, HEADS, DIM, WINDOW = 8, 2, 32, (4, 4)
N = WINDOW[0] * WINDOW[1]


def _pair():
    """A MONAI ``WindowAttention`` and a :class:`LogitsDtypeWindowAttention` with the same weights."""
    torch.manual_seed(0)
    monai_attn = WindowAttention(DIM, HEADS, WINDOW, qkv_bias=True, use_flash_attention=True)
    torch.nn.init.normal_(monai_attn.relative_position_bias_table, std=1.0)  # a bias that matters in the softmax
    ours = LogitsDtypeWindowAttention(DIM, HEADS, WINDOW, qkv_bias=True, use_flash_attention=True)
    ours.load_state_dict(monai_attn.state_dict(), strict=True)
    return monai_attn, ours


def _inputs(masked: bool):
    """Windows ``(2 * WINDOWS, N, DIM)`` of two images and, if ``masked``, a shifted-window mask of 0 or -100."""
    x = torch.randn(2 * WINDOWS, N, DIM)
    return x, torch.where(torch.rand(WINDOWS, N, N) < 0.3, -100.0, 0.0) if masked else None


def _step(attn, x, mask, autocast: bool):
    """Output (float32) and every parameter's gradient of a training step through ``attn``."""
    attn.zero_grad()
    softmax_inputs = []
    handle = attn.softmax.register_forward_hook(lambda m, args, out: softmax_inputs.append(args[0].dtype))
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out = attn(x, mask).float()
    out.square().mean().backward()
    handle.remove()
    return out.detach(), {n: p.grad.clone() for n, p in attn.named_parameters()}, softmax_inputs


def _rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_students_and_fusion_use_it_with_monais_state_dict_keys():
    net = DiffMedDINOv3(["t1", "t2"], num_classes=3, **TINY_NET)
    blocks = [m for m in net.modules() if isinstance(m, SwinTransformerBlock)]
    assert len(blocks) == 3 * sum(TINY_NET["depths"]) + TINY_NET.get("fusion_depth", 2)
    assert all(type(b.attn) is LogitsDtypeWindowAttention for b in blocks)
    monai_attn, ours = _pair()
    assert ours.state_dict().keys() == monai_attn.state_dict().keys()


@pytest.fixture(params=[False, True], ids=["unshifted", "shifted"])
def attention_case(request):
    """MONAI's and our attention with the same weights, and windows with (shifted) or without a mask."""
    return (*_pair(), *_inputs(request.param))


def test_float32_and_inference_are_monais_own_forward(attention_case):
    monai_attn, ours, x, mask = attention_case
    ref_out, ref_grads, ref_softmax = _step(monai_attn, x, mask, autocast=False)
    out, grads, softmax = _step(ours, x, mask, autocast=False)
    assert torch.equal(out, ref_out) and softmax == ref_softmax == [torch.float32]
    assert all(torch.equal(grads[n], ref_grads[n]) for n in ref_grads)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):  # MONAI's fused attention in both
        assert torch.equal(ours(x, mask), monai_attn(x, mask))


def test_bf16_training_keeps_the_softmax_in_bf16_and_float32_accuracy_of_monais_bf16(attention_case):
    monai_attn, ours, x, mask = attention_case
    exact_out, exact_grads, _ = _step(monai_attn, x, mask, autocast=False)
    monai_out, monai_grads, monai_softmax = _step(monai_attn, x, mask, autocast=True)
    out, grads, softmax = _step(ours, x, mask, autocast=True)
    assert monai_softmax == [torch.float32]  # what this class removes: float32 logits under bf16 autocast
    assert softmax == [torch.bfloat16]
    assert _rel_err(out, exact_out) <= 2 * _rel_err(monai_out, exact_out) + 1e-3
    for name, exact in exact_grads.items():
        assert grads[name].abs().sum() > 0, name  # the bias table and every weight train
        assert _rel_err(grads[name], exact) <= 2 * _rel_err(monai_grads[name], exact) + 1e-2, name


def test_installing_it_leaves_seeded_initialisation_as_monai_builds_it():
    """The swap draws no random numbers: a seeded network gets the weights it had with MONAI's class, and the
    generator continues where it would have."""

    def build(swap: bool):
        torch.manual_seed(0)
        swin = SwinTransformer(1, 12, (4, 4), (2, 2), (1, 1, 1, 1), (1, 1, 1, 1), spatial_dims=2)
        if swap:
            use_logits_dtype_bias(swin)
        return swin.state_dict(), torch.rand(8)

    (monai_state, monai_next), (our_state, our_next) = build(False), build(True)
    assert monai_state.keys() == our_state.keys()
    assert all(torch.equal(monai_state[k], our_state[k]) for k in monai_state)
    assert torch.equal(monai_next, our_next)
