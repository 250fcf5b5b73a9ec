"""MONAI transforms of diffmed-monai."""

from .io import SaveLabelNiftid, output_path_for, write_nifti_atomic

__all__ = ["SaveLabelNiftid", "output_path_for", "write_nifti_atomic"]
