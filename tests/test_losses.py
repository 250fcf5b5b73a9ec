"""DiffusionKDLoss / DiffMedLoss behaviour and a one-batch overfit run."""

from __future__ import annotations

import torch

from diffmed_monai.losses import DiffMedLoss, DiffusionKDLoss
from diffmed_monai.networks import DiffMedDINOv3, DINOv3Teacher

from .conftest import TINY_NET


def test_kd_zero_when_equal_positive_otherwise():
    z = torch.randn(2, 4, 16, 3, 3)
    kd = DiffusionKDLoss(4, 16, standardize_teacher=False)
    parts = kd(z.clone(), z)
    assert float(parts["kd"]) < 1e-6 and float(parts["mse"]) < 1e-8 and abs(float(parts["kl"])) < 1e-6
    assert float(kd(z + 0.1 * torch.randn_like(z), z)["kd"]) > 1e-3
    # summed over modalities (Eq. 9): one modality off by delta contributes the whole delta^2
    shifted = z.clone()
    shifted[:, 2] += 0.5
    assert torch.isclose(kd(shifted, z)["mse"], torch.tensor(0.25), atol=1e-5)


def test_kd_standardisation_uses_ema_statistics():
    kd = DiffusionKDLoss(2, 8, standardize_teacher=True, ema_momentum=0.5)
    z = torch.randn(4, 2, 8, 5, 5) * 7 + 3
    target = kd.standardize(z)  # first batch initialises the statistics
    assert torch.allclose(target.mean(dim=(0, 3, 4)), torch.zeros(2, 8), atol=1e-4)
    assert torch.allclose(target.std(dim=(0, 3, 4), unbiased=False), torch.ones(2, 8), atol=1e-3)
    assert float(kd(target, z)["kd"]) < 1e-5  # denoised == standardised teacher -> zero (stats unchanged by z again)
    kd.standardize(z * 0 + 10)  # EMA moves half-way toward the new batch mean
    assert torch.allclose(kd.running_mean, (z.mean(dim=(0, 3, 4)) + 10) / 2, atol=1e-4)
    kd.eval()
    before = kd.running_mean.clone()
    kd.standardize(torch.randn(4, 2, 8, 5, 5))
    assert torch.equal(kd.running_mean, before)  # frozen in eval mode


def test_kd_mask_skips_absent_modalities():
    kd = DiffusionKDLoss(2, 8, standardize_teacher=False)
    z = torch.randn(2, 2, 8, 3, 3)
    wrong = z.clone()
    wrong[:, 1] += 3
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert float(kd(wrong, z, mask)["kd"]) < 1e-6


def test_total_loss_parts():
    net = DiffMedDINOv3(modalities=["a", "b"], num_classes=3, **TINY_NET)
    loss_fn = DiffMedLoss(2, 32, lambda_kd=0.5)
    x, y = torch.randn(2, 2, 32, 32), torch.randint(0, 3, (2, 1, 32, 32))
    parts = loss_fn(net(x, return_training_outputs=True), y, torch.randn(2, 2, 32, 2, 2))
    assert set(parts) == {"loss", "loss_seg", "loss_kd", "loss_mse", "loss_kl"}
    assert torch.isclose(parts["loss"], 0.5 * parts["loss_kd"] + parts["loss_seg"])


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    teacher = DINOv3Teacher(arch="tiny", random_init=True)
    net = DiffMedDINOv3(modalities=["t1", "t2"], num_classes=3, **TINY_NET)
    loss_fn = DiffMedLoss(2, 32)
    x = torch.randn(2, 2, 32, 32)
    y = torch.zeros(2, 1, 32, 32, dtype=torch.long)
    y[:, :, 8:20, 8:20] = 1
    y[:, :, 12:16, 12:16] = 2
    target = teacher(x)
    optim = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(120):
        optim.zero_grad()
        parts = loss_fn(net(x, return_training_outputs=True), y, target)
        parts["loss"].backward()
        optim.step()
        losses.append(float(parts["loss"]))
    first, last = losses[0], sum(losses[-5:]) / 5
    assert last < 0.2 * first, (first, last)
