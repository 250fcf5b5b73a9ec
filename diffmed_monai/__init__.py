"""diffmed-monai: DiffMedDINOv3 (diffusion-distilled multi-modal DINOv3 students) as a MONAI Bundle plug-in.

The subpackages load on first attribute access (PEP 562), so the bundle configs need only ``$import diffmed_monai``
to write ``diffmed_monai.data.read_datalist(...)``, while ``import diffmed_monai`` stays free of torch and MONAI.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

#: The subpackages and modules reachable as ``diffmed_monai.<name>`` without importing them first.
SUBMODULES = ("data", "engines", "errors", "inferers", "losses", "metrics", "networks", "transforms", "utils")


def __getattr__(name: str) -> ModuleType:
    if name in SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *SUBMODULES])
