#!/usr/bin/env python
"""Make a DINOv3-layout ViT teacher that knows the (phantom) domain, offline, and save it where the bundle loads it.

    python scripts/make_teacher.py --output_dir made_teacher                   # tiny arch, 16 pool cases, 2 mm
    python scripts/make_teacher.py --output_dir made_vits --arch vits16 --budget_s 1800 --pixdim 1 \\
        --roi_size "[128,128]"
    python -m monai.bundle run training \\
        --config_file "['bundle/configs/train.json','configs/tiny.json']" \\
        --teacher_arch tiny --teacher_random_init False --teacher_weights made_teacher/teacher_timm.pth ...

No DINOv3 weights reach these machines, so this script trains the teacher itself, on a **pool** of hard phantoms
(``make_demo_dataset(..., difficulty="hard")``) drawn with their own seed (``--pool_seed``, default 24: case seeds
24000 + i), disjoint from the students' cases (seed 0 or any other seed: case seeds seed * 1000 + i). The pool is
preprocessed as the bundle's store does (RAS, ``--pixdim``, brain crop, z-score over the brain per modality; axial
slices padded or cropped to ``--roi_size``), so the teacher sees what training will give it.

Objective (why: docs/distillation.md, "Made teacher"): **supervised token regression of the pool's labels**. Each
modality slice goes through the ViT exactly as :class:`diffmed_monai.networks.DINOv3Teacher` runs it (per-slice
min-max, grey to RGB, ImageNet mean/std, last-layer patch tokens after the final norm); a linear head on every
patch token predicts the fractions of its 16 x 16 patch inside ET, TC and WT (binary cross-entropy on the soft
fractions). The head is thrown away; the tokens must carry the regions linearly, which is what
``diffmed-monai probe-teacher`` then checks on held-out cases. Augmentation: the bundle's flips and intensity
scale/shift. Training stops after ``--steps`` steps or ``--budget_s`` seconds of process CPU time, whichever first.

Writes, atomically, into ``--output_dir`` (refused if it exists, unless ``--overwrite``):

- ``teacher_timm.pth`` and ``teacher_timm.safetensors``: the timm ``state_dict`` (timm's keys), loaded by the
  ``timm`` backend (``teacher_weights`` a file);
- ``teacher_hf/``: a Hugging Face ``DINOv3ViTModel`` folder (``config.json`` + ``model.safetensors``), loaded by the
  ``hf`` backend (``teacher_weights`` a folder);
- ``head.pt`` (the token head, for reference), ``teacher.json`` (arch, objective, pool seeds and cases, pixdim,
  roi_size, steps, CPU and wall seconds, loss curve, and the largest token difference between the trained model and
  each saved layout reloaded through ``DINOv3Teacher``), ``pool/`` (the pool cases and their ``datalist.json``).

Use it with the bundle unchanged: ``--teacher_arch <arch> --teacher_random_init False --teacher_weights
<output_dir>/teacher_timm.pth`` (or ``<output_dir>/teacher_hf``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import fire
import torch
import torch.nn.functional as nnf
from torch import nn

from diffmed_monai.data.demo import DEMO_MODALITIES, make_demo_dataset
from diffmed_monai.metrics.probe import load_probe_slices, token_fractions
from diffmed_monai.networks.teacher import DINOv3Teacher, build_hf_teacher_model
from diffmed_monai.utils import parse_flags

logger = logging.getLogger("make_teacher")

OBJECTIVE = ("supervised token regression: a linear head on each last-layer patch token predicts the fractions of "
             "its 16x16 patch inside ET, TC, WT (BCE on soft fractions), every modality on its own")


def timm_to_hf_state_dict(timm_state: dict, arch: str) -> tuple[nn.Module, dict]:
    """A timm DINOv3 ``state_dict`` -> ``(hf_model, hf_state_dict)`` for ``transformers.DINOv3ViTModel``.

    Key mapping: ``cls_token``/``reg_token``/``patch_embed.proj`` -> ``embeddings.*``; per block ``attn.qkv``
    split into ``q_proj``/``k_proj``/``v_proj`` (timm's DINOv3 layout has no qkv bias: ``q``/``v`` biases zero,
    ``k`` has none), ``attn.proj`` -> ``o_proj``, ``gamma_1``/``gamma_2`` -> ``layer_scale{1,2}.lambda1``,
    ``mlp.fc1``/``fc2`` -> ``mlp.up_proj``/``down_proj``; ``mask_token`` (used only for masked inputs) zero. The HF
    model is :func:`build_hf_teacher_model` of ``arch``; loading is strict, so a key left over is an error.
    """
    hf = build_hf_teacher_model(arch)
    s = dict(timm_state)
    out = {
        "embeddings.cls_token": s.pop("cls_token"),
        "embeddings.register_tokens": s.pop("reg_token"),
        "embeddings.mask_token": torch.zeros_like(hf.state_dict()["embeddings.mask_token"]),
        "embeddings.patch_embeddings.weight": s.pop("patch_embed.proj.weight"),
        "embeddings.patch_embeddings.bias": s.pop("patch_embed.proj.bias"),
        "norm.weight": s.pop("norm.weight"),
        "norm.bias": s.pop("norm.bias"),
    }
    depth = len({k.split(".")[1] for k in s if k.startswith("blocks.")})
    for i in range(depth):
        a, b = f"blocks.{i}.", f"model.layer.{i}."
        q, k, v = s.pop(a + "attn.qkv.weight").chunk(3)
        qkv_bias = s.pop(a + "attn.qkv.bias", None)
        if qkv_bias is not None and qkv_bias.chunk(3)[1].abs().max() > 0:
            raise ValueError(f"{a}attn.qkv.bias has a non-zero key bias, which DINOv3ViTModel (key_bias=False) lacks.")
        qb, _, vb = qkv_bias.chunk(3) if qkv_bias is not None else (torch.zeros(q.shape[0]),) * 3
        out.update({
            b + "attention.q_proj.weight": q, b + "attention.k_proj.weight": k, b + "attention.v_proj.weight": v,
            b + "attention.q_proj.bias": qb, b + "attention.v_proj.bias": vb,
            b + "attention.o_proj.weight": s.pop(a + "attn.proj.weight"),
            b + "attention.o_proj.bias": s.pop(a + "attn.proj.bias"),
            b + "layer_scale1.lambda1": s.pop(a + "gamma_1"), b + "layer_scale2.lambda1": s.pop(a + "gamma_2"),
            b + "mlp.up_proj.weight": s.pop(a + "mlp.fc1.weight"), b + "mlp.up_proj.bias": s.pop(a + "mlp.fc1.bias"),
            b + "mlp.down_proj.weight": s.pop(a + "mlp.fc2.weight"),
            b + "mlp.down_proj.bias": s.pop(a + "mlp.fc2.bias"),
        })
        for n in ("norm1", "norm2"):
            out[b + n + ".weight"], out[b + n + ".bias"] = s.pop(a + n + ".weight"), s.pop(a + n + ".bias")
    if s:
        raise ValueError(f"timm keys without a DINOv3ViTModel counterpart: {sorted(s)[:5]}")
    hf.load_state_dict(out, strict=True)
    return hf, out


def save_teacher(model: nn.Module, arch: str, folder: str | os.PathLike) -> dict:
    """Save a timm DINOv3 ``model`` of ``arch`` in every layout ``teacher_weights`` loads; returns their paths.

    ``teacher_timm.pth`` (``torch.save`` of the ``state_dict``), ``teacher_timm.safetensors`` and the Hugging Face
    folder ``teacher_hf`` (:func:`timm_to_hf_state_dict`, ``save_pretrained``).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    paths = {"timm_pth": folder / "teacher_timm.pth", "timm_safetensors": folder / "teacher_timm.safetensors",
             "hf": folder / "teacher_hf"}
    torch.save(state, paths["timm_pth"])
    save_file(state, str(paths["timm_safetensors"]))
    hf, _ = timm_to_hf_state_dict(state, arch)
    hf.save_pretrained(str(paths["hf"]))
    return {k: str(v) for k, v in paths.items()}


def make_pool(pool_dir: str, num_cases: int, pool_seed: int, pixdim: float) -> list[dict]:
    """Generate the pool's hard phantoms at ``pixdim`` mm (the BraTS field of view, 240 x 240 x 155 mm) and return
    their datalist entries (modalities in :data:`DEMO_MODALITIES` order); also written to ``pool/datalist.json``."""
    shape = tuple(int(round(n / float(pixdim))) for n in (240, 240, 155))
    folders = make_demo_dataset(pool_dir, num_cases=num_cases, shape=shape, spacing=(pixdim,) * 3, seed=pool_seed,
                                difficulty="hard", skull_stripped=True)
    cases = []
    for folder in folders:
        case_id = os.path.basename(folder)
        cases.append({"image": [f"{case_id}/{case_id}_{m}.nii.gz" for m in DEMO_MODALITIES],
                      "label": f"{case_id}/{case_id}_seg.nii.gz"})
    with open(os.path.join(pool_dir, "datalist.json"), "w") as f:
        json.dump({"training": cases, "pool_seed": pool_seed, "case_seeds": [pool_seed * 1000 + i
                                                                             for i in range(num_cases)]}, f, indent=2)
    return cases


def _tokens(teacher: DINOv3Teacher, pixels: torch.Tensor) -> torch.Tensor:
    """``(N, H, W)`` single-modality slices -> ``(N, h*w, d)`` patch tokens, with gradients (the teacher's path)."""
    features = teacher.model.forward_features(teacher.normalise(pixels))
    return features[:, teacher.num_prefix_tokens:]


def train_teacher(slices: torch.Tensor, fractions: torch.Tensor, arch: str = "tiny", steps: int = 2000,
                  budget_s: float = 600.0, batch_size: int = 16, learning_rate: float = 1e-3, seed: int = 0,
                  log_every: int = 100) -> tuple[DINOv3Teacher, nn.Linear, dict]:
    """Train a timm DINOv3 ViT of ``arch`` from random on ``slices (N, M, H, W)`` -> ``fractions (N, 3, H/16, W/16)``.

    Returns ``(teacher, head, stats)``: the frozen :class:`DINOv3Teacher` around the trained timm model, the token
    head, and ``steps``, ``cpu_s``, ``wall_s``, ``loss`` (first/last running means) and the loss curve. Half of each
    batch comes from slices with tumour (when there are any).
    """
    torch.manual_seed(int(seed))
    generator = torch.Generator().manual_seed(int(seed))
    teacher = DINOv3Teacher(None, arch=arch, backend="timm", random_init=True)
    model = teacher.model
    model.requires_grad_(True)
    head = nn.Linear(teacher.hidden_size, 3)
    params = list(model.parameters()) + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate, total_steps=int(steps),
                                                   pct_start=0.05)
    tumour = torch.nonzero(fractions[:, 2].flatten(1).amax(1) > 0).flatten()
    n, m, h, w = slices.shape
    curve, running = [], None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    step = 0
    for step in range(1, int(steps) + 1):
        half = batch_size // 2 if len(tumour) else 0
        pick = torch.cat([tumour[torch.randint(len(tumour), (half,), generator=generator)] if half else
                          torch.empty(0, dtype=torch.long),
                          torch.randint(n, (batch_size - half,), generator=generator)])
        x, y = slices[pick].clone(), fractions[pick].clone()
        for dim in (2, 3):  # the bundle's flips, image and target together
            flip = torch.rand(batch_size, generator=generator) < 0.5
            x[flip], y[flip] = x[flip].flip(dim), y[flip].flip(dim)
        scale = 1.0 + 0.1 * (2 * torch.rand(batch_size, m, 1, 1, generator=generator) - 1)
        shift = 0.1 * (2 * torch.rand(batch_size, m, 1, 1, generator=generator) - 1)
        x = torch.where(x != 0, x * scale + shift, x)
        tokens = _tokens(teacher, x.reshape(batch_size * m, h, w))  # (B*M, h*w, d)
        logits = head(tokens)  # (B*M, h*w, 3)
        target = y.flatten(2).transpose(1, 2).repeat_interleave(m, dim=0)  # (B*M, h*w, 3)
        loss = nnf.binary_cross_entropy_with_logits(logits, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        value = loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        if step % log_every == 0 or step == 1:
            curve.append({"step": step, "loss": round(running, 5), "cpu_s": round(time.process_time() - cpu0, 1)})
            logger.info("step %d loss %.4f (%.0f CPU s)", step, running, time.process_time() - cpu0)
        if time.process_time() - cpu0 >= budget_s:
            break
    model.requires_grad_(False)
    teacher.train(False)
    stats = {"steps": step, "cpu_s": round(time.process_time() - cpu0, 1),
             "wall_s": round(time.perf_counter() - wall0, 1), "loss_first": curve[0]["loss"] if curve else None,
             "loss_last": round(running, 5) if running is not None else None, "curve": curve}
    return teacher, head, stats


def _reload_check(teacher: DINOv3Teacher, paths: dict, arch: str, slices: torch.Tensor) -> dict:
    """Largest absolute token difference between ``teacher`` and each saved layout loaded by ``DINOv3Teacher``."""
    reference = teacher(slices)
    return {name: float((DINOv3Teacher(path, arch=arch)(slices) - reference).abs().max())
            for name, path in paths.items()}


def main(
    output_dir: str = "made_teacher",
    arch: str = "tiny",
    num_cases: int = 16,
    pool_seed: int = 24,
    pixdim: float = 2.0,
    roi_size: Sequence[int] = (96, 96),
    steps: int = 2000,
    budget_s: float = 600.0,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    slice_step: int = 1,
    seed: int = 0,
    threads: int = 1,
    overwrite: bool = False,
) -> dict:
    """Generate the pool, train the teacher, save every layout, check each reloads to the same tokens.

    ``pixdim`` (mm) and ``roi_size`` should be the bundle's (``tiny`` preset: 2 mm, 96 x 96; ``cpu``: 1 mm, 128 x
    128). Returns the metadata also written to ``<output_dir>/teacher.json``.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(int(threads))
    out = Path(output_dir).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (option --output_dir); pass --overwrite True to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        started = time.perf_counter()
        pool_dir = work / "pool"
        cases = make_pool(str(pool_dir), int(num_cases), int(pool_seed), float(pixdim))
        gen_s = time.perf_counter() - started
        data = load_probe_slices(cases, str(pool_dir), pixdim=(float(pixdim),) * 3, roi_size=roi_size,
                                 slice_step=slice_step)
        slices = torch.cat([s for s, _ in data])
        fractions = torch.cat([token_fractions(r) for _, r in data])
        logger.info("pool: %d cases, %d slices of %s, generated in %.0f s", len(cases), len(slices),
                    list(slices.shape[1:]), gen_s)
        teacher, head, stats = train_teacher(slices, fractions, arch=arch, steps=steps, budget_s=budget_s,
                                             batch_size=batch_size, learning_rate=learning_rate, seed=seed)
        paths = save_teacher(teacher.model, arch, work)
        torch.save(head.state_dict(), work / "head.pt")
        check = _reload_check(teacher, paths, arch, slices[:: max(1, len(slices) // 4)][:4])
        if max(check.values()) > 1e-4:
            raise RuntimeError(f"A saved layout does not reload to the trained teacher's tokens: {check}")
        meta = {
            "arch": arch, "objective": OBJECTIVE, "pool_seed": int(pool_seed), "pool_cases": len(cases),
            "pool_case_seeds": [int(pool_seed) * 1000 + i for i in range(int(num_cases))], "pool_slices": len(slices),
            "pixdim": float(pixdim), "roi_size": [int(s) for s in roi_size], "batch_size": int(batch_size),
            "learning_rate": float(learning_rate), "seed": int(seed), "threads": int(threads),
            "pool_generation_s": round(gen_s, 1), **stats,
            "weights": {k: os.path.relpath(v, work) for k, v in paths.items()},
            "reload_max_abs_token_diff": check, "command": " ".join(sys.argv),
            "use": f"--teacher_arch {arch} --teacher_random_init False --teacher_weights {out / 'teacher_timm.pth'}",
        }
        (work / "teacher.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    logger.info("teacher %r trained %d steps (%.0f CPU s), loss %s -> %s; saved in %s", arch, stats["steps"],
                stats["cpu_s"], stats["loss_first"], stats["loss_last"], out)
    print(meta["use"], flush=True)
    return meta


if __name__ == "__main__":
    fire.Fire(parse_flags(main), serialize=lambda meta: None)
