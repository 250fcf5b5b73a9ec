"""Linear probe of frozen teacher tokens: does a teacher know the tumour regions of *these* images?

A user about to distil a foundation model into the students can ask, before any training, whether the teacher's
patch tokens carry the information the students need. :func:`probe_teacher` loads a few labelled cases the way the
bundle's store does (RAS, ``pixdim``, brain crop on the network grid, z-score over the brain per modality), cuts
them into axial slices padded or cropped to ``roi_size``, runs the frozen teacher over every modality, and fits one
linear map from each token's concatenated modality features ``(M * d)`` to the fractions of its 16 x 16 patch that
belong to the BraTS regions ET, TC and WT (binary cross-entropy on the soft fractions). Held-out cases are then
scored at token resolution: the fuzzy Dice between the probe's estimated and the true patch fractions, per region
and case (:func:`probe_dice`), averaged over cases. The same probe on a randomly initialised teacher of the same
architecture is the floor: a teacher whose probe does not beat its random twin knows nothing useful about these
images.

The helpers (:func:`region_masks`, :func:`token_fractions`, :func:`load_probe_slices`, :func:`teacher_features`)
are also what ``scripts/make_teacher.py`` trains a teacher with, so the probe and the teacher's training target
measure the same thing.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

__all__ = [
    "PROBE_REGIONS",
    "fit_linear_probe",
    "load_probe_slices",
    "probe_dice",
    "probe_teacher",
    "region_masks",
    "teacher_features",
    "token_fractions",
]

logger = logging.getLogger(__name__)

PROBE_REGIONS = ("et", "tc", "wt")
PATCH = 16  # the teacher's patch size: one token per 16 x 16 pixels


def region_masks(label: torch.Tensor, label_values: Sequence[int]) -> torch.Tensor:
    """``(..., H, W)`` label map in the dataset's values -> ``(..., 3, H, W)`` float ET, TC, WT masks.

    ``label_values``: (background, necrotic core, oedema, enhancing), e.g. ``(0, 1, 2, 4)`` for BraTS 2021 and
    ``(0, 1, 2, 3)`` for BraTS 2023. TC = necrosis + ET, WT = every non-background label.
    """
    background, necrosis, _, enhancing = (int(v) for v in label_values)
    et = label == enhancing
    tc = et | (label == necrosis)
    wt = label != background
    return torch.stack([et, tc, wt], dim=-3).float()


def token_fractions(masks: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """``(N, C, H, W)`` masks -> ``(N, C, H/patch, W/patch)`` fraction of each patch inside each mask."""
    return nnf.avg_pool2d(masks.float(), kernel_size=patch, stride=patch)


def _case_transform(pixdim: Sequence[float]):
    from monai.transforms import Compose, EnsureTyped, LoadImaged, NormalizeIntensityd, Orientationd, Spacingd

    from ..transforms import CropForegroundOnGridd

    keys = ["image", "label"]
    return Compose([
        LoadImaged(keys=keys, ensure_channel_first=True, image_only=True),
        Orientationd(keys=keys, axcodes="RAS"),
        Spacingd(keys=keys, pixdim=[float(p) for p in pixdim], mode=["bilinear", "nearest"]),
        CropForegroundOnGridd(keys=keys),
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
    ])


def volume_slices(image: torch.Tensor, label: torch.Tensor, roi_size: Sequence[int], label_values: Sequence[int],
                  slice_step: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M, X, Y, Z)`` image and ``(1, X, Y, Z)`` (or ``(X, Y, Z)``) label -> axial slices with brain.

    Returns ``(slices (S, M, H, W), regions (S, 3, H, W))`` with ``(H, W) = roi_size`` (centre pad or crop, as the
    bundle's ``ResizeWithPadOrCropd``); every ``slice_step``-th slice that has any non-zero image voxel.
    """
    from monai.transforms import ResizeWithPadOrCrop

    label = label.reshape(image.shape[1:]).float()
    brain = (image != 0).any(dim=0).flatten(0, 1).any(dim=0)  # (Z,)
    index = torch.nonzero(brain).flatten()[::max(1, int(slice_step))]
    fit = ResizeWithPadOrCrop([int(s) for s in roi_size])
    slices, regions = [], []
    for z in index.tolist():
        both = fit(torch.cat([image[..., z], label[None, ..., z]]))
        slices.append(torch.as_tensor(both[:-1]))
        regions.append(region_masks(torch.as_tensor(both[-1]).round(), label_values))
    if not slices:
        raise ValueError("The image has no non-zero voxel, so no slice to probe.")
    return torch.stack(slices).float(), torch.stack(regions)


def load_probe_slices(cases: Sequence[dict], base_dir: str | None = None, pixdim: Sequence[float] = (2.0, 2.0, 2.0),
                      roi_size: Sequence[int] = (96, 96), label_values: Sequence[int] = (0, 1, 2, 4),
                      slice_step: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Datalist entries (``image``: modality files, ``label``: file) -> per case :func:`volume_slices` output.

    Paths relative to ``base_dir``. A missing label is a ``ValueError`` naming the case (the probe needs labels).
    """
    load = _case_transform(pixdim)
    out = []
    for case in cases:
        if "label" not in case:
            raise ValueError(f"Probe case {case.get('image')} has no `label`; the probe needs labelled cases.")

        def path(p):
            return p if base_dir is None or os.path.isabs(p) else os.path.join(base_dir, p)

        images = case["image"] if isinstance(case["image"], (list, tuple)) else [case["image"]]
        data = load({"image": [path(p) for p in images], "label": path(case["label"])})
        out.append(volume_slices(data["image"], data["label"], roi_size, label_values, slice_step))
    return out


@torch.no_grad()
def teacher_features(teacher: nn.Module, slices: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """``(S, M, H, W)`` slices -> ``(S, M * d, H/16, W/16)`` frozen teacher tokens, modalities concatenated."""
    chunks = []
    for start in range(0, slices.shape[0], batch_size):
        tokens = teacher(slices[start:start + batch_size])  # (B, M, d, h, w)
        chunks.append(tokens.flatten(1, 2).float())
    return torch.cat(chunks)


def _tokens_last(x: torch.Tensor) -> torch.Tensor:
    """``(S, C, h, w)`` -> ``(S * h * w, C)``."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def fit_linear_probe(features: torch.Tensor, fractions: torch.Tensor, weight_decay: float = 1e-4,
                     max_iter: int = 200) -> nn.Module:
    """Fit ``features (S, F, h, w)`` -> ``fractions (S, 3, h, w)``: standardisation then one linear layer.

    Binary cross-entropy with logits on the soft fractions plus ``weight_decay`` * squared weights, minimised
    with L-BFGS (a convex problem: the same data give the same probe). Returns a module mapping ``(S, F, h, w)``
    to ``(S, 3, h, w)`` logits.
    """
    x = _tokens_last(features)
    y = _tokens_last(fractions)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    linear = nn.Linear(x.shape[1], y.shape[1]).double()
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    xs = ((x - mean) / std).double()
    yd = y.double()
    optimiser = torch.optim.LBFGS(linear.parameters(), max_iter=int(max_iter), line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = nnf.binary_cross_entropy_with_logits(linear(xs), yd) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return _Probe(mean, std, linear.float())


class _Probe(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.linear = linear

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.permute(0, 2, 3, 1) - self.mean) / self.std
        return self.linear(x).permute(0, 3, 1, 2)


def probe_dice(logits: torch.Tensor, fractions: torch.Tensor) -> dict[str, float]:
    """Dice per region of one case at token resolution, on the patch fractions (thin rims stay visible).

    ``logits``, ``fractions``: ``(S, 3, h, w)``. The probe's sigmoid ``p`` is its estimate of each patch's region
    fraction ``r``; the score is the fuzzy Dice ``2 * sum(min(p, r)) / (sum(p) + sum(r))``, the Dice of the region
    areas patch by patch (1 for a perfect estimate, also where every patch is only partly inside, as at 16-pixel
    tokens over a 2-5 mm enhancing rim, where a >= 50 % threshold would leave ET empty). A region absent from the
    case scores 1 if the probe predicts less than half a patch of it in total, else 0 (the BraTS empty-case rule).
    """
    pred = torch.sigmoid(logits.detach().double())
    ref = fractions.detach().double()
    scores = {}
    for i, region in enumerate(PROBE_REGIONS):
        p, r = pred[:, i], ref[:, i]
        if float(r.sum()) == 0.0:
            scores[region] = 1.0 if float(p.sum()) < 0.5 else 0.0
        else:
            scores[region] = float(2 * torch.minimum(p, r).sum() / (p.sum() + r.sum()))
    return scores


def _write_json(path: str, data: dict, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists (option --output); pass --overwrite True to replace it.")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".probe-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def probe_teacher(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    teacher_arch: str = "tiny",
    teacher_weights: str | None = None,
    teacher_backend: str = "auto",
    pixdim: Sequence[float] = (2.0, 2.0, 2.0),
    roi_size: Sequence[int] = (96, 96),
    label_values: Sequence[int] = (0, 1, 2, 4),
    fit_key: str = "training",
    eval_key: str = "validation",
    num_fit: int = 4,
    num_eval: int = 4,
    slice_step: int = 1,
    seed: int = 0,
    output: str | None = None,
    overwrite: bool = False,
    batch_size: int = 32,
) -> dict:
    """Linear probe of the frozen teacher ``teacher_weights`` against its randomly initialised twin.

    Fits on the first ``num_fit`` cases of the datalist's ``fit_key`` list and scores the first ``num_eval`` of
    ``eval_key`` (``datalist`` default: ``<dataset_dir>/datalist.json``); ``pixdim``, ``roi_size`` and
    ``label_values`` should be the bundle's (the teacher sees the slices training gives it). The random twin is
    ``DINOv3Teacher(random_init=True, arch=teacher_arch)`` built after ``torch.manual_seed(seed)``. Prints the table
    and returns (and with ``output`` writes, atomically, never over an existing file unless ``overwrite``) a dict:
    ``settings``, ``teacher`` and ``random`` (each ``mean`` Dice per region and ``cases``), ``fit_tokens``.
    """
    from ..networks.teacher import DINOv3Teacher

    if teacher_weights is None:
        raise ValueError("probe-teacher needs the teacher to probe: set `teacher_weights` (option --teacher_weights) "
                         "to a Hugging Face DINOv3ViTModel folder or a timm/Meta checkpoint.")
    if datalist is None:
        if dataset_dir is None:
            raise ValueError("Give `dataset_dir` (with datalist.json) or `datalist` (options --dataset_dir, --datalist).")
        datalist = os.path.join(dataset_dir, "datalist.json")
    if not os.path.isfile(datalist):
        raise FileNotFoundError(f"Datalist {datalist} does not exist (option --datalist / --dataset_dir).")
    with open(datalist) as f:
        lists = json.load(f)
    for key, count in ((fit_key, num_fit), (eval_key, num_eval)):
        if len(lists.get(key, [])) < 1 or int(count) < 1:
            raise ValueError(f"Datalist {datalist} has no `{key}` cases to probe with (or the count asked is < 1).")
    base = dataset_dir if dataset_dir is not None else os.path.dirname(os.path.abspath(datalist))
    fit_cases, eval_cases = lists[fit_key][: int(num_fit)], lists[eval_key][: int(num_eval)]
    common = {"pixdim": pixdim, "roi_size": roi_size, "label_values": label_values, "slice_step": slice_step}
    fit_data = load_probe_slices(fit_cases, base, **common)
    eval_data = load_probe_slices(eval_cases, base, **common)
    teacher = DINOv3Teacher(teacher_weights, arch=teacher_arch, backend=teacher_backend)
    torch.manual_seed(int(seed))
    random_twin = DINOv3Teacher(None, arch=teacher_arch, backend=teacher.backend, random_init=True)
    fit_fractions = torch.cat([token_fractions(r) for _, r in fit_data])
    results = {}
    for name, model in (("teacher", teacher), ("random", random_twin)):
        probe = fit_linear_probe(torch.cat([teacher_features(model, s, batch_size) for s, _ in fit_data]),
                                 fit_fractions)
        cases = []
        with torch.no_grad():
            for (slices, regions), case in zip(eval_data, eval_cases):
                logits = probe(teacher_features(model, slices, batch_size))
                cases.append({"label": case["label"], **probe_dice(logits, token_fractions(regions))})
        mean = {r: float(np.mean([c[r] for c in cases])) for r in PROBE_REGIONS}
        results[name] = {"mean": mean, "mean_dice": float(np.mean(list(mean.values()))), "cases": cases}
    report = {
        "settings": {"datalist": os.path.abspath(datalist), "teacher_arch": teacher_arch,
                     "teacher_weights": os.path.abspath(teacher_weights), "backend": teacher.backend,
                     "pixdim": [float(p) for p in pixdim], "roi_size": [int(s) for s in roi_size],
                     "label_values": [int(v) for v in label_values], "fit_cases": len(fit_cases),
                     "eval_cases": len(eval_cases), "seed": int(seed)},
        "fit_tokens": int(fit_fractions.numel() // fit_fractions.shape[1]),
        **results,
    }
    print(probe_table(report), flush=True)
    if output is not None:
        _write_json(output, report, overwrite)
        print(f"probe results: {output}", flush=True)
    return report


def probe_table(report: dict) -> str:
    """Markdown table of a :func:`probe_teacher` report."""
    s = report["settings"]
    lines = [f"Linear probe of frozen `{s['teacher_arch']}` teacher tokens: fitted on {s['fit_cases']} case(s) "
             f"({report['fit_tokens']} tokens), Dice at token resolution on {s['eval_cases']} held-out case(s).", "",
             "| teacher | Dice ET | Dice TC | Dice WT | mean |", "|---|---|---|---|---|"]
    for name, label in (("teacher", f"given ({os.path.basename(s['teacher_weights'])})"),
                        ("random", "randomly initialised, same arch")):
        mean = report[name]["mean"]
        lines.append(f"| {label} | " + " | ".join(f"{mean[r]:.3f}" for r in PROBE_REGIONS)
                     + f" | {report[name]['mean_dice']:.3f} |")
    return "\n".join(lines)
