"""MONAI transforms of diffmed-monai."""

from .io import PREDICTION_DESCRIPTION, SaveLabelNiftid, is_own_prediction, output_path_for, write_nifti_atomic

__all__ = ["PREDICTION_DESCRIPTION", "SaveLabelNiftid", "is_own_prediction", "output_path_for", "write_nifti_atomic"]
