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


def make_demo_case(
    shape: Sequence[int] = (96, 96, 64),
    seed: int = 0,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    return_tissue: bool = False,
    rim_mm: Sequence[float] | None = None,
    skull_stripped: bool = False,
):
    """One synthetic head with a tumour.

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

    Returns:
        ``(images, seg)`` or ``(images, seg, tissue)``: ``images`` maps each of :data:`DEMO_MODALITIES` to an
        ``(X, Y, Z)`` float32 volume, exactly 0 outside the head; ``seg`` is ``(X, Y, Z)`` uint8 with BraTS
        labels 0 background, 1 necrotic core, 2 oedema, 4 enhancing tumour, inside the brain only.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 16:
        raise ValueError(f"shape must be three sizes >= 16, got {shape}.")
    spacing = np.asarray([float(s) for s in spacing], dtype=np.float32)
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise ValueError(f"spacing must be three positive sizes in mm, got {spacing.tolist()}.")
    rng = np.random.default_rng(seed)
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
    ventricles = ((np.abs(x) - 0.10) / 0.075) ** 2 + ((y - 0.02) / 0.30) ** 2 + ((z - 0.08) / 0.18) ** 2 < 1.0
    nuclei = ((np.abs(x) - 0.20) / 0.07) ** 2 + ((y + 0.05) / 0.10) ** 2 + ((z + 0.02) / 0.08) ** 2 < 1.0
    tissue[nuclei] = _GM
    tissue[ventricles] = _CSF

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
) -> list[str]:
    """Write ``num_cases`` synthetic cases in a BraTS layout and return their folders.

    ``layout="brats2021"``: ``output_dir/BraTS2021_NNNNN/BraTS2021_NNNNN_{t1,t1ce,t2,flair,seg}.nii.gz``, seg
    labels {0, 1, 2, 4}; ``"brats2023"``: ``BraTS-GLI-NNNNN-000/BraTS-GLI-NNNNN-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``,
    seg labels {0, 1 NETC, 2 SNFH, 3 ET}. Images float32 ``(X, Y, Z) = shape``, seg uint8. The affine is :func:`demo_affine`:
    ``diag(-sx, -sy, sz)``, LPS voxel order as in BraTS files. Case ``i`` uses seed ``seed * 1000 + i``, so the
    output is deterministic. An existing case folder is a ``ValueError`` unless ``overwrite=True`` (then it is
    replaced). ``rim_mm``, ``skull_stripped``: see :func:`make_demo_case`.
    """
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
                                     skull_stripped=skull_stripped)
        seg = np.asarray(labels, np.uint8)[np.searchsorted(DEMO_LABELS, seg)]
        for modality, name in zip(DEMO_MODALITIES, names):
            nib.save(nib.Nifti1Image(images[modality], affine), os.path.join(folder, f"{case_id}{sep}{name}.nii.gz"))
        nib.save(nib.Nifti1Image(seg, affine), os.path.join(folder, f"{case_id}{sep}seg.nii.gz"))
    logger.info("Wrote %d synthetic demo case(s) of shape %s to %s", len(folders), shape, output_dir)
    return folders


def make_demo_data(
    output_dir: str = "demo_data",
    num_cases: int = 8,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    overwrite: bool = False,
    val_fraction: float = 0.25,
    layout: str = "brats2021",
) -> str:
    """Write synthetic BraTS-layout cases into ``output_dir`` and their datalist ``output_dir/datalist.json``.

    ``val_fraction`` of the cases go to ``validation`` (and ``testing``). ``layout``: ``brats2021`` or
    ``brats2023`` (GLI naming, labels 1/2/3; see :func:`make_demo_dataset`). Returns the datalist path.
    Example: ``python scripts/make_demo_data.py --output_dir demo_data --num_cases 8 --layout brats2023``.
    """
    make_demo_dataset(
        output_dir, num_cases=num_cases, shape=shape, spacing=spacing, seed=seed, overwrite=overwrite, layout=layout
    )
    return prepare_datalist(
        "brats" if layout == "brats2021" else layout, output_dir, output=os.path.join(output_dir, "datalist.json"),
        val_fraction=val_fraction, seed=seed,
    )
