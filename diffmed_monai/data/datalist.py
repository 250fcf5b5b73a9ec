"""Scan each dataset's official folder layout into MONAI datalists (paths relative to the dataset root).

Every scanner returns ``(cases, skipped)``: ``cases`` is a list of ``{"case_id": str, "image": [path per
modality, in the requested order], "label": path}`` (``label`` absent when the case has none and labels are
not required), ``skipped`` a list of ``(case_folder_or_file, reason)`` for everything that was left out. The
JSON written by :func:`write_datalist` is read with
``monai.data.load_decathlon_datalist(path, data_list_key="training", base_dir=<dataset root>)``.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Sequence

from monai.data import load_decathlon_datalist, partition_dataset

from ..utils import ALLOW_MISSING_KEY, NIFTI_EXTS, strip_nifti_ext

__all__ = [
    "AMOS_MRI_FIRST_ID",
    "BRATS2023_MODALITIES",
    "BRATS_MODALITIES",
    "DATASET_MODALITIES",
    "ISLES22_MODALITIES",
    "load_unlabelled_datalist",
    "scan_amos",
    "scan_brats",
    "scan_folder",
    "prepare_datalist",
    "datalist_entries",
    "read_datalist",
    "scan_isles22",
    "split_cases",
    "write_datalist",
]

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
#: BraTS 2023-2025 (GLI, MEN, MET, PED, SSA): native T1, contrast T1, T2-weighted, T2-FLAIR, in that order
BRATS2023_MODALITIES = ("t1n", "t1c", "t2w", "t2f")
ISLES22_MODALITIES = ("dwi", "adc", "flair")
AMOS_MRI_FIRST_ID = 500  # AMOS22: amos_0001..0499 are CT, amos_0500 and above MRI
#: ``prepare_datalist`` dataset kinds and their default modalities (``folder`` needs them given)
DATASET_MODALITIES: dict[str, tuple[str, ...] | None] = {
    "brats": BRATS_MODALITIES,
    "fets": BRATS_MODALITIES,
    "brats2023": BRATS2023_MODALITIES,
    "isles22": ISLES22_MODALITIES,
    "amos": ("ct",),
    "folder": None,
}
Skipped = list[tuple[str, str]]

logger = logging.getLogger(__name__)


def _as_modalities(modalities: Sequence[str] | str) -> tuple[str, ...]:
    """``("t1", "t2")`` from a sequence or a comma-separated string (as command lines pass it)."""
    if isinstance(modalities, str):
        modalities = modalities.split(",")
    mods = tuple(str(m).strip() for m in modalities if str(m).strip())
    if not mods:
        raise ValueError("No modality given (config key `modalities`).")
    if len(set(mods)) != len(mods):
        raise ValueError(f"Modalities {list(mods)} contain duplicates (config key `modalities`).")
    return mods


def _require_dir(root: str) -> str:
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Dataset folder {root!r} does not exist or is not a folder (config key `dataset_dir`)."
        )
    return root


def _is_nifti(name: str) -> bool:
    return name.endswith(NIFTI_EXTS) and not name.startswith(".")


def _find(folder: str, stem: str) -> str | None:
    """``folder/stem.nii.gz`` or ``folder/stem.nii`` (the former preferred), or ``None``."""
    for ext in NIFTI_EXTS:
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    return None


def _others(folder: str, used: Sequence[str]) -> str:
    """Hint listing the NIfTI files of ``folder`` that were not matched (misnamed files are a common cause)."""
    try:
        names = sorted(n for n in os.listdir(folder) if _is_nifti(n) and n not in {os.path.basename(u) for u in used})
    except OSError:
        return ""
    return f" (other NIfTI files there: {', '.join(names)})" if names else ""


def _entry(case_id: str, images: Sequence[str], label: str | None, root: str) -> dict:
    case = {"case_id": case_id, "image": [os.path.relpath(p, root) for p in images]}
    if label is not None:
        case["label"] = os.path.relpath(label, root)
    return case


def scan_brats(
    root: str, modalities: Sequence[str] = BRATS_MODALITIES, require_label: bool = True, separator: str = "_"
) -> tuple[list[dict], Skipped]:
    """BraTS 2018-2021, FeTS 2021/22 and (``separator="-"``) BraTS 2023-2025 layouts, found at any depth under ``root``.

    A case folder ``<case>`` holds ``<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (or ``.nii``): BraTS 2020/2021
    (``BraTS2021_00000``), BraTS 2018/2019 nested in ``HGG/`` and ``LGG/`` (``Brats18_2013_2_1``), FeTS
    (``FeTS2022_00000``); from 2023 on ``<case>-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (``BraTS-GLI-00000-000``, and the
    MEN, MET, PED, SSA sub-challenges). Only folders holding at least one ``<folder name><separator>*.nii(.gz)``
    file count as cases.
    A case lacking a modality file is skipped with the missing file named; one lacking ``_seg`` is skipped when
    ``require_label`` and otherwise kept without ``"label"``. A case id seen twice is skipped the second time.
    Returns ``(cases, skipped)`` sorted by folder; paths relative to ``root``.
    """
    root = _require_dir(root)
    mods = _as_modalities(modalities)
    folders = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__MACOSX")))
        prefix = os.path.basename(dirpath) + separator
        if dirpath != root and any(_is_nifti(f) and f.startswith(prefix) for f in filenames):
            folders.add(dirpath)
    cases, skipped, seen = [], [], {}
    for folder in sorted(folders):
        case_id = os.path.basename(folder)
        if case_id in seen:
            skipped.append((folder, f"case id {case_id} already found in {seen[case_id]}"))
            continue
        images, missing = [], []
        for modality in mods:
            path = _find(folder, f"{case_id}{separator}{modality}")
            (images.append(path) if path else missing.append(f"{case_id}{separator}{modality}.nii.gz"))
        label = _find(folder, f"{case_id}{separator}seg")
        found = images + ([label] if label else [])
        if missing:
            skipped.append((folder, f"missing modality file(s) {', '.join(missing)}{_others(folder, found)}"))
            continue
        if label is None and require_label:
            skipped.append((folder, f"missing label file {case_id}{separator}seg.nii.gz{_others(folder, found)}"))
            continue
        seen[case_id] = folder
        cases.append(_entry(case_id, images, label, root))
    return cases, skipped


def scan_isles22(
    root: str, modalities: Sequence[str] = ISLES22_MODALITIES, require_label: bool = True
) -> tuple[list[dict], Skipped]:
    """ISLES 2022 BIDS layout under ``root``.

    Images: ``rawdata/sub-strokecaseNNNN/ses-0001/dwi/sub-strokecaseNNNN_ses-0001_{dwi,adc}.nii.gz`` and
    ``rawdata/.../anat/sub-strokecaseNNNN_ses-0001_FLAIR.nii.gz``; labels:
    ``derivatives/sub-strokecaseNNNN/ses-0001/sub-strokecaseNNNN_ses-0001_msk.nii.gz``.
    Case ids are ``sub-strokecaseNNNN_ses-0001``.

    Note: in the raw release FLAIR is NOT co-registered with DWI/ADC (other grid and affine), so the case checks
    refuse it. Register FLAIR to DWI first and put the result at the ``anat`` path, or leave ``flair`` out of
    ``modalities`` (e.g. ``("dwi", "adc")``).
    """
    where = {"dwi": ("dwi", "dwi"), "adc": ("dwi", "adc"), "flair": ("anat", "FLAIR")}
    root = _require_dir(root)
    mods = tuple(m.lower() for m in _as_modalities(modalities))
    unknown = [m for m in mods if m not in where]
    if unknown:
        raise ValueError(
            f"ISLES 2022 has no modality {unknown} (config key `modalities`); use some of {sorted(where)}."
        )
    if not os.path.isdir(os.path.join(root, "rawdata")):
        raise FileNotFoundError(
            f"{root!r} has no rawdata/ folder; point `dataset_dir` at the ISLES 2022 root "
            f"(with rawdata/ and derivatives/)."
        )
    cases, skipped = [], []
    for subject_dir in sorted(glob.glob(os.path.join(root, "rawdata", "sub-*"))):
        subject = os.path.basename(subject_dir)
        sessions = sorted(glob.glob(os.path.join(subject_dir, "ses-*")))
        if not sessions:
            skipped.append((subject_dir, "no ses-* session folder"))
        for session_dir in sessions:
            session = os.path.basename(session_dir)
            stem = f"{subject}_{session}"
            images, missing = [], []
            for modality in mods:
                sub, suffix = where[modality]
                path = _find(os.path.join(session_dir, sub), f"{stem}_{suffix}")
                (images.append(path) if path else missing.append(f"{sub}/{stem}_{suffix}.nii.gz"))
            if missing:
                skipped.append((session_dir, f"missing modality file(s) {', '.join(missing)}"))
                continue
            label = _find(os.path.join(root, "derivatives", subject, session), f"{stem}_msk")
            if label is None and require_label:
                label_path = f"derivatives/{subject}/{session}/{stem}_msk.nii.gz"
                skipped.append((session_dir, f"missing label file {label_path}"))
                continue
            cases.append(_entry(stem, images, label, root))
    return cases, skipped


def scan_amos(root: str, modality: str = "ct", require_label: bool = True) -> tuple[list[dict], Skipped]:
    """AMOS22 layout: ``imagesTr/amos_NNNN.nii.gz`` + ``labelsTr/amos_NNNN.nii.gz`` and ``imagesVa``/``labelsVa``.

    Ids below 500 are CT, 500 and above MRI; only ``modality`` ("ct" or "mri") is returned (the others are not
    reported as skipped). Each case has a one-element ``image`` list.
    """
    modality = str(modality).lower()
    if modality not in ("ct", "mri"):
        raise ValueError(f"AMOS modality must be 'ct' or 'mri' (config key `modalities`), got {modality!r}.")
    root = _require_dir(root)
    if not any(os.path.isdir(os.path.join(root, d)) for d in ("imagesTr", "imagesVa")):
        raise FileNotFoundError(
            f"{root!r} has no imagesTr/ or imagesVa/ folder; point `dataset_dir` at the AMOS22 root."
        )
    cases, skipped = [], []
    for images_dir, labels_dir in (("imagesTr", "labelsTr"), ("imagesVa", "labelsVa")):
        for path in sorted(glob.glob(os.path.join(root, images_dir, "amos_*.nii*"))):
            case_id = strip_nifti_ext(os.path.basename(path))
            match = re.fullmatch(r"amos_(\d+)", case_id)
            if match is None or not _is_nifti(os.path.basename(path)):
                skipped.append((path, "file name is not amos_<number>.nii.gz"))
                continue
            if (int(match.group(1)) < AMOS_MRI_FIRST_ID) != (modality == "ct"):
                continue
            label = _find(os.path.join(root, labels_dir), case_id)
            if label is None and require_label:
                skipped.append((path, f"missing label file {labels_dir}/{case_id}.nii.gz"))
                continue
            cases.append(_entry(case_id, [path], label, root))
    return cases, skipped


def scan_folder(root: str, modalities: Sequence[str], allow_missing: bool = False) -> tuple[list[dict], Skipped]:
    """Inference inputs under ``root`` (no labels), in two accepted forms, mixed freely:

    - one sub-folder per case holding one ``*_<modality>.nii(.gz)`` (BraTS 2018-2021) or ``*-<modality>.nii(.gz)``
      (BraTS 2023 onward: ``BraTS-GLI-00000-000-t1n.nii.gz``) file per modality, giving
      ``{"case_id": <folder>, "image": ["<folder>/<file>", ...]}`` in ``modalities`` order;
    - one 4D NIfTI per case directly in ``root``, modalities on the last axis, giving
      ``{"case_id": <file stem>, "image": "<file>"}`` (the volume count is checked by ``check_case``).

    A folder with an ambiguous (several matching files) modality is skipped with the reason; so is one with a
    missing modality unless ``allow_missing`` (config key ``allow_missing_modalities``), which puts ``None`` in its
    place (a folder without any modality file is still skipped).
    """
    root = _require_dir(root)
    mods = _as_modalities(modalities)
    cases, skipped = [], []
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if entry.startswith("."):
            continue
        if os.path.isdir(path):
            files = sorted(f for f in os.listdir(path) if _is_nifti(f))
            images, problems = [], []
            for modality in mods:
                hits = [f for f in files if strip_nifti_ext(f).endswith((f"_{modality}", f"-{modality}"))]
                if len(hits) == 1:
                    images.append(os.path.join(entry, hits[0]))
                elif hits:
                    names = ", ".join(hits)
                    problems.append(f"several *_{modality} or *-{modality} files ({names})")
                elif allow_missing:
                    images.append(None)
                else:
                    problems.append(
                        f"no *_{modality}.nii.gz or *-{modality}.nii.gz file (set `{ALLOW_MISSING_KEY}: true` to "
                        "segment it with the modalities present)"
                    )
            if not problems and not any(images):
                problems.append(f"no image file of the modalities {list(mods)}")
            if problems:
                skipped.append((path, f"case {entry}: {'; '.join(problems)}"))
                continue
            cases.append({"case_id": entry, "image": images})
        elif _is_nifti(entry):
            cases.append({"case_id": strip_nifti_ext(entry), "image": entry})
    return cases, skipped


def split_cases(cases: Sequence[dict], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic random split into ``(train, val)`` by ``monai.data.partition_dataset``.

    Cases are sorted by ``case_id`` (when all have one) before the seeded shuffle, so the split does not depend on
    file-system order. ``round(n * val_fraction)`` validation cases, at least one when ``val_fraction > 0`` and there
    are two or more cases, and then at least one training case.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    order = list(cases)
    if not order:
        return [], []
    if all(isinstance(c, dict) and "case_id" in c for c in order):
        order.sort(key=lambda c: str(c["case_id"]))
    n_val = int(round(len(order) * float(val_fraction)))
    if val_fraction > 0 and len(order) >= 2:
        n_val = min(max(n_val, 1), len(order) - 1)
    # ratios in case counts, so partition_dataset's rounding gives exactly n_val validation cases
    val, train = partition_dataset(order, ratios=[n_val, len(order) - n_val], shuffle=True, seed=seed)
    return train, val


def read_datalist(path: str, list_key: str, base_dir: str | None = None, key: str = "datalist") -> list[dict]:
    """The ``list_key`` list of the datalist JSON ``path`` (:func:`datalist_entries`), paths joined to ``base_dir``
    by MONAI's ``load_decathlon_datalist`` (the bundle's training and evaluation lists)."""
    datalist_entries(path, list_key, key)
    return load_decathlon_datalist(path, data_list_key=list_key, base_dir=base_dir)


def datalist_entries(path: str, list_key: str, key: str = "datalist", optional: bool = False) -> list[dict]:
    """The ``list_key`` list of the datalist JSON ``path`` as written (paths not joined).

    A missing or unreadable file, invalid JSON (a truncated file), a missing list (``[]`` instead when
    ``optional``) or entries that are not dicts with ``image`` are a ``ValueError`` naming the file, the line and
    the config ``key`` (MONAI's loader would raise a bare ``JSONDecodeError``).
    """
    path = os.fspath(path)
    try:
        with open(path) as f:
            content = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"Datalist {path!r} does not exist (config key `{key}`).") from None
    except OSError as err:
        raise ValueError(f"Datalist {path!r} cannot be read ({err.strerror}; config key `{key}`).") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"Datalist {path!r} is not valid JSON ({err}); the file is truncated or was edited by "
                         f"hand: fix it or write it again with prepare_datalist (config key `{key}`).") from None
    if optional and isinstance(content, dict) and content.get(list_key) is None:
        return []
    if not isinstance(content, dict) or not isinstance(content.get(list_key), list):
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"Datalist {path!r} has no {list_key!r} list (it holds {found}; config key `{key}`).")
    for i, entry in enumerate(content[list_key]):
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"Datalist {path!r}: entry {i} of {list_key!r} is not a dict with an 'image' key "
                             f"({entry!r:.120}; config key `{key}`).")
    return content[list_key]


def write_datalist(
    path: str,
    train: Sequence[dict],
    val: Sequence[dict],
    test: Sequence[dict] | None = None,
    unlabelled: Sequence[dict] | None = None,
) -> str:
    """Write ``{"training": [...], "validation": [...], "testing": [...]}`` as JSON (4-space indent); return ``path``.

    Paths stay as given (relative to the dataset root from the scanners): load with
    ``load_decathlon_datalist(path, data_list_key="training", base_dir=<dataset root>)``. ``unlabelled``: cases
    without ``label`` for distillation only, written as an ``"unlabelled"`` list (read by
    :func:`load_unlabelled_datalist`); a ``label`` in them is refused.
    """
    content = {"training": list(train), "validation": list(val), "testing": list(test or [])}
    if unlabelled:
        labelled = [c for c in unlabelled if isinstance(c, dict) and c.get("label")]
        if labelled:
            raise ValueError(f"Datalist 'unlabelled' entries must have no 'label', got {labelled[0]!r}.")
        content["unlabelled"] = [{k: v for k, v in c.items() if k != "unlabelled"} for c in unlabelled]
    for key, items in content.items():
        bad = [c for c in items if not isinstance(c, dict) or "image" not in c]
        if bad:
            raise ValueError(f"Datalist {key!r} entries must be dicts with an 'image' key, got {bad[0]!r}.")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(content, f, indent=4)
        f.write("\n")
    return path


def prepare_datalist(
    dataset: str,
    root: str,
    output: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    modalities: Sequence[str] | str | None = None,
    require_label: bool = True,
) -> str:
    """Scan ``root`` in the official layout of ``dataset`` and write a datalist JSON; return its path.

    Args:
        dataset: ``brats`` (BraTS 2018-2021, also HGG/LGG), ``fets`` (the same layout), ``brats2023`` (BraTS
            2023-2025 GLI, MEN, MET, PED and SSA, files named ``<case>-t1n.nii.gz`` and so on), ``isles22``,
            ``amos`` or ``folder`` (inference inputs, one folder or one 4D file per case, no labels).
        root: the dataset root; the datalist paths are relative to it (use it as the bundle's ``dataset_dir``).
        output: datalist path (default ``<root>/datalist.json``).
        val_fraction: fraction of the cases in the validation list (a deterministic split, :func:`split_cases`);
            the validation cases are also written as ``testing`` so inference and evaluation can run on them
            (``folder`` writes every case to ``testing`` only).
        seed: seed of the train/validation split.
        modalities: list or comma-separated string; defaults per dataset (BraTS ``t1,t1ce,t2,flair``, BraTS 2023
            ``t1n,t1c,t2w,t2f``, ISLES ``dwi,adc,flair``); ``amos`` takes ``ct`` or ``mri``; ``folder`` needs it.
        require_label: skip cases without a label (otherwise keep them without ``label``).

    Logs the number of cases, the split, and every skipped case with its reason.
    """
    dataset = str(dataset).lower()
    if dataset not in DATASET_MODALITIES:
        raise ValueError(f"Unknown dataset {dataset!r}; use one of {', '.join(DATASET_MODALITIES)}.")
    mods = _as_modalities(modalities) if modalities else DATASET_MODALITIES[dataset]
    if dataset in ("brats", "fets"):
        cases, skipped = scan_brats(root, mods, require_label=require_label)
    elif dataset == "brats2023":
        cases, skipped = scan_brats(root, mods, require_label=require_label, separator="-")
    elif dataset == "isles22":
        cases, skipped = scan_isles22(root, mods, require_label=require_label)
    elif dataset == "amos":
        if len(mods) != 1:
            raise ValueError(f"AMOS takes one modality, 'ct' or 'mri' (--modalities), got {list(mods)}.")
        cases, skipped = scan_amos(root, mods[0], require_label=require_label)
    else:
        if not mods:
            raise ValueError("dataset 'folder' needs --modalities, e.g. --modalities t1,t1ce,t2,flair")
        cases, skipped = scan_folder(root, mods)
    for folder, reason in skipped:
        logger.warning("skipped %s: %s", folder, reason)
    if not cases:
        raise ValueError(
            f"No usable case found under {root} for dataset {dataset!r} (modalities {list(mods)}); "
            f"{len(skipped)} skipped."
        )
    output = output or os.path.join(root, "datalist.json")
    if dataset == "folder":
        train, val, test = [], [], cases
        split = f"{len(test)} testing"
    else:
        train, val = split_cases(cases, val_fraction=val_fraction, seed=seed)
        test = val
        split = f"{len(train)} training, {len(val)} validation (also testing)"
    path = write_datalist(output, train, val, test=test)
    logger.info(
        "%s: %d case(s) with modalities %s: %s; %d skipped -> %s (paths relative to %s: use it as `dataset_dir`)",
        dataset, len(cases), list(mods), split, len(skipped), path, root,
    )
    return path


def load_unlabelled_datalist(
    datalist: str, base_dir: str | None = None, enabled: bool = True, key: str = "unlabelled"
) -> list[dict]:
    """The datalist's unlabelled cases (config key ``train#unlabelled``), for distillation only; ``[]`` unless
    ``enabled`` (config key ``use_unlabelled``).

    ``datalist`` is a MONAI (Decathlon-style) JSON file; its optional ``key`` list holds entries like the training
    ones (``{"image": [...], "case_id": ...}``) but without ``label``. Returns ``[]`` when the list is absent; each
    returned entry carries ``"unlabelled": True``, which the :class:`~diffmed_monai.data.SliceStore` requires to
    store a case without a label (its label slices are all 0 and the training loss gives them KD only). Paths are
    joined to ``base_dir`` as ``monai.data.load_decathlon_datalist`` joins them.
    """
    if not enabled:
        return []
    entries = datalist_entries(datalist, key, optional=True)  # readable JSON, dicts with 'image'
    if not entries:
        return []
    bad = [c for c in entries if c.get("label")]
    if bad:
        raise ValueError(
            f"{datalist}: entries of {key!r} must be dicts with 'image' and no 'label' (labelled cases belong in "
            f"'training'), got {bad[0]!r}."
        )
    cases = load_decathlon_datalist(datalist, is_segmentation=False, data_list_key=key, base_dir=base_dir)
    return [{**c, "unlabelled": True} for c in cases]
