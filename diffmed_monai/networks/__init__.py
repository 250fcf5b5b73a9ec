"""DiffMedDINOv3 networks: frozen DINOv3 teacher, Swin students, fusion, denoisers, decoders."""

from .decoders import MLPDecoder, MultiScaleMLPDecoder, build_decoder
from .denoiser import TokenDenoiser
from .diffmed import DiffMedDINOv3
from .fusion import ModalityProjection, SwinFusion
from .stack import ModalityStack
from .students import SwinStudent
from .teacher import TEACHER_ARCHS, DINOv3Teacher, build_hf_teacher_model, build_timm_teacher_model, teacher_width

__all__ = [
    "DINOv3Teacher",
    "DiffMedDINOv3",
    "MLPDecoder",
    "ModalityStack",
    "ModalityProjection",
    "MultiScaleMLPDecoder",
    "SwinFusion",
    "SwinStudent",
    "TEACHER_ARCHS",
    "TokenDenoiser",
    "build_decoder",
    "build_hf_teacher_model",
    "build_timm_teacher_model",
    "teacher_width",
]
