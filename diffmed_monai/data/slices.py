"""MONAI datasets over a :class:`~diffmed_monai.data.SliceStore`: axial slices for training, volumes for validation.

Both are ``monai.data.Dataset`` over a lazy sequence that reads from the store's memory-mapped arrays when an
item is asked for, so a process holds no voxel data beyond the items in flight: its memory does not grow with the
number of cases (its index is 16 bytes per slice, voxel counts and checksums, and one offset and id per case). Under
DDP each rank builds the same small index and a ``DistributedSampler`` (e.g. MONAI's
``DistributedWeightedRandomSampler``) picks its own slices; the store's files are shared through the page cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from monai.data import Dataset, DistributedWeightedRandomSampler, set_track_meta, worker_init_fn

from .store import CaseRecord, SliceStore

__all__ = ["StoreSliceDataset", "StoreSlices", "StoreVolumeDataset", "StoreVolumes", "untracked_worker_init",
           "weighted_slice_sampler"]


def untracked_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of the training ``DataLoader``: MONAI's own (a different seed for the random transforms of
    each worker) after switching MetaTensor tracking off in that worker process (``monai.data.set_track_meta``).

    The slice transforms need no metadata (nothing is inverted), and MONAI's transforms run with less work on plain
    tensors (``docs/benchmarks.md``). Only the worker processes change; the main process keeps tracking.
    """
    set_track_meta(False)
    worker_init_fn(worker_id)


class StoreSlices(Sequence):
    """The axial slices of some cases of a store, as a read-on-access sequence of dicts.

    Item ``i``: ``{"image": (M, X, Y) float16 ndarray, "label": (1, X, Y) uint8 ndarray, "case_id": str,
    "slice_index": int, "labelled": int}``, slices numbered case after case in ``records`` order. ``labelled`` is 0
    for the slices of an unlabelled case (its label is all 0 and the loss gives it the KD term only), else 1.
    """

    def __init__(self, store: SliceStore, records: Sequence[CaseRecord]) -> None:
        self.store = store
        self.case_ids = [r.case_id for r in records]
        self.offsets = np.concatenate([[0], np.cumsum([r.num_slices for r in records], dtype=np.int64)])
        counts = np.concatenate([r.label_counts for r in records]) if records else np.zeros((0, 1), np.int64)
        #: (S,) int32 voxels of class 0 and of the other classes in each slice
        self.background = counts[:, 0].astype(np.int32)
        self.foreground = counts[:, 1:].sum(axis=1).astype(np.int32)
        #: (S, 2) uint32 recorded CRC-32 of each slice's image and label, checked at every read
        self.checksums = np.concatenate([r.checksums for r in records]) if records else np.zeros((0, 2), np.uint32)
        #: (S,) bool, the slice belongs to a labelled case
        self.has_label = np.repeat([bool(r.has_label) for r in records], [r.num_slices for r in records]).astype(bool)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[str, int]:
        """``(case_id, slice_index)`` of item ``index``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"slice {index} out of range for {n} slices")
        index %= n
        case = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.case_ids[case], int(index - self.offsets[case])

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        case_id, z = self.locate(int(index))
        image, label = self.store.read_slice(case_id, z, self.checksums[int(index) % len(self)])
        return {"image": image, "label": label[None], "case_id": case_id, "slice_index": z,
                "labelled": int(self.has_label[int(index) % len(self)])}


class StoreVolumes(Sequence):
    """Whole cases of a store: item ``{"image": (M, X, Y, Z) float16, "label": (1, X, Y, Z) uint8, "case_id"}``
    (Z axial, last, as MONAI's ``SliceInferer`` with ``spatial_dim=2`` expects)."""

    def __init__(self, store: SliceStore, records: Sequence[CaseRecord]) -> None:
        self.store = store
        self.case_ids = [r.case_id for r in records]
        self.checksums = [r.checksums for r in records]

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        case_id = self.case_ids[index]
        image, label = self.store.read_volume(case_id, self.checksums[index])
        return {
            "image": np.ascontiguousarray(np.moveaxis(image, 0, -1)),
            "label": np.ascontiguousarray(np.moveaxis(label, 0, -1))[None],
            "case_id": case_id,
        }


class _StoreDataset(Dataset):
    """MONAI ``Dataset`` over a read-only view (:attr:`view`) of the datalist's cases in the store."""

    view: type
    default_datalist_key: str

    def __init__(
        self,
        data: Sequence[Mapping],
        store: SliceStore,
        transform: Callable | None = None,
        base_dir: str | None = None,
        datalist_key: str | None = None,
    ) -> None:
        key = datalist_key or self.default_datalist_key
        super().__init__(data=self.view(store, store.records(data, base_dir, key=key)), transform=transform)


class StoreSliceDataset(_StoreDataset):
    """Training slices of the datalist's cases, read from the store; ``transform`` applied per slice.

    Args:
        data: datalist entries (e.g. ``@train#datalist``); each must be complete and up to date in ``store``, else
            :class:`~diffmed_monai.data.StoreError` lists the cases to preprocess.
        store: the :class:`~diffmed_monai.data.SliceStore` (config key ``store``).
        transform: MONAI transforms of one item ``{"image": (M, X, Y), "label": (1, X, Y), "case_id",
            "slice_index"}`` (float16 / uint8 arrays: start with ``EnsureTyped``).
        base_dir: the dataset root for relative paths in ``data`` (config key ``dataset_dir``).
        datalist_key: the config key ``data`` comes from, for error messages.

    ``len(dataset)`` is the number of slices; :meth:`sampling_weights` gives per-slice weights for a weighted
    sampler from the store's per-slice label statistics.
    """

    view = StoreSlices
    default_datalist_key = "train#datalist"

    def sampling_weights(self, labelled_ratio: float, unlabelled_share: float = 0.0) -> np.ndarray:
        """``(S,)`` float64 slice weights that pick slices as ``RandCropByPosNegLabeld(pos=labelled_ratio, neg=1)``
        picks the centre of a one-slice crop.

        With probability ``labelled_ratio / (labelled_ratio + 1)`` a labelled voxel (class > 0) is drawn uniformly,
        otherwise a background voxel (class 0); the slice holding it is the sample. So slice ``z`` weighs
        ``p * fg[z] / sum(fg) + (1 - p) * bg[z] / sum(bg)`` from the store's per-slice voxel counts: slices with
        more tumour are drawn more often. Unlike the volume transform, the draw is over all cases at once (larger
        cases weigh more).

        Semi-supervised: the slices of unlabelled cases (``has_label`` False) share ``unlabelled_share`` of the
        total weight uniformly (config key ``unlabelled_share``), the labelled slices the rest as above; with no
        unlabelled (or no labelled) slice, the other kind takes all the weight.
        """
        if labelled_ratio < 0:
            raise ValueError(f"`labelled_slice_ratio` must be >= 0, got {labelled_ratio}.")
        if not 0.0 <= unlabelled_share <= 1.0:
            raise ValueError(f"`unlabelled_share` must be in [0, 1], got {unlabelled_share}.")
        has_label = self.data.has_label
        if not has_label.any():
            return np.full(len(has_label), 1.0 / max(len(has_label), 1))
        if has_label.all():
            return self._labelled_weights(labelled_ratio, has_label)
        weights = (1.0 - unlabelled_share) * self._labelled_weights(labelled_ratio, has_label)
        weights[~has_label] = unlabelled_share / int((~has_label).sum())
        return weights

    def _labelled_weights(self, labelled_ratio: float, keep: np.ndarray) -> np.ndarray:
        """``(S,)`` weights summing to 1 over the slices in ``keep`` (0 elsewhere), by tumour / background voxels."""
        fg = np.where(keep, self.data.foreground, 0).astype(np.float64)
        bg = np.where(keep, self.data.background, 0).astype(np.float64)
        share = labelled_ratio / (labelled_ratio + 1.0)
        if fg.sum() == 0:
            share = 0.0
        if bg.sum() == 0:
            share = 1.0
        weights = share * fg / max(fg.sum(), 1.0) + (1.0 - share) * bg / max(bg.sum(), 1.0)
        return weights if weights.sum() > 0 else keep / max(int(keep.sum()), 1)


class StoreVolumeDataset(_StoreDataset):
    """Validation volumes of the datalist's cases, read from the store (brain crop, ``(M, X, Y, Z)``).

    Args as :class:`StoreSliceDataset` (``transform`` sees ``{"image": (M, X, Y, Z) float16, "label":
    (1, X, Y, Z) uint8, "case_id"}``).
    """

    view = StoreVolumes
    default_datalist_key = "validate#datalist"


def weighted_slice_sampler(
    dataset: StoreSliceDataset,
    slices_per_volume: int,
    labelled_ratio: float,
    unlabelled_share: float = 0.0,
    num_replicas: int = 1,
    rank: int = 0,
) -> DistributedWeightedRandomSampler:
    """The training sampler (config key ``train#sampler``): MONAI's ``DistributedWeightedRandomSampler`` over
    ``dataset``'s slices with :meth:`StoreSliceDataset.sampling_weights` ``(labelled_ratio, unlabelled_share)``.

    An epoch draws ``slices_per_volume`` slices per case (labelled and unlabelled), as ``RandCropByPosNegLabeld``
    with ``num_samples=slices_per_volume`` did per volume; under DDP the ``num_replicas`` ranks share them, each
    drawing ``ceil(cases * slices_per_volume / num_replicas)`` slices (with replacement) from its own shard.
    """
    if int(slices_per_volume) < 1:
        raise ValueError(f"`slices_per_volume` must be >= 1, got {slices_per_volume}.")
    num_samples = -(-len(dataset.data.case_ids) * int(slices_per_volume) // int(num_replicas))
    return DistributedWeightedRandomSampler(
        dataset,
        weights=dataset.sampling_weights(labelled_ratio, unlabelled_share),
        num_samples_per_rank=num_samples,
        even_divisible=False,
        num_replicas=num_replicas,
        rank=rank,
    )
