"""The network's token grid, and the smallest volume a slice network can segment."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["MIN_AXIAL_SLICES", "TOKEN_STRIDE", "grid_problems", "resampled_shape"]

#: the DINOv3 teacher's patch size: teacher tokens, the students' deepest aligned stage and the decoder's grid all
#: have this stride, so network inputs are padded to multiples of it
TOKEN_STRIDE = 16
#: fewer axial slices than this after resampling: segmented, with a warning (a slab, not a volume)
MIN_AXIAL_SLICES = 3


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], pixdim: Sequence[float] | None) -> list[int]:
    """Voxels per axis of a ``shape`` volume of voxel size ``spacing`` (mm) once resampled to ``pixdim``
    (``None``: kept), as MONAI's ``Spacingd`` gives them (at least 1)."""
    target = pixdim or spacing
    return [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target)]


def grid_problems(shape: Sequence[int], what: str) -> tuple[str | None, str | None]:
    """``(refusal, warning)`` for a volume of ``shape`` ``(X, Y, Z)`` voxels at the network's ``pixdim`` (Z axial).

    Refused: an in-plane extent under one token (``TOKEN_STRIDE`` voxels): the network would see padding only.
    Warned: fewer than ``MIN_AXIAL_SLICES`` axial slices. ``what`` names the case and file for the messages.
    """
    x, y, z = (int(s) for s in shape[:3])
    if min(x, y) < TOKEN_STRIDE:
        return (f"{what}: {x} x {y} voxels in-plane (x {z} slices) at `pixdim` is smaller than one "
                f"{TOKEN_STRIDE}-voxel token of the network: it would see padding only. Check the file's header "
                "(voxel size) and `pixdim`.", None)
    if z < MIN_AXIAL_SLICES:
        return None, (f"{what}: only {z} axial slice(s) at `pixdim`: a slab, not a volume; it is segmented slice by "
                      "slice, but check the file's header (voxel size) and `pixdim`.")
    return None, None
