"""Synthetic multi-modal brain-tumour MRI cases in the BraTS 2021 folder layout (the demo and test data)."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = ["DEMO_MODALITIES", "make_demo_case", "make_demo_dataset"]

logger = logging.getLogger("diffmed_monai.data")

DEMO_MODALITIES = ("t1", "t1ce", "t2", "flair")

# Relative signal of each tissue in (t1, t1ce, t2, flair): CSF dark on T1 / bright on T2 / suppressed on FLAIR,
# white matter brighter than grey on T1, oedema bright on T2 and FLAIR, enhancing rim bright on T1ce.
_TISSUE_SIGNAL = {
    "csf": (0.20, 0.20, 1.00, 0.08),
    "gm": (0.55, 0.57, 0.62, 0.55),
    "wm": (0.78, 0.78, 0.42, 0.45),
    "oedema": (0.45, 0.46, 0.86, 0.95),
    "enhancing": (0.50, 1.00, 0.70, 0.75),
    "necrosis": (0.28, 0.30, 0.92, 0.50),
}


def _smooth_noise(rng: np.random.Generator, shape, sigma: float, amplitude: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return amplitude * field / (np.abs(field).max() + 1e-8)


def make_demo_case(shape: Sequence[int] = (96, 96, 64), seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One synthetic skull-stripped case.

    Returns ``({modality: (X, Y, Z) float32}, seg (X, Y, Z) uint8)`` with BraTS labels 0 background,
    1 necrotic core, 2 oedema, 4 enhancing tumour (3 unused). Voxels outside the brain are exactly 0.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    warp = _smooth_noise(rng, shape, sigma=min(shape) / 6, amplitude=0.06)
    radius = np.sqrt((x / 0.80) ** 2 + (y / 0.92) ** 2 + (z / 0.85) ** 2) + warp  # brain-shaped ellipsoid
    brain = radius < 1.0

    tissue = np.full(shape, "gm", dtype=object)
    tissue[radius < 0.72 + _smooth_noise(rng, shape, min(shape) / 10, 0.05)] = "wm"
    tissue[radius > 0.93] = "csf"  # outer CSF rim
    ventricles = ((np.abs(x) - 0.13) / 0.09) ** 2 + (y / 0.30) ** 2 + ((z - 0.05) / 0.22) ** 2 < 1.0
    tissue[ventricles] = "csf"

    # tumour: necrotic core inside an enhancing rim inside oedema, at a random place in the brain
    centre = rng.uniform(-0.35, 0.35, size=3) * np.array([0.8, 0.9, 0.8])
    r_oedema = rng.uniform(0.22, 0.34)
    r_core, r_necrosis = r_oedema * rng.uniform(0.50, 0.62), r_oedema * rng.uniform(0.22, 0.32)
    dist = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    dist = dist + _smooth_noise(rng, shape, sigma=min(shape) / 12, amplitude=0.05)
    seg = np.zeros(shape, np.uint8)
    seg[dist < r_oedema] = 2
    seg[dist < r_core] = 4
    seg[dist < r_necrosis] = 1
    seg[~brain] = 0
    tissue[seg == 2] = "oedema"
    tissue[seg == 4] = "enhancing"
    tissue[seg == 1] = "necrosis"

    images = {}
    bias = np.exp(_smooth_noise(rng, shape, sigma=min(shape) / 3, amplitude=0.15))
    for m, modality in enumerate(DEMO_MODALITIES):
        signal = np.zeros(shape, np.float32)
        for name, values in _TISSUE_SIGNAL.items():
            signal[tissue == name] = values[m]
        signal = ndimage.gaussian_filter(signal, 0.7) * bias  # partial volume, coil bias
        sigma = 0.025
        noisy = np.sqrt((signal + sigma * rng.standard_normal(shape)) ** 2 + (sigma * rng.standard_normal(shape)) ** 2)
        volume = (1000.0 * noisy * rng.uniform(0.8, 1.2)).astype(np.float32)
        volume[~brain] = 0.0
        images[modality] = volume
    return images, seg


def make_demo_dataset(
    output_dir: str,
    num_cases: int = 8,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
    overwrite: bool = False,
) -> list[str]:
    """Write ``num_cases`` synthetic cases as ``output_dir/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz``.

    Images are float32, labels uint8 (BraTS 0/1/2/4). The affine is ``diag(-sx, -sy, sz)`` centred on the
    volume: voxel axes run toward the patient's right, posterior and superior, the LPS voxel order BraTS data
    has. Deterministic for a given ``seed``. Existing case folders are an error unless ``overwrite``.
    Returns the case folders.
    """
    if num_cases < 1:
        raise ValueError(f"num_cases must be >= 1, got {num_cases}.")
    sx, sy, sz = (float(s) for s in spacing)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * (shape[0] - 1) / 2, sy * (shape[1] - 1) / 2, -sz * (shape[2] - 1) / 2]
    os.makedirs(output_dir, exist_ok=True)
    folders = []
    for i in range(num_cases):
        case_id = f"BraTS2021_{i:05d}"
        folder = os.path.join(output_dir, case_id)
        if os.path.exists(folder):
            if not overwrite:
                raise ValueError(f"Demo case folder {folder} exists; pass overwrite=True to replace it.")
            shutil.rmtree(folder)
        os.makedirs(folder)
        images, seg = make_demo_case(shape, seed=seed * 1000 + i)
        for modality, volume in images.items():
            nib.save(nib.Nifti1Image(volume, affine), os.path.join(folder, f"{case_id}_{modality}.nii.gz"))
        nib.save(nib.Nifti1Image(seg, affine), os.path.join(folder, f"{case_id}_seg.nii.gz"))
        folders.append(folder)
    logger.info("Wrote %d synthetic demo cases to %s", num_cases, output_dir)
    return folders
