"""diffmed-monai: DiffMedDINOv3 (diffusion-distilled multi-modal DINOv3 students) as a MONAI Bundle plug-in."""

__version__ = "0.1.0"
