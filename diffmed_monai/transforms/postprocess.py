"""Label-map post-processing: small enhancing-tumour components relabelled as necrosis / NETC."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from scipy import ndimage

__all__ = ["RelabelSmallComponentsd", "relabel_small_components"]

logger = logging.getLogger(__name__)


def relabel_small_components(
    labels: np.ndarray, source: int, target: int, min_volume: float, spacing: Sequence[float]
) -> tuple[np.ndarray, int]:
    """Relabel every 26-connected component of class ``source`` smaller than ``min_volume`` mm^3 as ``target``.

    ``labels`` ``(X, Y, Z)`` integer class map, ``spacing`` the voxel size in mm. Returns the new map (a copy) and
    the number of components relabelled.
    """
    out = np.array(labels, copy=True)
    mask = out == source
    if min_volume <= 0 or not mask.any():
        return out, 0
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    voxel = float(np.prod(np.asarray(spacing, dtype=np.float64)))
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:] * voxel
    small = np.flatnonzero(sizes < min_volume) + 1
    if len(small):
        out[np.isin(components, small)] = target
    return out, int(len(small))


class RelabelSmallComponentsd(MapTransform):
    """Enhancing-tumour components below ``min_volume`` mm^3 become necrosis / NETC (BraTS winning-entry practice).

    ``d[key]``: ``(1, X, Y, Z)`` (or ``(X, Y, Z)``) class-index map after ``argmax``; the voxel size comes from the
    ``MetaTensor``'s affine (else ``spacing``). ``source``: the class relabelled (the ET class index), ``target``:
    the class it becomes (NCR / NETC). ``min_volume`` 0 disables it (config key ``et_min_volume``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        source: int,
        target: int,
        min_volume: float,
        spacing: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if source == target:
            raise ValueError(f"`source` and `target` classes are both {source}; nothing would change.")
        self.source, self.target, self.min_volume = int(source), int(target), float(min_volume)
        self.spacing = spacing

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.min_volume <= 0:
            return d
        for key in self.key_iterator(d):
            pred = d[key]
            if isinstance(pred, MetaTensor):
                spacing = affine_to_spacing(pred.affine, r=3).tolist()
            elif self.spacing is not None:
                spacing = list(self.spacing)
            else:
                raise ValueError(f"`{key}` has no affine; give `spacing` to RelabelSmallComponentsd.")
            array = np.asarray(pred.detach().cpu() if isinstance(pred, torch.Tensor) else pred)
            squeeze = array.ndim == 4
            labels, count = relabel_small_components(
                array[0] if squeeze else array, self.source, self.target, self.min_volume, spacing
            )
            if count:
                logger.info("%d enhancing component(s) under %g mm^3 relabelled as class %d.", count,
                            self.min_volume, self.target)
            d[key] = convert_to_dst_type(labels[None] if squeeze else labels, pred)[0]
        return d
