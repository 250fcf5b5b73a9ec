"""One PNG per case: axial, coronal and sagittal slices through the largest predicted lesion, with the label map
as a labelled colour overlay on FLAIR and T1c (and the ground truth beside the prediction when evaluating).

matplotlib is optional (``pip install diffmed-monai[plots]``), imported with MONAI's ``optional_import``: without
it the transform says once that no PNG is written and passes the data on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import optional_import
from nibabel import orientations
from scipy import ndimage

from ..utils import write_atomic
from .io import case_id_of_item, output_path_for

__all__ = ["PNG_SOFTWARE", "SaveCasePNGd", "default_png_modalities", "is_own_png", "lesion_centre"]

logger = logging.getLogger(__name__)

#: the PNG ``Software`` text of every picture written here (how an earlier one is recognised for ``overwrite``)
PNG_SOFTWARE = "diffmed-monai case picture"
#: modality names shown by default, first match of each group: FLAIR, then contrast-enhanced T1
_SHOWN = (("flair", "t2f", "t2_flair"), ("t1ce", "t1c", "t1gd", "t1_ce"))
_VIEWS = ("axial", "coronal", "sagittal")
_COLOURS = ("#e41a1c", "#4daf4a", "#ffd92f", "#377eb8", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#00ced1")


def class_colour(index: int) -> str:
    """The colour of foreground class ``index`` (1, 2, ...) in every picture: the overlays, their legends and the
    per-class Dice curves of ``progress.png``."""
    return _COLOURS[(index - 1) % len(_COLOURS)]


def default_png_modalities(modalities: Sequence[str]) -> list[str]:
    """FLAIR and T1c by their usual names (BraTS 2021 ``flair``/``t1ce``, 2023 ``t2f``/``t1c``), else the first
    two modalities."""
    names = [str(m) for m in modalities]
    chosen = [next((n for n in names if n.lower() in group), None) for group in _SHOWN]
    chosen = [c for c in chosen if c is not None]
    return chosen if len(chosen) == 2 else names[:2]


def is_own_png(path: str) -> bool:
    """Whether ``path`` is a PNG written by :class:`SaveCasePNGd` (its ``Software`` text chunk)."""
    image_module, has_pil = optional_import("PIL.Image")
    if not has_pil:
        return False
    try:
        with image_module.open(path) as image:
            return image.format == "PNG" and image.text.get("Software") == PNG_SOFTWARE
    except Exception:  # not a PNG, unreadable: not ours
        return False


def lesion_centre(labels: np.ndarray) -> tuple[int, int, int] | None:
    """Voxel ``(x, y, z)`` at the centre of mass of the largest 26-connected non-zero component of ``labels``
    ``(X, Y, Z)`` (snapped to a voxel of that component), or ``None`` when ``labels`` is all zero."""
    mask = np.asarray(labels) > 0
    if not mask.any():
        return None
    components, _ = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
    voxels = np.argwhere(components == largest)
    centre = voxels.mean(axis=0)
    return tuple(int(v) for v in voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))])


def _as_float_array(data) -> np.ndarray:
    """A tensor or array as a float32 NumPy array (on the CPU)."""
    return np.asarray(data.detach().cpu() if isinstance(data, torch.Tensor) else data, dtype=np.float32)


def _to_ras(array: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    """``(..., X, Y, Z)`` voxel array reordered and flipped so that its axes run toward R, A and S (nibabel's
    ``apply_orientation``, which works on the leading axes: the channel axes move behind the spatial ones for it)."""
    if affine is None:
        return array
    ornt = orientations.ornt_transform(orientations.io_orientation(affine), orientations.axcodes2ornt("RAS"))
    lead = list(range(array.ndim - 3))
    behind = [3 + i for i in lead]
    out = orientations.apply_orientation(np.moveaxis(array, lead, behind), ornt)
    return np.ascontiguousarray(np.moveaxis(out, behind, lead))


def _ras_spacing(affine: np.ndarray | None) -> np.ndarray:
    """Voxel size in mm along the R, A, S axes of the array :func:`_to_ras` returns."""
    if affine is None:
        return np.ones(3)
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    ornt = orientations.io_orientation(affine)
    return spacing[np.argsort(ornt[:, 0])]


def _window(volume: np.ndarray) -> tuple[float, float]:
    values = volume[volume != 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, (0.5, 99.5))
    return float(low), float(high if high > low else low + 1.0)


def _cut(volume: np.ndarray, view: str, centre: Sequence[int]) -> np.ndarray:
    """The ``view`` slice of an RAS ``(X, Y, Z)`` volume through ``centre``, rotated for display (anterior or
    superior up)."""
    x, y, z = centre
    plane = {"axial": volume[:, :, z], "coronal": volume[:, y, :], "sagittal": volume[x, :, :]}[view]
    return np.rot90(plane)


class SaveCasePNGd(MapTransform):
    """Write ``<output_dir>/<case_id>.png``: slices through the largest predicted lesion with the label overlay.

    The item holds ``image`` ``(M, X, Y, Z)`` and ``pred`` (and optionally ``label``) ``(1, X, Y, Z)`` class-index
    maps, all on one voxel grid (a ``MetaTensor`` affine orients them to RAS). Rows: the modalities ``show`` (default
    :func:`default_png_modalities`: FLAIR and T1c); columns: axial, coronal and sagittal slices through the centre of
    the largest connected predicted lesion (the reference's when nothing is predicted, the volume centre when
    neither has one); with ``label_key`` each view shows the ground truth beside the prediction. Classes are drawn in
    fixed colours and named in the legend (``class_names``); an absent modality (``modalities_present``) is titled
    as missing. The file is written atomically and replaces an existing file only if ``overwrite`` is true and the
    file is a picture written here (:func:`is_own_png`); a foreign file is an error naming ``output_dir``.

    Args:
        keys: the prediction key (``pred``).
        output_dir: the folder of the PNGs.
        modalities: the M channel names of ``image``.
        class_names: one name per class index, background first.
        show: the modality names drawn (two by default).
        label_key: ground-truth key (evaluation) or ``None`` (inference).
        case_id_key: the item's case id; without it, the image file name stem.
    """

    def __init__(
        self,
        keys: Sequence[str] | str,
        output_dir: str,
        modalities: Sequence[str],
        class_names: Sequence[str],
        show: Sequence[str] | None = None,
        image_key: str = "image",
        label_key: str | None = None,
        case_id_key: str = "case_id",
        present_key: str = "modalities_present",
        overwrite: bool = False,
        dpi: int = 100,
    ) -> None:
        super().__init__(keys)
        self.output_dir = output_dir
        self.modalities = [str(m) for m in modalities]
        self.class_names = [str(c) for c in class_names]
        self.show = list(show) if show else default_png_modalities(self.modalities)
        unknown = [s for s in self.show if s not in self.modalities]
        if unknown:
            raise ValueError(f"`png_modalities` {unknown} are not in `modalities` {self.modalities}.")
        self.image_key, self.label_key = image_key, label_key
        self.case_id_key, self.present_key = case_id_key, present_key
        self.overwrite, self.dpi = bool(overwrite), int(dpi)
        self.plt, self.has_matplotlib = optional_import("matplotlib.pyplot")
        self.told_missing = False

    def path_for(self, case_id: str) -> str:
        return output_path_for(self.output_dir, case_id, postfix="", ext=".png")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not self.has_matplotlib:
            if not self.told_missing:
                logger.warning("matplotlib is not installed: no case PNGs are written (config key `save_png`; "
                               "pip install diffmed-monai[plots]).")
                self.told_missing = True
            return d
        for key in self.key_iterator(d):
            d[f"{key}_png"] = self.write(d, key)
        return d

    def write(self, d: Mapping, key: str) -> str:
        """Draw and write the picture of item ``d``; return its path."""
        case_id = case_id_of_item(d, self.case_id_key, self.image_key)
        path = self.path_for(case_id)
        if os.path.lexists(path) and not (self.overwrite and is_own_png(path)):
            raise ValueError(f"Case {case_id}: {path} already exists and was left as it is; choose another "
                             "`output_dir` (or `overwrite` true to replace pictures written by an earlier run).")
        pred_tensor = d[key]
        affine = np.asarray(pred_tensor.affine) if isinstance(pred_tensor, MetaTensor) else None
        pred = _to_ras(_as_float_array(pred_tensor)[0], affine).round().astype(np.int64)
        image = _to_ras(_as_float_array(d[self.image_key]), affine)
        label = None
        if self.label_key and self.label_key in d:
            label = _to_ras(_as_float_array(d[self.label_key])[0], affine).round().astype(np.int64)
        if image.shape[1:] != pred.shape or (label is not None and label.shape != pred.shape):
            raise ValueError(f"Case {case_id}: image {image.shape[1:]}, prediction {pred.shape} and label "
                             f"{None if label is None else label.shape} are not on one grid; no picture.")
        spacing = _ras_spacing(affine)
        centre = lesion_centre(pred) or (lesion_centre(label) if label is not None else None)
        centre = centre or tuple(s // 2 for s in pred.shape)
        present = str(d.get(self.present_key) or "+".join(self.modalities)).split("+")
        figure = self._draw(case_id, image, pred, label, centre, present, spacing)
        os.makedirs(self.output_dir, exist_ok=True)
        write_atomic(path, lambda f: figure.savefig(f, format="png", dpi=self.dpi, metadata={"Software": PNG_SOFTWARE}),
                     key="output_dir")
        self.plt.close(figure)
        logger.info("Case %s: picture %s", case_id, path)
        return path

    def _draw(self, case_id, image, pred, label, centre, present, spacing):
        plt = self.plt
        plt.switch_backend("Agg")
        colours = [class_colour(c) for c in range(1, len(self.class_names))]
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch

        cmap = ListedColormap(colours)
        maps = [("prediction", pred)] + ([("ground truth", label)] if label is not None else [])
        ncols = len(_VIEWS) * len(maps)
        figure, axes = plt.subplots(len(self.show), ncols, figsize=(2.6 * ncols, 3.0 * len(self.show) + 0.8),
                                    squeeze=False)
        sx, sy, sz = (float(v) for v in spacing)
        aspect = {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}  # rows over columns, in mm
        for row, name in enumerate(self.show):
            volume = image[self.modalities.index(name)]
            low, high = _window(volume)
            for v, view in enumerate(_VIEWS):
                for k, (what, labels) in enumerate(maps):
                    axis = axes[row, v * len(maps) + k]
                    plane = _cut(volume, view, centre)
                    axis.imshow(np.where(plane == 0, low, plane), cmap="gray", vmin=low, vmax=high,
                                interpolation="nearest", aspect=aspect[view])
                    overlay = _cut(labels, view, centre)
                    axis.imshow(np.ma.masked_where(overlay <= 0, overlay - 1), cmap=cmap, vmin=0,
                                vmax=len(colours) - 1, alpha=0.45, interpolation="nearest", aspect=aspect[view])
                    missing = "" if name in present else " (missing)"
                    axis.set_title(f"{name}{missing} · {view}" + (f" · {what}" if label is not None else ""),
                                   fontsize=8)
                    axis.axis("off")
        handles = [Patch(color=c, label=n) for c, n in zip(colours, self.class_names[1:])]
        absent = [m for m in self.modalities if m not in present]
        title = f"{case_id}: slices through the largest predicted lesion at voxel {tuple(centre)} (RAS)"
        if absent:
            title += f"; missing modalities: {', '.join(absent)}"
        figure.suptitle(title, fontsize=9)
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
        figure.tight_layout(rect=(0, 0.05, 1, 0.95))
        return figure
