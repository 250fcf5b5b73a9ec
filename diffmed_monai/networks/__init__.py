"""DiffMedDINOv3 networks: frozen DINOv3 teacher, Swin students, fusion, denoisers, decoders."""

from .decoders import MLPDecoder, MultiScaleMLPDecoder, build_decoder
from .diffmed import DiffMedDINOv3
from .diffusion import ModalityProjection, SwinFusion, TokenDenoiser
from .students import SwinStudent
from .teacher import TEACHER_ARCHS, DINOv3Teacher, TeacherArch, build_timm_teacher_model, build_tiny_hf_teacher_model

__all__ = [
    "DINOv3Teacher",
    "DiffMedDINOv3",
    "MLPDecoder",
    "ModalityProjection",
    "MultiScaleMLPDecoder",
    "SwinFusion",
    "SwinStudent",
    "TEACHER_ARCHS",
    "TeacherArch",
    "TokenDenoiser",
    "build_decoder",
    "build_timm_teacher_model",
    "build_tiny_hf_teacher_model",
]
