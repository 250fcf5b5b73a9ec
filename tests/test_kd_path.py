"""The knowledge-distillation path, piece by piece (docs/distillation.md, "Diagnosis of the KD path"): token-grid
alignment of teacher and students, the teacher's input normalisation, the per-modality per-channel standardisation,
where the KD gradient goes (students yes, decoder no), the timestep range that carries it, the deterministic
``seg_timestep`` path, the plain-regression mode, the direct feature term and the agreement signal."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffmed_monai.losses import DiffMedLoss, DiffusionKDLoss
from diffmed_monai.networks import DiffMedDINOv3, DINOv3Teacher

from .conftest import TINY_NET


def _net(seed: int = 0) -> DiffMedDINOv3:
    torch.manual_seed(seed)
    return DiffMedDINOv3(modalities=["a", "b"], num_classes=3, **TINY_NET)


def _strongest_pixel_block(output: torch.Tensor, wrt: torch.Tensor) -> tuple[int, int]:
    """(row, column) of the 16 x 16 block holding the input pixel with the largest gradient of ``|output|^2``."""
    (grad,) = torch.autograd.grad(output.pow(2).sum(), wrt)
    saliency = grad[0].abs().sum(0)  # (H, W)
    r, c = divmod(int(saliency.argmax()), saliency.shape[1])
    return r // 16, c // 16


@pytest.mark.parametrize("backend", ["hf", "timm"])
def test_teacher_tokens_and_student_stride16_map_cover_the_same_pixels(backend):
    """Token (i, j) of the teacher and of u0 both depend most on pixel block (i, j): the grids are aligned (a
    non-square slice, so rows and columns cannot be swapped)."""
    net = _net().eval()
    teacher = DINOv3Teacher(arch="tiny", random_init=True, backend=backend)
    x = torch.randn(1, 2, 64, 96)
    assert teacher(x).shape[-2:] == net.encode(x)[0].shape[-2:] == (4, 6)
    for i, j in [(0, 0), (1, 4), (3, 5), (2, 2)]:
        student_in = x.clone().requires_grad_(True)
        assert _strongest_pixel_block(net.encode(student_in)[0][0, 0, :, i, j], student_in) == (i, j)
        # the teacher's saliency is taken after its per-slice min-max normalisation (whose min and max pixels would
        # otherwise dominate every token's gradient)
        pixels = teacher.normalise(x[0]).detach().requires_grad_(True)  # (M, 3, H, W)
        tokens = (teacher.model(pixel_values=pixels).last_hidden_state if backend == "hf"
                  else teacher.model.forward_features(pixels))
        token = tokens[0, teacher.num_prefix_tokens + i * 6 + j]
        assert _strongest_pixel_block(token, pixels) == (i, j)


def test_teacher_input_is_min_max_scaled_grey_rgb_with_the_pretrained_mean_std():
    teacher = DINOv3Teacher(arch="tiny", random_init=True)
    x = torch.randn(3, 32, 32) * 5 + 2
    pixels = teacher.normalise(x)  # (3 slices, 3 channels, H, W)
    rgb01 = pixels * teacher.std + teacher.mean
    assert torch.allclose(rgb01[:, 0], rgb01[:, 1], atol=1e-6) and torch.allclose(rgb01[:, 0], rgb01[:, 2], atol=1e-6)
    assert torch.allclose(rgb01.amin(dim=(1, 2, 3)), torch.zeros(3), atol=1e-6)
    assert torch.allclose(rgb01.amax(dim=(1, 2, 3)), torch.ones(3), atol=1e-6)
    assert torch.allclose(teacher.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]), atol=1e-3)  # ImageNet


def test_standardisation_statistics_are_per_modality_and_channel():
    kd = DiffusionKDLoss(2, 4, ema_momentum=0.1)
    z = torch.randn(8, 2, 4, 3, 3)
    z[:, 1] = z[:, 1] * 10 + 50
    z[:, 0, 2] += 7  # one channel of one modality shifted
    target = kd.standardize(z)
    assert torch.allclose(target.mean(dim=(0, 3, 4)), torch.zeros(2, 4), atol=1e-4)
    assert torch.allclose(target.std(dim=(0, 3, 4), unbiased=False), torch.ones(2, 4), atol=1e-3)
    before = kd.running_mean[0].clone()
    z2 = z.clone()
    z2[:, 1] += 100  # only modality 1 moves
    kd.standardize(z2)
    assert torch.allclose(kd.running_mean[0], before)
    assert torch.allclose(kd.running_mean[1], z[:, 1].mean(dim=(0, 2, 3)) + 10, atol=1e-3)  # EMA: 0.1 of the +100


def test_kl_is_the_tempered_kl_of_teacher_and_student_softmax():
    kd = DiffusionKDLoss(1, 6, tau=2.0, standardize_teacher=False)
    s, t = torch.randn(2, 1, 6, 2, 2), torch.randn(2, 1, 6, 2, 2)
    p_t, p_s = F.softmax(t / 2, dim=2), F.softmax(s / 2, dim=2)
    manual = (p_t * (p_t.log() - p_s.log())).sum(2).mean() * 4
    assert torch.isclose(kd(s, t)["kl"], manual, atol=1e-6)


def _parts(net, loss, x, teacher_tokens, y):
    out = net(x, return_training_outputs=True)
    return out, loss(out, y, teacher_tokens)


def _grad_norm(loss_value, params) -> float:
    grads = torch.autograd.grad(loss_value, params, retain_graph=True, allow_unused=True)
    return sum(float(g.pow(2).sum()) for g in grads if g is not None) ** 0.5


def test_kd_gradient_reaches_the_students_not_the_decoder():
    net = _net()
    x, y = torch.randn(2, 2, 32, 32), torch.randint(0, 3, (2, 1, 32, 32))
    tokens = torch.randn(2, 2, 32, 2, 2)
    groups = {
        "students": [p for n, p in net.named_parameters() if "student" in n],
        "projection": list(net.projection.parameters()),
        "denoisers": list(net.denoisers.parameters()),
        "decoder": list(net.decoder.parameters()),
    }
    for mode in ("diffusion", "regression"):
        _, parts = _parts(net, DiffMedLoss(2, 32, kd_mode=mode), x, tokens, y)
        norms = {k: _grad_norm(parts["loss_kd"], ps) for k, ps in groups.items()}
        assert norms["students"] > 0 and norms["projection"] > 0 and norms["decoder"] == 0, (mode, norms)
        assert (norms["denoisers"] > 0) == (mode == "diffusion"), (mode, norms)  # regression: no denoiser in KD


def test_noisy_path_gives_u0_almost_no_gradient_at_large_timesteps():
    """D(u_t, t) depends on u0 through sqrt(abar_t) u0: with the linear schedule, t near 1000 carries ~no KD signal
    to the students (the measured reason for ``lambda_feature`` / ``max_train_timestep``)."""
    net = _net()
    kd = DiffusionKDLoss(2, 32, standardize_teacher=False)
    u0 = torch.randn(2, 2, 32, 3, 3, requires_grad=True)
    target, noise = torch.randn(2, 2, 32, 3, 3), torch.randn(2, 2, 32, 3, 3)
    norms = {}
    for t in (1, 100, 999):
        ts = torch.full((2,), t)
        denoised = net.denoise(net.scheduler.add_noise(u0, noise, ts), ts)
        (grad,) = torch.autograd.grad(kd(denoised, target)["kd"], u0)
        norms[t] = float(grad.norm())
    assert norms[999] < 0.05 * norms[1] and norms[100] > 0.5 * norms[1], norms


def test_decoder_path_is_the_denoiser_at_seg_timestep():
    net = _net()
    x = torch.randn(2, 2, 32, 32)
    out = net(x, return_training_outputs=True)
    t_seg = torch.full((2,), net.seg_timestep)
    assert torch.allclose(out["denoised"], net.denoise(out["u0"], t_seg), atol=1e-5)
    assert 1 <= net.seg_timestep <= net.max_train_timestep


def test_regression_mode_and_feature_term_values():
    net = _net()
    x, y = torch.randn(2, 2, 32, 32), torch.randint(0, 3, (2, 1, 32, 32))
    tokens = torch.randn(2, 2, 32, 2, 2)
    torch.manual_seed(1)
    out = net(x, return_training_outputs=True)
    plain, regression, feature = (DiffMedLoss(2, 32, kd_mode=m, lambda_feature=f)
                                  for m, f in (("diffusion", 0.0), ("regression", 0.0), ("diffusion", 0.5)))
    p, r, f = (loss(out, y, tokens) for loss in (plain, regression, feature))
    target = regression.kd.standardize(tokens)  # every loss standardised with the same first-batch statistics
    assert torch.isclose(r["loss_kd"], regression.kd.distance(out["u0"], target)["kd"], atol=1e-6)
    assert torch.isclose(f["loss_kd"], p["loss_kd"] + 0.5 * r["loss_kd"], atol=1e-5)
    assert torch.isclose(r["loss_seg"], p["loss_seg"])
    with pytest.raises(ValueError, match="kd_mode"):
        DiffMedLoss(2, 32, kd_mode="denoise")


def test_agreement_is_the_mean_cosine_per_present_modality_and_resets():
    loss = DiffMedLoss(2, 8, modalities=["t1", "flair"])
    teacher = torch.randn(4, 2, 8, 2, 2) * 3 + 1
    target = loss.kd.standardize(teacher)
    loss.kd.eval()  # keep the statistics: the loss's own standardisation gives the same target
    outputs = {"pred": torch.randn(4, 3, 8, 8), "u0": -target, "denoised": target.clone(), "denoised_noisy": target}
    label = torch.zeros(4, 1, 8, 8, dtype=torch.long)
    mask = torch.tensor([[1.0, 0.0]] * 4)
    loss(outputs, label, teacher, mask)
    assert loss.agreement() == pytest.approx({"t1": 1.0})  # flair absent in every sample: left out
    assert loss.agreement() == {}  # reset
    loss(outputs, label, teacher)
    assert loss.agreement() == pytest.approx({"t1": 1.0, "flair": 1.0})
    regression = DiffMedLoss(2, 8, kd_mode="regression", modalities=["t1", "flair"])
    regression.kd.load_state_dict(loss.kd.state_dict())
    regression.kd.eval()
    regression(outputs, label, teacher)
    assert regression.agreement() == pytest.approx({"t1": -1.0, "flair": -1.0})  # tracks u0 in regression mode
    regression.eval()
    regression(outputs, label, teacher)
    assert regression.agreement() == {}  # evaluation calls are not training signal


def test_agreement_reaches_the_validator_metrics_and_the_progress_plot(tmp_path):
    from ignite.engine import Engine, Events

    from diffmed_monai.engines import KDAgreement, ProgressPlot

    loss = DiffMedLoss(2, 8, modalities=["t1", "flair"])
    teacher = torch.randn(2, 2, 8, 2, 2)
    outputs = {"pred": torch.randn(2, 3, 8, 8), "u0": torch.randn(2, 2, 8, 2, 2), "denoised_noisy": teacher}
    label = torch.zeros(2, 1, 8, 8, dtype=torch.long)

    def step(engine, batch):
        target = loss.kd.standardize(teacher) if engine.state.epoch > 1 else -loss.kd.standardize(teacher)
        loss.kd.eval()
        parts = loss({**outputs, "denoised": target}, label, teacher)  # cosine -1 in epoch 1, +1 after
        loss.kd.train()
        return {"loss": parts["loss"].detach()}

    trainer, validator = Engine(step), Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validator.run([0]))
    KDAgreement(loss, validator).attach(trainer)
    plot = ProgressPlot(str(tmp_path / "progress.png"), validator)
    plot.attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    assert validator.state.metrics["kd_cosine_t1"] == pytest.approx(1.0)
    assert plot.agreement["flair"] == [(1, pytest.approx(-1.0)), (2, pytest.approx(1.0))]
    assert (tmp_path / "progress.png").read_bytes().startswith(b"\x89PNG")
