"""Frozen DINOv3 ViT teacher loaded from a local path (never downloaded at run time)."""

from __future__ import annotations

import functools
import logging
import os

import torch
from torch import nn

from ..utils import TOKEN_STRIDE

__all__ = ["DINOv3Teacher", "TEACHER_ARCHS", "build_hf_teacher_model", "build_timm_teacher_model", "teacher_width"]

logger = logging.getLogger(__name__)

#: Config key ``teacher_arch`` -> timm model name. Sizes, register tokens and normalisation come from timm's
#: registry and pretrained config of that model. ``tiny`` is a random test/demo teacher: ViT-S shrunk by
#: :data:`TINY_TEACHER` (head_dim 16, a multiple of 4 as RoPE needs).
TEACHER_ARCHS: dict[str, str] = {
    "tiny": "vit_small_patch16_dinov3",
    "vits16": "vit_small_patch16_dinov3",
    "vits16plus": "vit_small_plus_patch16_dinov3",
    "vitb16": "vit_base_patch16_dinov3",
    "vitl16": "vit_large_patch16_dinov3",
    "vith16plus": "vit_huge_plus_patch16_dinov3",
}
TINY_TEACHER = dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0)


def _timm_name(arch: str) -> str:
    if arch not in TEACHER_ARCHS:
        raise ValueError(
            f"Unknown teacher architecture {arch!r} (config key `teacher_arch`); choose one of {sorted(TEACHER_ARCHS)}."
        )
    return TEACHER_ARCHS[arch]


def build_timm_teacher_model(arch: str = "tiny", weights_file: str | None = None) -> nn.Module:
    """A timm DINOv3 ViT; with ``weights_file`` the file goes through timm's own key conversion.

    timm's ``checkpoint_filter_fn`` converts Meta's original ``.pth`` layout (``storage_tokens``, ``ls1.gamma``,
    ``qkv.bias``...) and passes timm-layout checkpoints through, so both load via ``pretrained_cfg_overlay``.
    timm takes a set ``file`` before any hub or URL source, so only that local file is read; an empty or missing
    path is refused here, because timm would otherwise fall back to downloading.
    """
    import timm

    name = _timm_name(arch)
    if weights_file is not None and not os.path.isfile(os.fspath(weights_file)):
        raise ValueError(
            f"DINOv3 timm/Meta checkpoint {weights_file!r} is not a local file (config key `teacher_weights`); "
            "weights are never downloaded."
        )
    kwargs: dict = {"num_classes": 0, "dynamic_img_size": True, **(TINY_TEACHER if arch == "tiny" else {})}
    if weights_file is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": weights_file}, **kwargs)


@functools.lru_cache(maxsize=None)
def _timm_layout(arch: str) -> nn.Module:
    """The timm model of ``arch`` on the meta device: its sizes and pretrained config, no memory for weights."""
    with torch.device("meta"):
        return build_timm_teacher_model(arch)


def teacher_width(arch: str) -> int:
    """Token width d of ``teacher_arch`` (384 ViT-S, 768 ViT-B, 1024 ViT-L...), read from timm's registry."""
    return int(_timm_layout(arch).embed_dim)


def build_hf_teacher_model(arch: str = "tiny") -> nn.Module:
    """A randomly initialised transformers ``DINOv3ViTModel`` with the sizes timm registers for ``arch``."""
    from timm.layers import SwiGLU
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    layout = _timm_layout(arch)
    block = layout.blocks[0]
    gated = isinstance(block.mlp, SwiGLU)
    config = DINOv3ViTConfig(
        hidden_size=layout.embed_dim,
        intermediate_size=(block.mlp.fc1_x if gated else block.mlp.fc1).out_features,
        num_hidden_layers=len(layout.blocks),
        num_attention_heads=block.attn.num_heads,
        num_register_tokens=layout.num_prefix_tokens - 1,
        use_gated_mlp=gated,
        layerscale_value=1e-5,
        key_bias=False,
    )
    return DINOv3ViTModel(config)


class DINOv3Teacher(nn.Module):
    """Frozen DINOv3 ViT that maps every modality of a slice batch to its last-layer patch tokens.

    Args:
        weights_path: a Hugging Face ``DINOv3ViTModel`` folder (``config.json`` + weights), a timm checkpoint
            (``.pth``/``.safetensors`` with timm keys) or Meta's original ``.pth`` release. ``None`` is allowed only
            with ``random_init=True`` (tests, demo, benchmarks) and logs a warning that the teacher is untrained.
        arch: one of :data:`TEACHER_ARCHS`; the loaded weights must fit it.
        backend: ``"auto"`` (a folder is Hugging Face, a file is timm), ``"hf"`` or ``"timm"``; for random
            teachers ``auto`` means Hugging Face.
        random_init: build an untrained teacher of ``arch`` instead of loading weights.

    Input: ``(B, M, H, W)`` slices (any intensity scale), H and W multiples of 16.
    Output: ``(B, M, d, H/16, W/16)`` last-layer patch tokens (CLS and register tokens dropped).
    Each (slice, modality) is rescaled to [0, 1], repeated to 3 channels and normalised with the mean/std of timm's
    pretrained config for ``arch`` (the ImageNet statistics DINOv3 was trained with). All modalities of the batch
    go through the ViT in one call. The module is always in eval mode (``train()`` is overridden: DINOv3 jitters
    RoPE coordinates in train mode) and has no trainable parameters.
    """

    patch_size = TOKEN_STRIDE

    def __init__(
        self, weights_path: str | None = None, arch: str = "vitb16", backend: str = "auto", random_init: bool = False
    ) -> None:
        super().__init__()
        self.arch_name = arch
        expected_width = teacher_width(arch)
        if backend not in ("auto", "hf", "timm"):
            raise ValueError(f"teacher backend {backend!r} (config key `teacher#backend`) must be 'auto', 'hf' or 'timm'.")
        if weights_path is None:
            if not random_init:
                raise ValueError(
                    "No DINOv3 teacher weights given: set config key `teacher_weights` to a local Hugging Face "
                    "DINOv3ViTModel folder, a timm checkpoint or Meta's original .pth (weights are never downloaded), "
                    "or set `teacher_random_init` to true for an untrained teacher (tests and demo only)."
                )
            self.backend = "timm" if backend == "timm" else "hf"
            self.model = build_timm_teacher_model(arch) if self.backend == "timm" else build_hf_teacher_model(arch)
            logger.warning(
                "DINOv3 teacher %r is RANDOMLY INITIALISED (no weights loaded): fine for tests, the demo and "
                "benchmarks, meaningless for real distillation.", arch
            )
        else:
            weights_path = os.fspath(weights_path)
            if not os.path.exists(weights_path):
                raise ValueError(
                    f"DINOv3 teacher weights not found at {weights_path!r} (config key `teacher_weights`). "
                    "Point it to a local Hugging Face folder, a timm checkpoint or Meta's .pth; nothing is downloaded."
                )
            is_dir = os.path.isdir(weights_path)
            self.backend = ("hf" if is_dir else "timm") if backend == "auto" else backend
            if self.backend == "hf" and not is_dir:
                raise ValueError(f"`teacher#backend` is 'hf' but {weights_path!r} is not a Hugging Face model folder.")
            if self.backend == "timm" and is_dir:
                raise ValueError(f"`teacher#backend` is 'timm' but {weights_path!r} is a folder, not a checkpoint file.")
            self.model = self._load(weights_path, arch)
        self.hidden_size = int(
            self.model.config.hidden_size if self.backend == "hf" else self.model.embed_dim  # type: ignore[union-attr]
        )
        if self.hidden_size != expected_width:
            raise ValueError(
                f"Teacher weights {weights_path!r} have width {self.hidden_size}, but `teacher_arch`={arch!r} has "
                f"width {expected_width}; set `teacher_arch` to the architecture of the checkpoint."
            )
        self.num_prefix_tokens = (
            1 + int(self.model.config.num_register_tokens) if self.backend == "hf" else int(self.model.num_prefix_tokens)
        )
        pretrained_cfg = _timm_layout(arch).pretrained_cfg
        self.register_buffer("mean", torch.tensor(pretrained_cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(pretrained_cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.model.requires_grad_(False)
        self.train(False)

    def _load(self, path: str, arch: str) -> nn.Module:
        try:
            if self.backend == "hf":
                from transformers import DINOv3ViTModel

                return DINOv3ViTModel.from_pretrained(path, local_files_only=True)
            return build_timm_teacher_model(arch, weights_file=path)
        except (RuntimeError, OSError, KeyError, ValueError) as err:
            raise ValueError(
                f"Could not load DINOv3 teacher weights from {path!r} (config key `teacher_weights`) as "
                f"`teacher_arch`={arch!r} with the {self.backend} backend: {err}"
            ) from err

    def train(self, mode: bool = True) -> DINOv3Teacher:  # noqa: ARG002 - always eval (RoPE jitter in train mode)
        """Keep the ViT in eval mode whatever the caller asks: the teacher is frozen."""
        return super().train(False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(N, H, W) slices -> (N, 3, H, W): per-slice min-max to [0, 1], grey to RGB, pretrained mean/std."""
        flat = x.flatten(1)
        lo = flat.amin(dim=1).view(-1, 1, 1)
        hi = flat.amax(dim=1).view(-1, 1, 1)
        x01 = (x - lo) / (hi - lo).clamp_min(1e-6)
        return (x01.unsqueeze(1) - self.mean) / self.std

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"DINOv3Teacher expects (B, M, H, W) slices, got shape {tuple(x.shape)}.")
        b, m, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"Teacher input {h}x{w} must be a multiple of 16 in H and W; pad or crop the slices.")
        pixels = self.normalise(x.reshape(b * m, h, w).float())
        if self.backend == "hf":
            tokens = self.model(pixel_values=pixels).last_hidden_state
        else:
            tokens = self.model.forward_features(pixels)
        patches = tokens[:, self.num_prefix_tokens :]
        gh, gw = h // self.patch_size, w // self.patch_size
        return patches.reshape(b, m, gh, gw, self.hidden_size).permute(0, 1, 4, 2, 3).contiguous()
