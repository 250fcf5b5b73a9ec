"""Diffusion knowledge-distillation loss: MSE + KL to the (standardised) teacher tokens (Eq. 8-9)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["DiffusionKDLoss"]


class DiffusionKDLoss(nn.Module):
    """Sum over modalities of ``MSE(u0_hat_m, Z_m) + lambda_kl * tau^2 * KL(softmax(Z_m/tau) || softmax(u0_hat_m/tau))``.

    The KL is taken over channels for every token and averaged over tokens; the MSE is averaged over tokens and
    channels. With ``standardize_teacher`` (UNIC) each modality's teacher tokens are standardised per channel
    with running (EMA) statistics, updated in training mode (all-reduced across DDP ranks), before both terms.

    Args:
        num_modalities: M. teacher_dim: d.
        lambda_kl: weight of the KL term. tau: softmax temperature.
        standardize_teacher: use EMA standardisation (off reproduces the paper literally).
        ema_momentum: weight of the new batch in the EMA update.

    Forward: ``denoised`` and ``teacher`` ``(B, M, d, h, w)``; optional ``modality_mask`` ``(B, M)`` (absent
    modalities give no KD term). Returns a dict with ``kd`` (total), ``mse`` and ``kl`` (sums over modalities).
    """

    def __init__(
        self,
        num_modalities: int,
        teacher_dim: int,
        lambda_kl: float = 1.0,
        tau: float = 1.0,
        standardize_teacher: bool = True,
        ema_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if tau <= 0:
            raise ValueError(f"`kd_loss#tau` must be positive, got {tau}.")
        self.num_modalities = num_modalities
        self.teacher_dim = teacher_dim
        self.lambda_kl = lambda_kl
        self.tau = tau
        self.standardize_teacher = standardize_teacher
        self.ema_momentum = ema_momentum
        self.register_buffer("running_mean", torch.zeros(num_modalities, teacher_dim))
        self.register_buffer("running_var", torch.ones(num_modalities, teacher_dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def standardize(self, teacher: torch.Tensor) -> torch.Tensor:
        """``(B, M, d, h, w)`` teacher tokens -> standardised with the (updated, in training) EMA statistics."""
        teacher = teacher.float()
        if self.training:
            mean = teacher.mean(dim=(0, 3, 4))  # (M, d)
            sq = teacher.pow(2).mean(dim=(0, 3, 4))
            if dist.is_available() and dist.is_initialized():
                stats = torch.stack([mean, sq])
                dist.all_reduce(stats)
                mean, sq = stats / dist.get_world_size()
            var = (sq - mean.pow(2)).clamp_min(0)
            # first batch: take its statistics; later: EMA. No host sync (the flag stays on the device).
            weight = torch.where(self.initialized, self.ema_momentum, 1.0).to(mean)
            self.running_mean.lerp_(mean, weight)
            self.running_var.lerp_(var, weight)
            self.initialized.fill_(True)
        mean = self.running_mean[None, :, :, None, None]
        std = self.running_var.clamp_min(1e-6).sqrt()[None, :, :, None, None]
        return (teacher - mean) / std

    def forward(
        self, denoised: torch.Tensor, teacher: torch.Tensor, modality_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        self.check_shapes(denoised, teacher)
        target = self.standardize(teacher) if self.standardize_teacher else teacher.float()
        return self.distance(denoised, target, modality_mask)

    def check_shapes(self, denoised: torch.Tensor, teacher: torch.Tensor) -> None:
        if denoised.shape != teacher.shape:
            raise ValueError(
                f"Denoised student features {tuple(denoised.shape)} and teacher tokens {tuple(teacher.shape)} differ: "
                "`network_def#teacher_dim` must equal the teacher width and the teacher grid the student grid."
            )
        if denoised.shape[2] != self.teacher_dim or denoised.shape[1] != self.num_modalities:
            raise ValueError(
                f"KD loss built for M={self.num_modalities}, d={self.teacher_dim} got features "
                f"{tuple(denoised.shape)}; check `loss#teacher_dim` / `loss#num_modalities`."
            )

    def distance(
        self, denoised: torch.Tensor, target: torch.Tensor, modality_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """MSE + KL between ``denoised`` and an already standardised ``target``, both ``(B, M, d, h, w)``."""
        student = denoised.float()
        mse = (student - target).pow(2).mean(dim=(2, 3, 4))  # (B, M)
        log_p_s = F.log_softmax(student / self.tau, dim=2)
        log_p_t = F.log_softmax(target / self.tau, dim=2)
        kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=2).mean(dim=(2, 3))  # (B, M)
        kl = kl * self.tau**2
        weight = torch.ones_like(mse) if modality_mask is None else modality_mask.to(mse.dtype)
        denom = weight.sum(0).clamp_min(1.0)  # per-modality mean over the samples where it is present
        mse_total = ((mse * weight).sum(0) / denom).sum()
        kl_total = ((kl * weight).sum(0) / denom).sum()
        return {"kd": mse_total + self.lambda_kl * kl_total, "mse": mse_total, "kl": kl_total}
