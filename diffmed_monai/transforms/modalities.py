"""Cases with a subset of the modality files: which are present, and zero channels in place of the others.

Inference and evaluation run a case that lacks some modality files when the config key
``allow_missing_modalities`` is true: :class:`SelectPresentModalitiesd` (before ``LoadImaged``) keeps the files
that exist and records the presence mask, :class:`FillMissingModalitiesd` (after it) puts an all-zero channel on
the grid of the present modalities in place of each missing one, so that every later transform sees M channels,
and the network gets the mask (``modality_mask``, through :class:`~diffmed_monai.engines.ModalityMaskBatch`).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..utils import missing_modality_hint

__all__ = ["FillMissingModalitiesd", "SelectPresentModalitiesd"]


class SelectPresentModalitiesd(MapTransform):
    """Keep the modality files that exist; record which modalities are present.

    ``d[key]`` is a list of M paths in ``modalities`` order (an entry may be ``None`` or name a file that does not
    exist) or one path (a 4D file or a single modality: all present). Output: ``d[key]`` the list of present paths
    (the string itself when only one), ``d[mask_key]`` a float ``(M,)`` tensor with 1 for present, and
    ``d[present_key]`` the present names joined by ``+`` (e.g. ``"t1ce+t2+flair"``). Relative paths are joined to
    ``base_dir`` (config key ``dataset_dir``; MONAI's datalist loader leaves a list holding ``null`` unjoined).
    A missing file is a ``ValueError`` naming the file and the config key
    ``allow_missing_modalities`` unless ``allow_missing``; no present file at all is always one.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str],
        allow_missing: bool = False,
        mask_key: str = "modality_mask",
        present_key: str = "modalities_present",
        base_dir: str | None = None,
    ) -> None:
        super().__init__(keys)
        self.base_dir = base_dir
        self.modalities = [str(m) for m in modalities]
        self.allow_missing = bool(allow_missing)
        self.mask_key = mask_key
        self.present_key = present_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            entry = d[key]
            m = len(self.modalities)
            if isinstance(entry, (list, tuple)) and len(entry) == 1 and m > 1:
                entry = entry[0]  # one 4D file
            if not isinstance(entry, (list, tuple)):
                d[self.mask_key] = torch.ones(m)
                d[self.present_key] = "+".join(self.modalities)
                continue
            if len(entry) != m:
                raise ValueError(
                    f"{len(entry)} image files {list(entry)} for {m} modalities {self.modalities} (config key "
                    "`modalities`)."
                )
            entry = [None if p is None else os.path.join(self.base_dir or "", os.fspath(p)) for p in entry]
            keep = [p is not None and os.path.isfile(p) for p in entry]
            missing = [f"{name} ({path})" for name, path, k in zip(self.modalities, entry, keep) if not k]
            if missing and not self.allow_missing:
                raise ValueError(f"Missing modality file(s) {', '.join(missing)}; {missing_modality_hint()}.")
            if not any(keep):
                raise ValueError(f"None of the modality files {list(entry)} exists (check `dataset_dir`).")
            present = [p for p, k in zip(entry, keep) if k]
            d[key] = present if len(present) > 1 else present[0]
            d[self.mask_key] = torch.tensor(keep, dtype=torch.float32)
            d[self.present_key] = "+".join(n for n, k in zip(self.modalities, keep) if k)
        return d


class FillMissingModalitiesd(MapTransform):
    """Insert an all-zero channel for each absent modality: ``(P, *spatial)`` -> ``(M, *spatial)``.

    ``d[mask_key]`` ``(M,)`` marks the present modalities (set by :class:`SelectPresentModalitiesd`); ``d[key]``
    holds their P channels in order. The zero channels lie on the present modalities' grid, and a ``MetaTensor``
    keeps its metadata and applied operations, so later transforms (and their inverses) work as for a full case.
    A missing ``mask_key`` means every modality is present (nothing to do).
    """

    def __init__(self, keys: KeysCollection, mask_key: str = "modality_mask") -> None:
        super().__init__(keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.mask_key not in d:
            return d
        mask = torch.as_tensor(d[self.mask_key]).bool().flatten()
        for key in self.key_iterator(d):
            image = d[key]
            present = int(mask.sum())
            if image.shape[0] == len(mask):
                continue
            if image.shape[0] != present:
                raise ValueError(
                    f"`{key}` has {image.shape[0]} channels but {present} modalities are marked present."
                )
            x = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
            full = x.new_zeros((len(mask), *x.shape[1:]))
            full[mask] = x
            if isinstance(image, MetaTensor):
                full = MetaTensor(full, meta=dict(image.meta), applied_operations=list(image.applied_operations))
            d[key] = full
        return d
