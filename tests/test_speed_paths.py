"""Speed paths equal the plain ones: stacked (vmapped) modality-specific modules and fused window attention."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from monai.networks.nets.swin_unetr import WindowAttention

from diffmed_monai.benchmark import count_flops
from diffmed_monai.losses import DiffMedLoss
from diffmed_monai.networks import DiffMedDINOv3, SwinStudent
from diffmed_monai.networks.fused_attention import _sdpa_window_attention, use_fused_window_attention
from diffmed_monai.networks.stacked import stacked_forward

from .conftest import TINY_NET

ATOL = 1e-5


def _pair(**kw):
    """A loop-path network and a stacked-path copy with the same weights."""
    torch.manual_seed(0)
    args = dict(TINY_NET)
    args.update(kw)
    loop = DiffMedDINOv3(num_classes=4, **args)
    stacked = DiffMedDINOv3(num_classes=4, stacked_specific=True, **args)
    stacked.load_state_dict(loop.state_dict())
    # the zero-initialised denoiser heads would hide any mismatch in the denoiser blocks
    with torch.no_grad():
        for net in (loop, stacked):
            for i, den in enumerate(net.denoisers):
                g = torch.Generator().manual_seed(i)
                den.head.weight.copy_(0.05 * torch.randn(den.head.weight.shape, generator=g))
    return loop, stacked


def _run(net, x, label, teacher, mask=None):
    t = torch.tensor([3, 500])
    noise = torch.randn(2, 4, 32, 2, 2, generator=torch.Generator().manual_seed(1))
    out = net(x, modality_mask=mask, return_training_outputs=True, timesteps=t, noise=noise)
    loss = DiffMedLoss(4, 32)(out, label, teacher, mask)["loss"]
    loss.backward()
    return out, {n: p.grad for n, p in net.named_parameters()}


@pytest.mark.parametrize("with_mask", [False, True])
def test_stacked_specific_equals_loop_forward_and_gradients(with_mask):
    loop, stacked = _pair()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 32, 32, generator=g)
    label = torch.randint(0, 4, (2, 1, 32, 32), generator=g)
    teacher = torch.randn(2, 4, 32, 2, 2, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]]) if with_mask else None
    out_l, grads_l = _run(loop, x, label, teacher, mask)
    out_s, grads_s = _run(stacked, x, label, teacher, mask)
    for key in ("pred", "u0", "denoised", "denoised_noisy"):
        torch.testing.assert_close(out_s[key], out_l[key], atol=ATOL, rtol=1e-5, msg=key)
    assert grads_l.keys() == grads_s.keys()
    for name, gl in grads_l.items():
        assert gl is not None and grads_s[name] is not None, name
        torch.testing.assert_close(grads_s[name], gl, atol=ATOL, rtol=1e-5, msg=name)
    # the specific students and denoisers did get gradients through the stacked call
    assert float(grads_s["specific_students.2.swin.patch_embed.proj.weight"].abs().sum()) > 0
    assert float(grads_s["denoisers.3.blocks.0.mlp.linear1.weight"].abs().sum()) > 0


def test_stacked_specific_eval_and_state_dict_compatible():
    loop, stacked = _pair()
    assert list(loop.state_dict()) == list(stacked.state_dict())
    x = torch.randn(3, 4, 48, 32)
    with torch.inference_mode():
        ref = loop.eval()(x)
        torch.testing.assert_close(stacked.eval()(x), ref, atol=ATOL, rtol=1e-5)
        loop.stacked_specific = True  # a plain switch on a built (e.g. checkpoint-loaded) network
        torch.testing.assert_close(loop(x), ref, atol=ATOL, rtol=1e-5)


def test_stacked_forward_rejects_unsupported_modules():
    with pytest.raises(ValueError, match="use_checkpoint"):
        DiffMedDINOv3(num_classes=4, stacked_specific=True, use_checkpoint=True, **TINY_NET)
    a = SwinStudent(feature_size=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4)
    b = SwinStudent(feature_size=12, depths=(1, 1, 2, 1), num_heads=(1, 1, 2, 2), window_size=4)
    with pytest.raises(ValueError, match="other parameters"):
        stacked_forward([a, b], torch.randn(2, 1, 1, 16, 16))
    with pytest.raises(ValueError, match="leading size"):
        stacked_forward([a, copy.deepcopy(a)], torch.randn(3, 1, 1, 16, 16))
    bn = [torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)]
    with pytest.raises(ValueError, match="floating point"):
        stacked_forward(bn, torch.randn(2, 4, 3))


def test_speed_paths_do_the_same_arithmetic():
    loop, stacked = _pair()
    x = torch.randn(2, 4, 32, 32)
    with torch.inference_mode():
        ref = count_flops(lambda: loop.eval()(x))
        assert count_flops(lambda: stacked.eval()(x)) == ref
        use_fused_window_attention(stacked)  # the attention FLOPs are counted on the fused path too
        assert count_flops(lambda: stacked.eval()(x)) == ref


@pytest.mark.parametrize("size", [(32, 32), (40, 24)])  # 40x24: padded windows
def test_fused_window_attention_equals_monai(size):
    torch.manual_seed(0)
    plain = SwinStudent(feature_size=12, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4)
    with torch.no_grad():  # non-zero relative-position biases so that their gradients are compared too
        for mod in plain.modules():
            if isinstance(mod, WindowAttention):
                mod.relative_position_bias_table.normal_(0, 0.5)
    fused = copy.deepcopy(plain)
    assert use_fused_window_attention(fused) == 8
    x = torch.randn(3, 1, *size)
    with torch.no_grad():  # the SDPA path
        for a, b in zip(plain(x), fused(x)):
            torch.testing.assert_close(b, a, atol=ATOL, rtol=1e-5)
    # with gradients: the SDPA computation the CUDA path runs (a CPU falls back to MONAI's own forward)
    sdpa = copy.deepcopy(plain)
    for mod in sdpa.modules():
        if isinstance(mod, WindowAttention):
            mod.forward = types.MethodType(_sdpa_window_attention, mod)
    for net in (plain, fused, sdpa):
        out = net(x)
        sum((f * torch.linspace(-1, 1, f.numel()).view_as(f)).sum() for f in out).backward()
    for other in (fused, sdpa):
        for (name, p), q in zip(plain.named_parameters(), other.parameters()):
            torch.testing.assert_close(q.grad, p.grad, atol=ATOL, rtol=1e-5, msg=name)
    assert float(next(sdpa.swin.layers1[0].blocks[1].attn.parameters()).grad.abs().sum()) > 0
    use_fused_window_attention(fused, enabled=False)
    assert all("forward" not in m.__dict__ for m in fused.modules())


def test_fused_attention_with_stacked_students_equals_loop():
    loop, stacked = _pair()
    use_fused_window_attention(stacked)
    x = torch.randn(2, 4, 32, 32)
    torch.testing.assert_close(stacked(x), loop(x), atol=ATOL, rtol=1e-5)  # training mode, gradients on
    with torch.inference_mode():  # SDPA under vmap
        torch.testing.assert_close(stacked.eval()(x), loop.eval()(x), atol=ATOL, rtol=1e-5)
