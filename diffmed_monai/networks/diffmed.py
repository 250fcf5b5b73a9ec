"""The assembled DiffMedDINOv3 student network (no teacher inside)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from ..utils import TOKEN_STRIDE
from .decoders import build_decoder
from .denoiser import TokenDenoiser
from .fusion import ModalityProjection, SwinFusion
from .stack import ModalityStack
from .students import SwinStudent

__all__ = ["DiffMedDINOv3"]

_MODALITY_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def _substitute_absent(feat: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Replace absent modalities' features by the mean over the present ones (ShaSpec-style).

    ``feat`` ``(B, M, ...)``, ``mask`` ``(B, M)`` with 1 for present. Returns ``(B, M, ...)``.
    """
    if mask is None:
        return feat
    m = mask.to(feat.dtype).view(*mask.shape, *([1] * (feat.ndim - 2)))
    mean_present = (feat * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
    return feat * m + mean_present * (1 - m)


class DiffMedDINOv3(nn.Module):
    """DiffMedDINOv3 inference network: shared + specific Swin students, fusion, diffusion denoisers, MLP decoder.

    Args:
        modalities: names of the M co-registered input channels, in channel order (e.g. t1, t1ce, t2, flair).
        num_classes: output classes, background included.
        teacher_dim: width d of the teacher tokens the denoisers reconstruct (384 ViT-S, 768 ViT-B, 1024 ViT-L).
        feature_size, depths, num_heads, window_size: Swin student size (stride-16 width C = 8 * feature_size).
        fusion_heads, fusion_depth: the Swin stage fusing shared and specific features.
        denoiser_width, denoiser_depth, denoiser_heads: the per-modality token denoiser.
        num_train_timesteps, schedule: the DDPM noise schedule (MONAI ``DDPMScheduler``).
        seg_timestep: t at which the clean student feature is denoised for the decoder (training and inference
            take this same deterministic path); must lie in the range training samples, ``[1, max_train_timestep]``.
        max_train_timestep: largest t sampled for the KD loss (default: ``num_train_timesteps - 1``).
        decoder: ``"mlp"`` (paper) or ``"mlp_multiscale"`` (also uses the stride-4/8 student maps).
        decoder_dim: decoder embedding width.
        decoder_full_resolution: channels of the ``mlp_multiscale`` decoder's full-resolution path, a residual
            convolution block on the input slices whose features refine the upsampled decoder map (0: off, the
            decoder sees stride 4 at its finest). Absent modalities enter it as zero channels.
        use_checkpoint: activation checkpointing of the Swin students and the fusion stage: MONAI's
            ``use_checkpoint`` (each block's activations recomputed in backward instead of kept) in the shared
            student and the fusion, and the stacked specific students' call as a whole
            (:class:`~.stack.ModalityStack`); the same values and gradients, less memory, more compute. Config key
            ``network_def#use_checkpoint``.
        batched: the M modality-specific students, and the M denoisers, stored as stacked weights and run as one
            call each (:class:`~.stack.ModalityStack`), both denoiser passes (the deterministic ``seg_timestep`` pass
            and the noisy one) in one doubled batch: fewer, larger kernels. The same ``state_dict`` keys, values and
            gradients as ``False`` (a ``ModuleList`` of modules called in turn; tests compare the two).
        check_inputs: validate shapes at each call, and in eval mode finiteness too (a host sync; training
            data is checked before training starts); skipped while tracing or compiling.
        use_flash_attention: MONAI's fused (``scaled_dot_product_attention``) window attention in the students and
            the fusion stage whenever no gradient is recorded (inference, validation); same parameters and results
            (to fp tolerance). On in the shipped configs (its speed: ``docs/benchmarks.md``).

    Forward input: ``image`` ``(B, M, H, W)``, H and W multiples of 16; optional ``modality_mask`` ``(B, M)``
    (1 present, 0 absent: the absent branch is replaced by the mean of the present modalities' features).
    Output: ``(B, num_classes, H, W)`` logits, or with ``return_training_outputs=True`` a dict (see
    :meth:`forward`).
    """

    stride = TOKEN_STRIDE

    def __init__(
        self,
        modalities: Sequence[str],
        num_classes: int,
        teacher_dim: int = 768,
        feature_size: int = 48,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 8,
        fusion_heads: int = 8,
        fusion_depth: int = 2,
        denoiser_width: int = 256,
        denoiser_depth: int = 2,
        denoiser_heads: int = 4,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        seg_timestep: int = 100,
        max_train_timestep: int | None = None,
        decoder: str = "mlp_multiscale",
        decoder_dim: int = 256,
        decoder_full_resolution: int = 0,
        drop_path_rate: float = 0.0,
        use_checkpoint: bool = False,
        check_inputs: bool = True,
        use_flash_attention: bool = False,
        batched: bool = True,
    ) -> None:
        super().__init__()
        modalities = [str(m) for m in modalities]
        if not modalities:
            raise ValueError("`network_def#modalities` is empty: give at least one modality name.")
        bad = [m for m in modalities if not _MODALITY_NAME.match(m)]
        if bad:
            raise ValueError(f"Invalid modality names {bad} in `network_def#modalities`: use lower-case names like 't1'.")
        if len(set(modalities)) != len(modalities):
            raise ValueError(f"Duplicate names in `network_def#modalities`: {modalities}.")
        if num_classes < 2:
            raise ValueError(f"`network_def#num_classes` must be >= 2 (background included), got {num_classes}.")
        self.modalities = modalities
        self.num_modalities = len(modalities)
        self.num_classes = num_classes
        self.teacher_dim = teacher_dim
        self.check_inputs = check_inputs
        self.batched = bool(batched)
        self.max_train_timestep = num_train_timesteps - 1 if max_train_timestep is None else int(max_train_timestep)
        if not 1 <= seg_timestep <= self.max_train_timestep < num_train_timesteps:
            raise ValueError(
                f"`network_def#seg_timestep`={seg_timestep} must lie in the trained range "
                f"[1, max_train_timestep={self.max_train_timestep}] with max_train_timestep < num_train_timesteps."
            )
        self.seg_timestep = int(seg_timestep)

        student_kw = dict(
            feature_size=feature_size, depths=depths, num_heads=num_heads, window_size=window_size,
            drop_path_rate=drop_path_rate, use_checkpoint=use_checkpoint, use_flash_attention=use_flash_attention,
        )
        self.shared_student = SwinStudent(**student_kw)
        # stacked students are checkpointed as one call (MONAI's per-block checkpointing cannot run under vmap)
        students = [SwinStudent(**{**student_kw, "use_checkpoint": use_checkpoint and not self.batched})
                    for _ in modalities]
        self.specific_students = (
            ModalityStack(students, checkpoint=use_checkpoint) if self.batched else nn.ModuleList(students)
        )
        c4, c8, c16 = self.shared_student.out_channels
        self.fusion = SwinFusion(
            c16, num_heads=fusion_heads, window_size=window_size, depth=fusion_depth,
            use_flash_attention=use_flash_attention, use_checkpoint=use_checkpoint,
        )
        self.projection = ModalityProjection(self.num_modalities, c16, teacher_dim)
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, schedule=schedule)
        self.register_buffer("sqrt_alpha_bar", self.scheduler.alphas_cumprod.float().sqrt(), persistent=False)
        denoisers = [
            TokenDenoiser(teacher_dim, width=denoiser_width, depth=denoiser_depth, num_heads=denoiser_heads)
            for _ in modalities
        ]
        self.denoisers = ModalityStack(denoisers) if self.batched else nn.ModuleList(denoisers)
        m = self.num_modalities
        self.decoder_name = decoder
        self.decoder = build_decoder(
            decoder, in_channels=m * teacher_dim, num_classes=num_classes, skip_channels=(m * c8, m * c4),
            embed_dim=decoder_dim, image_channels=m, full_resolution_channels=decoder_full_resolution,
        )

    # ------------------------------------------------------------------ helpers
    def modality_mask_for(self, present: Sequence[str], batch_size: int = 1) -> torch.Tensor:
        """``(batch_size, M)`` mask with 1 for each modality named in ``present``."""
        unknown = [p for p in present if p not in self.modalities]
        if unknown:
            raise ValueError(f"Unknown modality names {unknown}; this network has `modalities`={self.modalities}.")
        if not present:
            raise ValueError("At least one modality must be present.")
        row = torch.tensor([float(m in present) for m in self.modalities])
        return row.expand(batch_size, -1).clone()

    def _validate(self, image: torch.Tensor, modality_mask: torch.Tensor | None) -> None:
        if image.ndim != 4:
            raise ValueError(
                f"`image` must be (B, M, H, W) 2D slices, got shape {tuple(image.shape)}; run volumes through "
                "SliceInferer (config key `inferer`)."
            )
        if image.shape[1] != self.num_modalities:
            raise ValueError(
                f"`image` has {image.shape[1]} channels but the network expects {self.num_modalities} modalities "
                f"{self.modalities} (config key `modalities`)."
            )
        h, w = image.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"`image` spatial size {h}x{w} is not divisible by {self.stride}; pad or crop slices to a multiple "
                "of 16 (config key `roi_size`)."
            )
        if not self.training and not bool(torch.isfinite(image).all()):  # training data is checked up front
            raise ValueError("`image` contains NaN or inf values; check the input volumes and the normalisation.")
        if modality_mask is not None:
            if tuple(modality_mask.shape) != (image.shape[0], self.num_modalities):
                raise ValueError(
                    f"`modality_mask` must be (B, M)=({image.shape[0]}, {self.num_modalities}), "
                    f"got {tuple(modality_mask.shape)}."
                )
            if not self.training and not bool((modality_mask.sum(1) > 0).all()):
                raise ValueError("`modality_mask` marks every modality of a sample absent; keep at least one.")

    def encode(self, image: torch.Tensor, modality_mask: torch.Tensor | None = None):
        """Students + fusion + projection.

        Returns ``u0`` ``(B, M, d, h, w)`` (standardised fused features) and the skips
        ``[(B, M*c8, H/8, W/8), (B, M*c4, H/4, W/4)]`` (shared + specific, absent modalities substituted).
        """
        b, m, h, w = image.shape
        a4, a8, a16 = self.shared_student(image.reshape(b * m, 1, h, w))  # one batched call for all modalities
        if self.batched:  # (B, M, C, h, w) per map: modality i through student i, one call
            spec = self.specific_students(image.unsqueeze(2), in_dim=1, out_dim=1)
            h4, h8, h16 = (s.flatten(0, 1) for s in spec)
        else:
            spec = [student(image[:, i : i + 1]) for i, student in enumerate(self.specific_students)]
            h4, h8, h16 = (torch.stack([s[k] for s in spec], dim=1).flatten(0, 1) for k in range(3))
        fused = self.fusion(a16, h16)  # (B*M, C, h, w)
        u0 = self.projection(fused.unflatten(0, (b, m)))
        u0 = _substitute_absent(u0, modality_mask)
        skips = [
            _substitute_absent((a + s).unflatten(0, (b, m)), modality_mask).flatten(1, 2) for a, s in ((a8, h8), (a4, h4))
        ]
        return u0, skips

    def denoise(self, u: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-modality denoisers: ``u`` ``(B, M, d, h, w)``, ``t`` ``(B,)`` -> x0 estimate ``(B, M, d, h, w)``."""
        sab = self.sqrt_alpha_bar[t]
        if self.batched:  # modality i through denoiser i, one call
            return self.denoisers(u, t, sab, in_dim=1, out_dim=1)
        return torch.stack([den(u[:, i], t, sab) for i, den in enumerate(self.denoisers)], dim=1)

    def decode(
        self, denoised: torch.Tensor, skips, image: torch.Tensor, modality_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, M, d, h, w)`` denoised features (+ skips, + the ``(B, M, H, W)`` input slices for the
        full-resolution path, absent modalities zeroed) -> ``(B, n_class, H, W)`` logits."""
        if modality_mask is not None:
            image = image * modality_mask.to(image.dtype)[:, :, None, None]
        return self.decoder(denoised.flatten(1, 2), skips, image.shape[-2:], image=image)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        image: torch.Tensor,
        modality_mask: torch.Tensor | None = None,
        return_training_outputs: bool = False,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ):
        """Segment a batch of slices.

        With ``return_training_outputs=True`` the dict holds ``pred`` (logits), ``u0`` (B, M, d, h, w) fused
        student features, ``timesteps`` (B,) sampled in ``[1, max_train_timestep]`` (or given), ``noised``
        u_t (DDPM forward process), ``denoised_noisy`` = D(u_t, t) and ``denoised`` = D(u0, seg_timestep), the
        feature the decoder consumes. ``noise`` (like ``u0``) and ``timesteps`` may be given for reproducibility.
        """
        if self.check_inputs and not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self._validate(image, modality_mask)
        b = image.shape[0]
        u0, skips = self.encode(image, modality_mask)
        t_seg = torch.full((b,), self.seg_timestep, dtype=torch.long, device=image.device)
        if not return_training_outputs:
            return self.decode(self.denoise(u0, t_seg), skips, image, modality_mask)
        if timesteps is None:
            timesteps = torch.randint(1, self.max_train_timestep + 1, (b,), device=image.device)
        if noise is None:
            noise = torch.randn_like(u0, dtype=torch.float32)
        noised = self.scheduler.add_noise(u0.float(), noise, timesteps)
        if self.batched:  # both passes of every denoiser in one call: the batch doubled
            both = self.denoise(torch.cat([u0.to(noised.dtype), noised]), torch.cat([t_seg, timesteps]))
            denoised, denoised_noisy = both.split(b)
        else:
            denoised, denoised_noisy = self.denoise(u0, t_seg), self.denoise(noised, timesteps)
        pred = self.decode(denoised, skips, image, modality_mask)
        return {
            "pred": pred,
            "u0": u0,
            "timesteps": timesteps,
            "noised": noised,
            "denoised": denoised,
            "denoised_noisy": denoised_noisy,
        }
