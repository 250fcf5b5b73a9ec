"""Config keys and sentences that refusals in several layers share (data checks and transforms)."""

from __future__ import annotations

__all__ = ["ALLOW_MISSING_KEY", "missing_modality_hint"]

#: the top-level config key that lets inference and evaluation run a case with a subset of the modality files
ALLOW_MISSING_KEY = "allow_missing_modalities"


def missing_modality_hint() -> str:
    """The sentence every refusal of a missing modality file ends with (it names the config key)."""
    return (
        f"set `{ALLOW_MISSING_KEY}: true` to segment the case with the modalities present (the network is told which "
        "are missing), or check `dataset_dir` and the paths in `datalist`"
    )
