"""DiffMedDINOv3 networks: shapes, gradients, frozen teacher, teacher loading, masks, export, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from diffmed_monai.losses import DiffMedLoss
from diffmed_monai.networks import DiffMedDINOv3, DINOv3Teacher, ModalityStack, build_timm_teacher_model

from .conftest import TINY_NET


def _named_grads(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter's gradient under its ``state_dict`` name: the stacked ones of a
    :class:`~diffmed_monai.networks.ModalityStack` sliced per module (``specific_students.2.swin...``)."""
    grads = {}
    stacks = {name: m for name, m in net.named_modules() if isinstance(m, ModalityStack)}
    for prefix, stack in stacks.items():
        for name, param, i in stack.named_parameter_slices():
            grads[f"{prefix}.{name}"] = None if param.grad is None else param.grad[i]
    for name, param in net.named_parameters():
        if name.split(".", 1)[0] not in stacks:
            grads[name] = param.grad
    return grads


def make_net(modalities=("t1", "t1ce", "t2", "flair"), **kw):
    args = dict(TINY_NET)
    args.update(kw)
    return DiffMedDINOv3(modalities=modalities, num_classes=4, **args)


@pytest.mark.parametrize("decoder,full_resolution", [("mlp", 0), ("mlp_multiscale", 0), ("mlp_multiscale", 8)])
@pytest.mark.parametrize("m", [1, 3, 4])
def test_shapes(m, decoder, full_resolution):
    torch.manual_seed(0)
    net = make_net(modalities=[f"mod{i}" for i in range(m)], decoder=decoder, decoder_full_resolution=full_resolution)
    x = torch.randn(2, m, 64, 48)
    assert net(x).shape == (2, 4, 64, 48)
    out = net(x, return_training_outputs=True)
    assert out["pred"].shape == (2, 4, 64, 48)
    for key in ("u0", "noised", "denoised", "denoised_noisy"):
        assert out[key].shape == (2, m, 32, 4, 3), key
    assert out["timesteps"].shape == (2,)
    assert int(out["timesteps"].min()) >= 1 and int(out["timesteps"].max()) <= net.max_train_timestep


def test_student_grid_matches_teacher_grid():
    teacher = DINOv3Teacher(arch="tiny", random_init=True)
    net = make_net()
    x = torch.randn(1, 4, 80, 64)
    assert teacher(x).shape == net(x, return_training_outputs=True)["u0"].shape == (1, 4, 32, 5, 4)


def test_gradients_reach_students_denoisers_decoder_not_teacher():
    torch.manual_seed(0)
    teacher = DINOv3Teacher(arch="tiny", random_init=True)
    net = make_net()
    loss_fn = DiffMedLoss(num_modalities=4, teacher_dim=32)
    x, y = torch.randn(2, 4, 32, 32), torch.randint(0, 4, (2, 1, 32, 32))
    teacher_before = copy.deepcopy(teacher.state_dict())
    optim = torch.optim.AdamW(list(net.parameters()), lr=1e-2)
    parts = loss_fn(net(x, return_training_outputs=True), y, teacher(x))
    parts["loss"].backward()
    for prefix in ("shared_student", "specific_students.0", "specific_students.3", "fusion", "projection",
                   "denoisers.0", "denoisers.3", "decoder"):
        grads = [g for n, g in _named_grads(net).items() if n.startswith(prefix + ".")]
        assert grads and all(g is not None for g in grads), prefix
        assert any(float(g.abs().sum()) > 0 for g in grads), prefix
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    optim.step()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


def test_teacher_is_frozen_in_train_mode():
    torch.manual_seed(0)
    teacher = DINOv3Teacher(arch="tiny", random_init=True)
    x = torch.randn(2, 2, 32, 32)
    ref = teacher(x)
    wrapper = torch.nn.ModuleDict({"teacher": teacher})
    wrapper.train()  # what MONAI's trainer does to the whole tree
    assert not teacher.training and not teacher.model.training
    assert torch.equal(teacher(x), ref)
    assert torch.equal(teacher(x), ref)  # no RoPE jitter between calls
    assert not any(p.requires_grad for p in teacher.parameters())


def test_teacher_preprocessing_is_per_slice():
    teacher = DINOv3Teacher(arch="tiny", random_init=True)
    x = torch.rand(1, 2, 32, 32)
    scaled = x.clone()
    scaled[:, 1] = scaled[:, 1] * 50 + 7  # an affine intensity change of one modality leaves its tokens unchanged
    a, b = teacher(x), teacher(scaled)
    assert torch.allclose(a, b, atol=1e-4)


def _meta_layout(timm_state: dict) -> dict:
    """timm DINOv3 keys -> the key layout of Meta's original release (what its .pth files contain)."""
    meta = {}
    for k, v in timm_state.items():
        k = k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma").replace("reg_token", "storage_tokens")
        meta[k] = v
    dim = timm_state["cls_token"].shape[-1]
    meta["mask_token"] = torch.zeros(1, dim)
    meta["rope_embed.periods"] = torch.ones(dim // 4 // 2)
    return meta


def test_teacher_loads_hf_timm_and_meta_layouts(tmp_path, monkeypatch):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 32, 32)
    hf = DINOv3Teacher(arch="tiny", random_init=True)
    hf.model.save_pretrained(tmp_path / "hf")
    assert torch.allclose(DINOv3Teacher(tmp_path / "hf", arch="tiny")(x), hf(x), atol=1e-6)

    timm_model = build_timm_teacher_model("tiny")
    ref = DINOv3Teacher(arch="tiny", random_init=True, backend="timm")
    ref.model.load_state_dict(timm_model.state_dict())
    save_file(timm_model.state_dict(), str(tmp_path / "timm.safetensors"))
    torch.save(_meta_layout(timm_model.state_dict()), tmp_path / "meta.pth")
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the teacher tried to reach the network (a weights download)")

    for method in ("connect", "connect_ex"):  # any download, through any library, opens a socket
        monkeypatch.setattr(socket.socket, method, no_network)
    for name in ("timm.safetensors", "meta.pth"):
        loaded = DINOv3Teacher(tmp_path / name, arch="tiny")
        assert loaded.backend == "timm"
        assert torch.allclose(loaded(x), ref(x), atol=1e-5), name


def test_teacher_path_errors(tmp_path):
    with pytest.raises(ValueError, match="teacher_weights"):
        DINOv3Teacher(arch="vitb16")
    with pytest.raises(ValueError, match=r"not found at .*nowhere.*teacher_weights"):
        DINOv3Teacher(tmp_path / "nowhere", arch="vitb16")
    hf = DINOv3Teacher(arch="tiny", random_init=True)
    hf.model.save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match="teacher_arch"):
        DINOv3Teacher(tmp_path / "hf", arch="vits16")  # width 32 checkpoint named as ViT-S (384)
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth"):
        DINOv3Teacher(tmp_path / "bad.pth", arch="tiny")
    with pytest.raises(ValueError, match="teacher_arch"):
        DINOv3Teacher(arch="vit_unknown", random_init=True)
    for missing in ("", str(tmp_path / "nowhere.pth")):  # timm would fall back to its hub for an empty file
        with pytest.raises(ValueError, match="teacher_weights"):
            build_timm_teacher_model("vitb16", weights_file=missing)


def test_schedule_noising_matches_closed_form():
    net = make_net()
    u0, noise = torch.randn(3, 4, 32, 2, 2), torch.randn(3, 4, 32, 2, 2)
    t = torch.tensor([1, 500, 999])
    abar = torch.cumprod(1 - torch.linspace(1e-4, 2e-2, 1000), 0)  # MONAI's linear_beta defaults
    expected = abar[t].sqrt().view(3, 1, 1, 1, 1) * u0 + (1 - abar[t]).sqrt().view(3, 1, 1, 1, 1) * noise
    assert torch.allclose(net.scheduler.add_noise(u0, noise, t), expected, atol=1e-6)
    x = torch.randn(3, 4, 32, 32)
    out = net(x, return_training_outputs=True, timesteps=t, noise=noise)
    assert torch.allclose(out["noised"], abar[t].sqrt().view(3, 1, 1, 1, 1) * out["u0"]
                          + (1 - abar[t]).sqrt().view(3, 1, 1, 1, 1) * noise, atol=1e-5)


@pytest.mark.parametrize("full_resolution", [0, 8])
def test_modality_mask_removes_absent_modality(full_resolution):
    torch.manual_seed(0)
    net = make_net(decoder_full_resolution=full_resolution).eval()
    x = torch.randn(2, 4, 32, 32)
    mask = net.modality_mask_for(["t1", "t2", "flair"], batch_size=2)
    assert mask.tolist() == [[1, 0, 1, 1]] * 2
    x2 = x.clone()
    x2[:, 1] = torch.randn(2, 32, 32) * 10
    with torch.no_grad():
        assert torch.allclose(net(x, mask), net(x2, mask), atol=1e-5)
        assert not torch.allclose(net(x), net(x2), atol=1e-3)
    with pytest.raises(ValueError, match="Unknown modality"):
        net.modality_mask_for(["t1", "pd"])
    with pytest.raises(ValueError, match="at least one"):
        net(x, torch.zeros(2, 4))


def test_trace_export_matches_eager(tmp_path):
    torch.manual_seed(0)
    net = make_net().eval()
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(net, x, check_trace=False)
        traced.save(str(tmp_path / "model.ts"))
        loaded = torch.jit.load(str(tmp_path / "model.ts"))
        assert torch.allclose(loaded(x), net(x), atol=1e-5)


def test_bad_input_is_refused():
    net = make_net().eval()
    with pytest.raises(ValueError, match="expects 4 modalities"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible by 16"):
        net(torch.randn(1, 4, 40, 32))
    bad = torch.randn(1, 4, 32, 32)
    bad[0, 2, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        net(bad)
    bad[0, 2, 3, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        net(bad)
    with pytest.raises(ValueError, match="modality names"):
        make_net(modalities=["T1 weighted"])
    with pytest.raises(ValueError, match="seg_timestep"):
        make_net(seg_timestep=0)
    with pytest.raises(ValueError, match="decoder"):
        make_net(decoder="unet")
    with pytest.raises(ValueError, match="decoder_full_resolution"):
        make_net(decoder="mlp", decoder_full_resolution=8)
    loss_fn = DiffMedLoss(num_modalities=4, teacher_dim=64)
    out = net(torch.randn(1, 4, 32, 32), return_training_outputs=True)
    with pytest.raises(ValueError, match="teacher_dim"):
        loss_fn(out, torch.zeros(1, 1, 32, 32, dtype=torch.long), torch.randn(1, 4, 64, 2, 2))


def test_position_embedding_equals_monais():
    from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding

    from diffmed_monai.networks.denoiser import sincos_position_embedding

    for h, w, width in ((4, 4, 32), (16, 12, 256), (3, 5, 8)):
        assert torch.equal(sincos_position_embedding(h, w, width), build_sincos_position_embedding([h, w], width, 2))


def test_segmentation_loss_equals_monais_dice_ce_values_and_gradients():
    from monai.losses import DiceCELoss

    from diffmed_monai.losses import SoftmaxDiceCELoss

    torch.manual_seed(0)
    x, y = torch.randn(2, 4, 16, 12, requires_grad=True), torch.randint(0, 4, (2, 1, 16, 12))
    ref = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.7, lambda_ce=1.3)(x, y)
    got = SoftmaxDiceCELoss(lambda_dice=0.7, lambda_ce=1.3)(x, y)
    assert torch.equal(got, ref)
    assert torch.equal(torch.autograd.grad(got, x)[0], torch.autograd.grad(ref, x)[0])


def test_training_forward_and_loss_trace_as_one_graph_without_breaks():
    """The network's training forward plus the total loss, with the modality mask as data (dropout as a mask, no
    branch on its values): ``torch._dynamo.explain`` finds one graph and no break (no host synchronisation, no
    data-dependent control flow), so ``torch.compile(fullgraph=True)`` and CUDA graphs can take the whole step."""
    torch.manual_seed(0)
    net = make_net().train()
    loss = DiffMedLoss(num_modalities=4, teacher_dim=TINY_NET["teacher_dim"]).train()
    x, y = torch.randn(2, 4, 32, 32), torch.randint(0, 4, (2, 1, 32, 32))
    tokens, mask = torch.randn(2, 4, TINY_NET["teacher_dim"], 2, 2), torch.tensor([[1.0, 0, 1, 1], [1, 1, 1, 1]])

    def step(x, y, tokens, mask):
        return loss(net(x, modality_mask=mask, return_training_outputs=True), y, tokens, mask)["loss"]

    explained = torch._dynamo.explain(step)(x, y, tokens, mask)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def _step_outputs_and_grads(net, x, mask, t, noise):
    out = net(x, mask, return_training_outputs=True, timesteps=t, noise=noise)
    sum((out[k].float() ** 2).mean() for k in ("pred", "denoised", "denoised_noisy", "u0")).backward()
    return out, _named_grads(net)


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_batched_students_and_denoisers_equal_the_modules_called_in_turn(use_checkpoint):
    """The stacked specific students and denoisers (one call each, both denoiser passes in one batch) give the
    outputs and gradients of the ``ModuleList`` path, with the same ``state_dict`` keys (loads both ways); with
    ``use_checkpoint`` against the path without it."""
    torch.manual_seed(0)
    old = make_net(batched=False).train()
    new = make_net(batched=True, use_checkpoint=use_checkpoint).train()
    assert isinstance(new.specific_students, ModalityStack) and isinstance(new.denoisers, ModalityStack)
    assert new.state_dict().keys() == old.state_dict().keys()
    new.load_state_dict(old.state_dict())
    assert all(torch.equal(v, new.state_dict()[k]) for k, v in old.state_dict().items())
    x, mask = torch.randn(2, 4, 32, 32), torch.tensor([[1.0, 0, 1, 1], [1, 1, 1, 1]])
    t, noise = torch.tensor([5, 700]), torch.randn(2, 4, TINY_NET["teacher_dim"], 2, 2)
    (ref, ref_grads), (got, grads) = (_step_outputs_and_grads(n, x, mask, t, noise) for n in (old, new))
    for key in ("pred", "u0", "denoised", "denoised_noisy"):
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5, msg=key)
    assert grads.keys() == ref_grads.keys()
    for name, ref_grad in ref_grads.items():
        torch.testing.assert_close(grads[name], ref_grad, rtol=1e-4, atol=1e-6, msg=name)
    assert any(float(grads[f"specific_students.{i}.swin.patch_embed.proj.weight"].abs().sum()) > 0 for i in range(4))
    old.load_state_dict(new.state_dict())  # and back: the batched network's checkpoint loads into the ModuleList one
    with torch.no_grad():
        torch.testing.assert_close(new.eval()(x), old.eval()(x), rtol=1e-5, atol=1e-5)


def test_shared_student_checkpointing_gives_the_same_gradients():
    """``use_checkpoint`` (MONAI's per-block checkpointing in the shared student and the fusion, the stacked call
    of the specific students): the same gradients as without it."""
    torch.manual_seed(0)
    plain, ckpt = make_net().train(), make_net(use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.shared_student.swin.layers1[0].blocks[0].use_checkpoint and ckpt.specific_students.checkpoint
    x, mask = torch.randn(2, 4, 32, 32), torch.ones(2, 4)
    t, noise = torch.tensor([3, 50]), torch.randn(2, 4, TINY_NET["teacher_dim"], 2, 2)
    (_, ref), (_, got) = (_step_outputs_and_grads(n, x, mask, t, noise) for n in (plain, ckpt))
    for name, g in ref.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_stacked_modules_run_concurrently_and_copy():
    """``functional_call`` swaps a module's tensors while it runs: each thread gets its own template, so concurrent
    calls (the CPU slice inferer's workers) give the single-thread result; the network deep-copies and pickles."""
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    net, x = make_net().eval(), torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        ref = net(x)
        with ThreadPoolExecutor(2) as pool:
            outs = list(pool.map(lambda _: net(x), range(4)))
        assert all(torch.equal(out, ref) for out in outs)
        assert torch.equal(copy.deepcopy(net)(x), ref)
