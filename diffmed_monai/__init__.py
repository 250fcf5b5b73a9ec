"""diffmed-monai: DiffMedDINOv3 (diffusion-distilled multi-modal DINOv3 students) as a MONAI Bundle plug-in."""

from .errors import install_excepthook

__version__ = "0.1.0"

# the package's refusals (bad checkpoint, missing file, stale store...) end a command's output instead of sitting
# inside MONAI's chained traceback; see diffmed_monai/errors.py (DIFFMED_TRACEBACK=1 shows the traceback)
install_excepthook()
