"""Synthetic multi-modal brain-tumour MRI cases in the BraTS 2021 folder layout (the demo and test data).

Each case is an analytic head phantom: a smoothly deformed ellipsoidal head with scalp, skull, CSF (outer rim,
ventricles, interhemispheric fissure), cortical and deep grey matter and white matter, and one glioma-like
tumour (necrotic core inside an enhancing rim inside oedema that spreads mostly along the white matter).
Tissue signals follow the usual MRI contrasts, then MONAI's ``RandBiasField`` and ``RandRicianNoise`` add a
coil bias field and Rician noise. The data are for smoke tests and demos, not for judging a model.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from monai.transforms import RandBiasField, RandRicianNoise, Resize
from scipy import ndimage

from .datalist import BRATS2023_MODALITIES, BRATS_MODALITIES, prepare_datalist

__all__ = [
    "DEMO_LABELS",
    "DEMO_LAYOUTS",
    "DEMO_MODALITIES",
    "DEMO_TISSUES",
    "HARD_FEATURES",
    "HARD_TISSUES",
    "demo_affine",
    "make_demo_case",
    "make_demo_data",
    "make_demo_dataset",
]

logger = logging.getLogger(__name__)

DEMO_MODALITIES = BRATS_MODALITIES
DEMO_LABELS = (0, 1, 2, 4)  # BraTS 2017-2021: background, necrotic core, oedema, enhancing tumour (3 unused)
#: ``layout`` -> (case id pattern, file separator, modality names in ``DEMO_MODALITIES`` order, label values)
DEMO_LAYOUTS = {
    "brats2021": ("BraTS2021_{:05d}", "_", BRATS_MODALITIES, DEMO_LABELS),
    "brats2023": ("BraTS-GLI-{:05d}-000", "-", BRATS2023_MODALITIES, (0, 1, 2, 3)),  # NETC, SNFH, ET
}

# Tissue classes of the phantom (index = value in the tissue map returned by ``make_demo_case``).
DEMO_TISSUES = ("background", "scalp", "skull", "csf", "grey_matter", "white_matter", "oedema", "enhancing",
                "necrosis")
# Relative signal per tissue in (t1, t1ce, t2, flair): scalp fat bright on T1, cortical bone dark everywhere,
# CSF dark on T1 / bright on T2 / suppressed on FLAIR, white matter brighter than grey matter on T1 and darker
# on T2, oedema bright on T2 and FLAIR, enhancing rim bright on T1ce, necrosis T2-bright but FLAIR-darker.
_SIGNAL = np.array(
    [
        (0.00, 0.00, 0.00, 0.00),  # background
        (0.90, 0.92, 0.55, 0.65),  # scalp
        (0.06, 0.06, 0.05, 0.05),  # skull
        (0.15, 0.16, 1.00, 0.07),  # csf
        (0.52, 0.54, 0.66, 0.60),  # grey matter
        (0.78, 0.79, 0.42, 0.46),  # white matter
        (0.42, 0.44, 0.88, 0.95),  # oedema
        (0.50, 1.00, 0.70, 0.76),  # enhancing
        (0.26, 0.29, 0.95, 0.48),  # necrosis
    ],
    dtype=np.float32,
)
(_BG, _SCALP, _SKULL, _CSF, _GM, _WM, _OEDEMA, _ENH, _NECROSIS) = range(len(DEMO_TISSUES))


def demo_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """4x4 voxel-to-world (RAS+ mm, nibabel convention) affine ``diag(-sx, -sy, sz)`` centred on the volume.

    Voxel axes run toward the patient's left, posterior and superior: axis codes ``("L", "P", "S")``, the LPS
    voxel order of BraTS NIfTI files.
    """
    sx, sy, sz = (float(s) for s in spacing)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * (shape[0] - 1) / 2, sy * (shape[1] - 1) / 2, -sz * (shape[2] - 1) / 2]
    return affine


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], cells: int) -> np.ndarray:
    """Smooth random ``shape`` field in [-1, 1]: ~``cells`` random values per axis, resized trilinearly."""
    coarse = rng.uniform(-1.0, 1.0, size=[1] + [max(2, min(cells, n)) for n in shape]).astype(np.float32)
    return np.asarray(Resize(shape, mode="trilinear", align_corners=True)(coarse))[0]


def _head_anatomy(rng: np.random.Generator, shape: tuple[int, ...], skull_stripped: bool):
    """The head without tumour: ``(x, y, z, semi, r, tissue, kept, brain)``.

    ``x, y, z``: sparse normalised coordinates in [-1, 1]; ``semi``: the head's semi-axes; ``r``: the deformed
    normalised head radius (< 1 inside the head); ``tissue``: ``(X, Y, Z)`` uint8 indices into :data:`DEMO_TISSUES`;
    ``kept``: the voxels that keep their signal (the intracranial space when ``skull_stripped``); ``brain``: the
    brain parenchyma mask. Draws from ``rng`` in a fixed order (the easy phantoms depend on it).
    """
    x, y, z = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij", sparse=True)

    # head: deformed ellipsoid, A-P (y) longest; layers by normalised radius
    semi = np.array([0.80, 0.92, 0.86], np.float32) * rng.uniform(0.94, 1.0, 3).astype(np.float32)
    r = np.sqrt((x / semi[0]) ** 2 + (y / semi[1]) ** 2 + ((z + 0.04) / semi[2]) ** 2)
    r = r + 0.04 * _smooth_field(rng, shape, 5)
    head = r < 1.0
    tissue = np.zeros(shape, np.uint8)
    tissue[head] = _SCALP
    tissue[r < 0.95] = _SKULL
    tissue[r < 0.89] = _CSF
    kept = (r < 0.89) if skull_stripped else head  # the voxels that keep their signal
    rb = r / 0.85  # brain radius; < 1 inside the brain
    brain = rb < 1.0
    folds = 0.07 * _smooth_field(rng, shape, 20)  # gyri-like cortical thickness variation
    tissue[brain] = _GM
    tissue[rb < 0.85 + folds] = _WM
    fissure = (np.abs(x) < 1.5 / shape[0] * 2) & (rb > 0.45) & (z > -0.25)  # interhemispheric CSF sheet
    tissue[fissure & brain] = _CSF
    tissue[_nuclei(x, y, z)] = _GM
    tissue[_ventricles(x, y, z)] = _CSF
    return x, y, z, semi, r, tissue, kept, brain


def _ventricles(x, y, z) -> np.ndarray:
    """Lateral ventricles (normalised coordinates)."""
    return ((np.abs(x) - 0.10) / 0.075) ** 2 + ((y - 0.02) / 0.30) ** 2 + ((z - 0.08) / 0.18) ** 2 < 1.0


def _nuclei(x, y, z) -> np.ndarray:
    """Deep grey nuclei (normalised coordinates)."""
    return ((np.abs(x) - 0.20) / 0.07) ** 2 + ((y + 0.05) / 0.10) ** 2 + ((z + 0.02) / 0.08) ** 2 < 1.0


def make_demo_case(
    shape: Sequence[int] = (96, 96, 64),
    seed: int = 0,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    return_tissue: bool = False,
    rim_mm: Sequence[float] | None = None,
    skull_stripped: bool = False,
    difficulty: str = "easy",
    hard_features: Sequence[str] | None = None,
    return_info: bool = False,
):
    """One synthetic head with a tumour (``difficulty="easy"``) or one or more gliomas made hard to segment.

    Args:
        shape: volume size ``(X, Y, Z)`` in voxels, each >= 16.
        seed: random seed; the same seed gives bit-identical output.
        spacing: voxel size in mm (sets the physical tumour size relative to the head).
        return_tissue: also return the ``(X, Y, Z)`` uint8 tissue map (indices into :data:`DEMO_TISSUES`).
        rim_mm: ``(min, max)`` thickness in mm of the enhancing rim around the necrotic core, drawn per case
            (e.g. ``(2, 5)``: thin rims as in real glioblastomas); default: a core-relative rim (about 10 mm at 1 mm
            spacing).
        skull_stripped: zero everything outside the intracranial space (brain and CSF), as in the skull-stripped
            images BraTS distributes; default: the whole head, scalp and skull included.
        difficulty: ``"easy"`` (the original phantom, unchanged output) or ``"hard"``: the same head with the
            features of :data:`HARD_FEATURES` (see :func:`_make_hard_case` and docs/distillation.md); ``rim_mm`` is
            ignored there (the hard generator draws its own thin, patchy rims).
        hard_features: with ``difficulty="hard"``, the subset of :data:`HARD_FEATURES` to apply (default: all).
            Every feature draws from its own random stream, so switching one off leaves the others' draws unchanged.
        return_info: with ``difficulty="hard"``, also return a dict of the case's drawn properties (``grade``,
            ``lesions``, ``has_et``, ``thick_slice_mm``, ``shift_mm`` and ``rotation_deg`` per modality, ...).

    Returns:
        ``(images, seg)``, ``(images, seg, tissue)``, and with ``return_info`` the info dict last: ``images`` maps
        each of :data:`DEMO_MODALITIES` to an ``(X, Y, Z)`` float32 volume, exactly 0 outside the head; ``seg`` is
        ``(X, Y, Z)`` uint8 with BraTS labels 0 background, 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing
        tumour, inside the brain only; ``tissue`` indexes :data:`DEMO_TISSUES` (easy) or :data:`HARD_TISSUES`.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes >= 16, got {shape}.")
    spacing = np.asarray([float(s) for s in spacing], dtype=np.float32)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be three positive sizes in mm, got {spacing.tolist()}.")
    if difficulty == "hard":
        return _make_hard_case(shape, seed, spacing, return_tissue, skull_stripped, hard_features, return_info)
    if difficulty != "easy":
        raise ValueError(f"difficulty must be 'easy' or 'hard', got {difficulty!r}.")
    rng = np.random.default_rng(seed)
    x, y, z, semi, r, tissue, kept, brain = _head_anatomy(rng, shape, skull_stripped)

    # tumour in one hemisphere, sizes in mm relative to the smallest brain semi-axis
    half_mm = (np.array(shape, np.float32) - 1) * spacing / 2
    brain_semi_mm = float(np.min(semi * 0.85 * half_mm))
    centre = np.array(
        [rng.choice([-1, 1]) * rng.uniform(0.25, 0.45), rng.uniform(-0.40, 0.40), rng.uniform(-0.10, 0.35)],
        np.float32,
    ) * semi * 0.85
    r_oedema = brain_semi_mm * rng.uniform(0.50, 0.70)
    r_core = r_oedema * rng.uniform(0.55, 0.68)
    if rim_mm is None:
        r_necrosis = r_core * rng.uniform(0.48, 0.62)
    else:
        low, high = (float(v) for v in rim_mm)
        if not 0 < low <= high < r_core:
            raise ValueError(f"rim_mm must be (min, max) with 0 < min <= max < {r_core:.1f} mm, got {rim_mm}.")
        r_necrosis = r_core - rng.uniform(low, high)
    dist = np.sqrt(
        ((x - centre[0]) * half_mm[0]) ** 2 + ((y - centre[1]) * half_mm[1]) ** 2 + ((z - centre[2]) * half_mm[2]) ** 2
    )
    dist = dist * (1.0 + 0.18 * _smooth_field(rng, shape, 7))  # irregular, still nested
    seg = np.zeros(shape, np.uint8)
    oedema = (dist < r_oedema) & ((tissue == _WM) | (dist < 1.25 * r_core))  # oedema spreads along white matter
    seg[oedema] = 2
    seg[dist < r_core] = 4
    seg[dist < r_necrosis] = 1
    seg[~brain] = 0
    tissue[seg == 2], tissue[seg == 4], tissue[seg == 1] = _OEDEMA, _ENH, _NECROSIS

    # per-case tissue contrast jitter, partial-volume blur, then MONAI bias field and Rician noise
    signal = _SIGNAL * rng.uniform(0.92, 1.08, _SIGNAL.shape).astype(np.float32)
    bias = RandBiasField(degree=3, coeff_range=(0.0, 0.12), prob=1.0)
    noise = RandRicianNoise(prob=1.0, std=0.02, relative=False, sample_std=False)
    bias.set_random_state(seed=int(rng.integers(2**31)))
    noise.set_random_state(seed=int(rng.integers(2**31)))
    images = {}
    for m, modality in enumerate(DEMO_MODALITIES):
        volume = ndimage.gaussian_filter(signal[tissue, m], 0.6, truncate=3.0)[None]
        volume = np.asarray(noise(bias(volume)), dtype=np.float32)[0]
        volume *= np.float32(1000.0 * rng.uniform(0.8, 1.25))
        volume[~kept] = 0.0
        images[modality] = volume
    return (images, seg, tissue) if return_tissue else (images, seg)


# ---------------------------------------------------------------------------------------------------------------------
# Hard phantoms (difficulty="hard"): the BraTS properties that make real gliomas hard to segment, one switch each.

#: features of the hard phantoms (all on by default; ``hard_features`` picks a subset), in the order they act
HARD_FEATURES = (
    "texture",  # heterogeneous tumour texture (multi-scale multiplicative field inside the lesion)
    "oedema_gradient",  # FLAIR/T2 oedema signal fading with distance; the label boundary inside the gradient
    "patchy_enhancement",  # only part of the rim enhances; the rest is non-enhancing core (label 1)
    "lgg",  # some cases are lower-grade-like: non-enhancing core, no ET at all
    "multifocal",  # some cases have 2-3 separate lesions
    "lookalikes",  # T1c-bright structures outside the tumour: vessels, choroid plexus, dura
    "thick_slices",  # T2 and FLAIR acquired as thick 2D slabs, resampled to the 3D grid
    "misregistration",  # T1, T2, FLAIR slightly shifted and rotated against T1c (and the label)
    "nonlinearity",  # a random monotone intensity curve per modality
    "strong_noise",  # stronger Rician noise and bias field than the easy phantoms
)
#: tissue classes of the hard phantoms: :data:`DEMO_TISSUES` plus these (indices continue)
HARD_TISSUES = DEMO_TISSUES + ("non_enhancing", "vessel", "choroid_plexus", "dura")
(_NET, _VESSEL, _PLEXUS, _DURA) = range(len(DEMO_TISSUES), len(HARD_TISSUES))
# (t1, t1ce, t2, flair) of the extra tissues: non-enhancing tumour T1-dark, T2/FLAIR-bright, not enhancing; vessels
# (veins, sinuses) enhance on T1c and are flow voids on T2/FLAIR; the choroid plexus and the dura enhance on T1c.
_HARD_SIGNAL = np.concatenate(
    [_SIGNAL, np.array([(0.40, 0.42, 0.92, 0.86), (0.45, 1.00, 0.15, 0.20), (0.50, 0.95, 0.62, 0.50),
                        (0.30, 0.92, 0.40, 0.38)], np.float32)]
)
_HARD_STREAMS = ("anatomy", "lesions", "texture", "lookalikes", "thick_slices", "misregistration", "nonlinearity",
                 "noise")
_P_LGG, _P_MULTIFOCAL = 0.3, 0.35


def _thick_slices(volume: np.ndarray, n: int, offset: int) -> np.ndarray:
    """A 2D acquisition of slabs ``n`` voxels thick along Z (slab means), linearly resampled back to every slice."""
    slabs = ndimage.uniform_filter1d(volume, size=n, axis=2, mode="nearest")
    centres = np.arange(offset % n, volume.shape[2], n)
    position = np.interp(np.arange(volume.shape[2]), centres, np.arange(len(centres)))
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(centres) - 1)
    frac = (position - low).astype(np.float32)
    sampled = slabs[:, :, centres]
    return sampled[:, :, low] * (1.0 - frac) + sampled[:, :, high] * frac


def _rigid(volume: np.ndarray, shift_vox: np.ndarray, angle_deg: float) -> np.ndarray:
    """``volume`` rotated by ``angle_deg`` about the Z axis through its centre and shifted (voxels), trilinear."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    centre = (np.array(volume.shape) - 1) / 2.0
    offset = centre - rot @ centre - rot @ shift_vox  # output voxel o samples input rot @ (o - shift) about centre
    return ndimage.affine_transform(volume, rot, offset=offset, order=1, mode="nearest").astype(np.float32)


def _curve_mask(rng: np.random.Generator, shape: tuple[int, ...], count: int, inside: np.ndarray) -> np.ndarray:
    """``count`` thin wiggly tubes (vessel-like), drawn as polylines then dilated by one voxel, kept ``inside``."""
    mask = np.zeros(shape, bool)
    t = np.linspace(0.0, 1.0, 4 * max(shape))[:, None]
    for _ in range(count):
        start = rng.uniform(-0.6, 0.6, 3)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        side = np.cross(direction, rng.normal(size=3))
        side /= max(np.linalg.norm(side), 1e-6)
        length = rng.uniform(0.5, 1.1)
        wiggle = 0.06 * np.sin(2 * np.pi * rng.uniform(1.0, 3.0) * t + rng.uniform(0, 2 * np.pi))
        points = start + length * (t - 0.5) * direction + wiggle * side
        idx = np.rint((points + 1.0) / 2.0 * (np.array(shape) - 1)).astype(int)
        idx = idx[np.all((idx >= 0) & (idx < np.array(shape)), axis=1)]
        mask[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    return ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1)) & inside


def _make_hard_case(shape, seed, spacing, return_tissue, skull_stripped, hard_features, return_info):
    """The hard phantom of :func:`make_demo_case`; each of :data:`HARD_FEATURES` models a property of BraTS data.

    Shapes as in :func:`make_demo_case`. The head and brain are the easy phantom's (same anatomy draws from the
    ``anatomy`` stream), then: 1 lesion, or 2-3 (``multifocal``, p = 0.35), each nested necrosis < rim < core <
    oedema with an irregular outline; glioblastoma-like (necrosis, a thin rim of which only a random 40-90 % enhances
    with ``patchy_enhancement``) or, with ``lgg`` (p = 0.3), lower-grade-like (a non-enhancing core, label 1, and no
    ET anywhere). Signals are the tissue table, blended with an oedema weight that falls with distance from the core
    and keeps 15-45 % of its peak at the labelled oedema boundary (``oedema_gradient``, so the boundary lies
    inside the gradient and faint T2/FLAIR signal continues outside the label), and modulated by a multi-scale
    texture inside the lesion (``texture``). Look-alikes (vessels, choroid plexus in the ventricles, patches of dura
    at the brain surface) enhance on T1c and are never labelled. Acquisition: partial-volume blur, T2 and FLAIR as
    3-6 mm axial slabs resampled to the grid (``thick_slices``), bias field and a monotone intensity curve per
    modality (``nonlinearity``), Rician noise (``strong_noise``: std 0.035-0.06 and bias coefficients 0.1-0.3 instead
    of 0.02 and 0-0.12), then T1, T2, FLAIR resampled with a rigid residual of 1-2 mm and up to 1.5 degrees against
    T1c, on whose grid the label lies (``misregistration``), and the skull-strip mask shared by all modalities.
    """
    features = HARD_FEATURES if hard_features is None else tuple(hard_features)
    unknown = sorted(set(features) - set(HARD_FEATURES))
    if unknown:
        raise ValueError(f"Unknown hard phantom feature(s) {unknown}; choose from {list(HARD_FEATURES)}.")
    on = set(features)
    streams = dict(zip(_HARD_STREAMS, (np.random.default_rng(s) for s in
                                       np.random.SeedSequence([int(seed), 24]).spawn(len(_HARD_STREAMS)))))
    x, y, z, semi, r, tissue, kept, brain = _head_anatomy(streams["anatomy"], shape, skull_stripped)
    white = tissue == _WM
    half_mm = (np.array(shape, np.float32) - 1) * spacing / 2
    brain_semi_mm = float(np.min(semi * 0.85 * half_mm))

    # lesions: draws are made whatever the switches, so each switch changes only what it names
    rng = streams["lesions"]
    lgg = bool(rng.random() < _P_LGG) and "lgg" in on
    extra = int(rng.integers(1, 3)) if rng.random() < _P_MULTIFOCAL else 0
    extra = extra if "multifocal" in on else 0
    deform = 1.0 + 0.28 * _smooth_field(rng, shape, 9)
    enh_field = _smooth_field(rng, shape, 14)
    et_fraction = float(rng.uniform(0.4, 0.9)) if "patchy_enhancement" in on else 1.0
    fade_end = float(rng.uniform(1.15, 1.8))
    lesions = []
    for i in range(1 + extra):
        r_oed = brain_semi_mm * (rng.uniform(0.45, 0.65) if i == 0 else rng.uniform(0.2, 0.33))
        for _ in range(50):  # a centre in the brain, away from the lesions already placed
            centre = np.array([rng.choice([-1, 1]) * rng.uniform(0.2, 0.5), rng.uniform(-0.45, 0.45),
                               rng.uniform(-0.15, 0.4)], np.float32) * semi * 0.85
            far = all(np.linalg.norm((centre - c) * half_mm) > 1.15 * (r_oed + ro) for c, ro, _, _ in lesions)
            if far:
                break
        else:
            continue
        r_core = r_oed * rng.uniform(0.45, 0.65)
        rim = rng.uniform(2.0, 5.0)  # mm, thin rims as in glioblastomas
        lesions.append((centre, r_oed, r_core, max(r_core - rim, 0.3 * r_core)))
    # priority code: 0 none < 1 oedema < 2 non-enhancing < 3 enhancing < 4 necrosis; oedema weight in [0, 1]
    code = np.zeros(shape, np.uint8)
    oedema_w = np.zeros(shape, np.float32)
    near = np.zeros(shape, bool)
    for centre, r_oed, r_core, r_nec in lesions:
        dist = np.sqrt(((x - centre[0]) * half_mm[0]) ** 2 + ((y - centre[1]) * half_mm[1]) ** 2
                       + ((z - centre[2]) * half_mm[2]) ** 2) * deform
        d = dist / r_oed  # 1 at the labelled oedema boundary
        dc = r_core / r_oed
        lesion = np.zeros(shape, np.uint8)
        lesion[(d < 1.0) & (white | (d < 1.25 * dc))] = 1  # oedema spreads along the white matter
        if lgg:
            lesion[d < dc] = 2
        else:
            rim = (d < dc) & (d >= r_nec / r_oed)
            lesion[rim] = 2
            lesion[rim & (enh_field >= np.quantile(enh_field[rim], 1.0 - et_fraction) if rim.any() else rim)] = 3
            lesion[d < r_nec / r_oed] = 4
        np.maximum(code, lesion, out=code)
        if "oedema_gradient" in on:
            w = np.clip((fade_end - d) / (fade_end - dc), 0.0, 1.0) ** 1.5 * np.where(white, 1.0, 0.6)
        else:
            w = (lesion == 1).astype(np.float32)
        np.maximum(oedema_w, w.astype(np.float32), out=oedema_w)
        near |= d < fade_end
    code[~brain] = 0
    oedema_w[~brain] = 0.0
    seg = np.array([0, 2, 1, 4, 1], np.uint8)[code]
    tissue[code == 1] = _OEDEMA
    tissue[code == 2] = _NET
    tissue[code == 3] = _ENH
    tissue[code == 4] = _NECROSIS
    core = code >= 2

    # T1c look-alikes outside the label: vessels, choroid plexus, patchy dura at the brain surface
    rng = streams["lookalikes"]
    vessels = _curve_mask(rng, shape, int(rng.integers(6, 11)), brain)
    ventricles = _ventricles(x, y, z)
    plexus = ventricles & (((np.abs(x) - 0.10) / 0.06) ** 2 + ((y - rng.uniform(0.10, 0.20)) / 0.10) ** 2
                           + ((z - 0.08) / 0.07) ** 2 < 1.0)
    dura = (r >= 0.87) & (r < 0.89) & (_smooth_field(rng, shape, 8) > rng.uniform(0.0, 0.3))
    if "lookalikes" in on:
        free = seg == 0
        tissue[vessels & free] = _VESSEL
        tissue[plexus & free] = _PLEXUS
        tissue[dura & free] = _DURA

    # signals: tissue table, oedema blend, lesion texture
    rng = streams["texture"]
    signal = _HARD_SIGNAL * rng.uniform(0.92, 1.08, _HARD_SIGNAL.shape).astype(np.float32)
    texture = (_smooth_field(rng, shape, 12) + 0.6 * _smooth_field(rng, shape, 30)) / 1.6
    texture_amp = rng.uniform(0.2, 0.35, len(DEMO_MODALITIES)).astype(np.float32)
    blend = (oedema_w * (~core)).astype(np.float32)
    # acquisition draws
    rng = streams["thick_slices"]
    slab_mm = float(rng.uniform(3.0, 6.0))
    slab_n = max(2, int(round(slab_mm / float(spacing[2]))))
    slab_offsets = rng.integers(0, slab_n, len(DEMO_MODALITIES))
    rng = streams["misregistration"]
    shift_mm, angles = {}, {}
    for modality in DEMO_MODALITIES:
        direction = rng.normal(size=3)
        magnitude, angle = rng.uniform(1.0, 2.0), rng.uniform(-1.5, 1.5)
        if "misregistration" in on and modality != "t1ce":
            shift_mm[modality] = (direction / np.linalg.norm(direction) * magnitude).tolist()
            angles[modality] = float(angle)
        else:
            shift_mm[modality], angles[modality] = [0.0, 0.0, 0.0], 0.0
    rng = streams["nonlinearity"]
    knots = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 3.0])
    curves = []
    for _ in DEMO_MODALITIES:
        steps = np.diff(knots) * rng.uniform(0.45, 1.6, len(knots) - 1)
        values = np.concatenate([[0.0], np.cumsum(steps)])
        curves.append(values / values[4])  # 1 -> 1: the curve bends, the scale stays
    rng = streams["noise"]
    strong = "strong_noise" in on
    noise_std = float(rng.uniform(0.035, 0.06)) if strong else 0.02
    bias_range = (0.1, 0.3) if strong else (0.0, 0.12)
    bias = RandBiasField(degree=3, coeff_range=bias_range, prob=1.0)
    noise = RandRicianNoise(prob=1.0, std=noise_std, relative=False, sample_std=False)
    bias.set_random_state(seed=int(rng.integers(2**31)))
    noise.set_random_state(seed=int(rng.integers(2**31)))
    scales = rng.uniform(0.8, 1.25, len(DEMO_MODALITIES))

    images = {}
    for m, modality in enumerate(DEMO_MODALITIES):
        volume = signal[tissue, m]
        volume += blend * (signal[_OEDEMA, m] - volume)
        if "texture" in on:
            volume *= np.where(near, 1.0 + texture_amp[m] * texture, 1.0).astype(np.float32)
        volume = ndimage.gaussian_filter(volume, 0.6, truncate=3.0)
        if "thick_slices" in on and modality in ("t2", "flair"):
            volume = _thick_slices(volume, slab_n, int(slab_offsets[m]))
        volume = np.asarray(bias(volume[None]), dtype=np.float32)[0]
        if "nonlinearity" in on:
            volume = np.interp(volume, knots, curves[m]).astype(np.float32)
        volume = np.asarray(noise(volume[None]), dtype=np.float32)[0]
        if angles[modality] or any(shift_mm[modality]):
            volume = _rigid(volume, np.asarray(shift_mm[modality]) / spacing, angles[modality])
        volume *= np.float32(1000.0 * scales[m])
        volume[~kept] = 0.0
        images[modality] = volume
    info = {
        "grade": "lgg" if lgg else "hgg", "lesions": len(lesions), "has_et": bool((seg == 4).any()),
        "et_fraction": et_fraction, "oedema_fade_end": fade_end, "thick_slice_mm": slab_n * float(spacing[2])
        if "thick_slices" in on else None, "shift_mm": shift_mm, "rotation_deg": angles, "noise_std": noise_std,
        "features": list(features),
    }
    out = (images, seg, tissue) if return_tissue else (images, seg)
    return (*out, info) if return_info else out


def make_demo_dataset(
    output_dir: str,
    num_cases: int = 8,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    overwrite: bool = False,
    layout: str = "brats2021",
    rim_mm: Sequence[float] | None = None,
    skull_stripped: bool = False,
    difficulty: str = "easy",
    hard_features: Sequence[str] | None = None,
) -> list[str]:
    """Write ``num_cases`` synthetic cases in a BraTS layout and return their folders.

    ``layout="brats2021"``: ``output_dir/BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz``, seg
    labels {0, 1, 2, 4}; ``"brats2023"``: ``BraTS-GLI-NNNNN-000/BraTS-GLI-NNNNN-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``,
    seg labels {0, 1 NETC, 2 SNFH, 3 ET}. Images float32 ``(X, Y, Z) = shape``, seg uint8. The affine is :func:`demo_affine`:
    ``diag(-sx, -sy, sz)``, LPS voxel order as in BraTS files. Case ``i`` uses seed ``seed * 1000 + i``, so the
    output is deterministic. An existing case folder is a ``ValueError`` unless ``overwrite=True`` (then it is
    replaced). ``rim_mm``, ``skull_stripped``, ``difficulty`` (``"easy"`` or ``"hard"``), ``hard_features``: see
    :func:`make_demo_case`.
    """
    if difficulty not in ("easy", "hard"):
        raise ValueError(f"difficulty must be 'easy' or 'hard', got {difficulty!r}.")
    if int(num_cases) < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}.")
    shape = tuple(int(s) for s in shape)
    affine = demo_affine(shape, spacing)
    if layout not in DEMO_LAYOUTS:
        raise ValueError(f"Unknown demo layout {layout!r}; use one of {sorted(DEMO_LAYOUTS)}.")
    pattern, sep, names, labels = DEMO_LAYOUTS[layout]
    case_ids = [pattern.format(i) for i in range(int(num_cases))]
    folders = [os.path.join(output_dir, case_id) for case_id in case_ids]
    if not overwrite:
        existing = [f for f in folders if os.path.exists(f)]
        if existing:
            raise ValueError(
                f"Demo case folder {existing[0]} already exists ({len(existing)} of {len(folders)} case folders "
                f"exist); pass overwrite=True to replace them or choose another output_dir."
            )
    os.makedirs(output_dir, exist_ok=True)
    for i, (case_id, folder) in enumerate(zip(case_ids, folders)):
        if os.path.exists(folder):
            shutil.rmtree(folder) if os.path.isdir(folder) else os.remove(folder)
        os.makedirs(folder)
        images, seg = make_demo_case(shape, seed=seed * 1000 + i, spacing=spacing, rim_mm=rim_mm,
                                     skull_stripped=skull_stripped, difficulty=difficulty,
                                     hard_features=hard_features)
        seg = np.asarray(labels, np.uint8)[np.searchsorted(DEMO_LABELS, seg)]
        for modality, name in zip(DEMO_MODALITIES, names):
            nib.save(nib.Nifti1Image(images[modality], affine), os.path.join(folder, f"{case_id}{sep}{name}.nii.gz"))
        nib.save(nib.Nifti1Image(seg, affine), os.path.join(folder, f"{case_id}{sep}seg.nii.gz"))
    logger.info("Wrote %d synthetic %s demo case(s) of shape %s to %s", len(folders), difficulty, shape, output_dir)
    return folders


def make_demo_data(
    output_dir: str = "demo_data",
    num_cases: int = 8,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    val_fraction: float = 0.25,
    layout: str = "brats2021",
    difficulty: str = "easy",
    skull_stripped: bool | None = None,
) -> str:
    """Write synthetic BraTS-layout cases into ``output_dir`` and their datalist ``output_dir/datalist.json``.

    ``val_fraction`` of the cases go to ``validation`` (and ``testing``). ``layout``: ``brats2021`` or
    ``brats2023`` (GLI naming, labels 1/2/3; see :func:`make_demo_dataset`). Returns the datalist path.
    ``difficulty``: ``"easy"`` (default: 96 x 96 x 64 at 2 mm with scalp and skull, the tests' and demo's phantoms)
    or ``"hard"`` (default: skull-stripped 240 x 240 x 155 at 1 mm as BraTS 2021, the features of
    :data:`HARD_FEATURES`, docs/distillation.md); ``shape``, ``spacing``, ``skull_stripped`` override those defaults.
    Example: ``python scripts/make_demo_data.py --output_dir demo_data --num_cases 8 --layout brats2023``;
    ``diffmed-monai make-demo-data --output_dir hard_data --num_cases 12 --difficulty hard``.
    """
    hard = difficulty == "hard"
    shape = shape if shape is not None else (240, 240, 155) if hard else (96, 96, 64)
    spacing = spacing if spacing is not None else (1.0, 1.0, 1.0) if hard else (2.0, 2.0, 2.0)
    skull_stripped = hard if skull_stripped is None else bool(skull_stripped)
    make_demo_dataset(
        output_dir, num_cases=num_cases, shape=shape, spacing=spacing, seed=seed, overwrite=overwrite, layout=layout,
        difficulty=difficulty, skull_stripped=skull_stripped,
    )
    return prepare_datalist(
        "brats" if layout == "brats2021" else layout, output_dir, output=os.path.join(output_dir, "datalist.json"),
        val_fraction=val_fraction, seed=seed,
    )
