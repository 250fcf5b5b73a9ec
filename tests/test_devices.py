"""The training step on each device: the CPU variant runs everywhere, the CUDA variant (marked ``gpu``) runs where a
GPU is present and is skipped cleanly otherwise. On CUDA the step takes the paths a CPU never does: the teacher in
bf16 autocast, the students under AMP with MONAI's grad scaler. Fused (SDPA) window attention at inference equals
MONAI's explicit attention on every device."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.inferers import SliceInferer

from diffmed_monai.engines import DiffMedTrainer, DistillationInferer
from diffmed_monai.losses import DiffMedLoss
from diffmed_monai.networks import DiffMedDINOv3, DINOv3Teacher

from .conftest import TINY_NET

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
MODALITIES = ("t1", "t1ce", "t2", "flair")


@pytest.mark.parametrize("device", DEVICES)
def test_fused_attention_equals_explicit_attention_at_inference(device):
    torch.manual_seed(0)
    explicit = DiffMedDINOv3(MODALITIES, num_classes=4, **TINY_NET).to(device).eval()
    fused = DiffMedDINOv3(MODALITIES, num_classes=4, **{**TINY_NET, "use_flash_attention": True}).to(device).eval()
    fused.load_state_dict(explicit.state_dict())
    assert fused.shared_student.swin.layers1[0].blocks[0].attn.use_flash_attention
    assert fused.fusion.blocks.blocks[0].attn.use_flash_attention
    x = torch.randn(2, 4, 64, 64, device=device)
    tolerance = 1e-4 if device == "cpu" else 1e-3  # CUDA's fused kernels sum in another order than its matmuls
    with torch.inference_mode():
        got, ref = fused(x), explicit(x)
    torch.testing.assert_close(got, ref, atol=tolerance, rtol=tolerance)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.999


def _batches(n: int, size: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randn(4, size, size, generator=g), "label": torch.randint(0, 4, (1, size, size), generator=g)}
        for _ in range(n)
    ]


def _trainer(net, teacher, device: str = "cpu", num_batches: int = 4, epochs: int = 2, lr: float = 1e-3, **kwargs):
    """``DiffMedTrainer`` of ``net`` on ``num_batches`` random batches (2 per step, 32 x 32), AdamW at ``lr``."""
    return DiffMedTrainer(
        device=torch.device(device),
        max_epochs=epochs,
        train_data_loader=DataLoader(_batches(num_batches), batch_size=2),
        network=net,
        optimizer=torch.optim.AdamW(net.parameters(), lr=lr),
        loss_function=DiffMedLoss(num_modalities=4, teacher_dim=TINY_NET["teacher_dim"]),
        teacher=teacher,
        decollate=False,
        **kwargs,
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_flash_attention", [False, True])
def test_training_step_on_device(device, use_flash_attention):
    torch.manual_seed(0)
    net = DiffMedDINOv3(MODALITIES, num_classes=4, **{**TINY_NET, "use_flash_attention": use_flash_attention}).to(device)
    teacher = DINOv3Teacher(arch="tiny", random_init=True)
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    trainer = _trainer(net, teacher, device, amp=device == "cuda", amp_kwargs={"dtype": torch.bfloat16})
    trainer.run()

    out = trainer.state.output
    assert out["pred"].shape == (2, 4, 32, 32) and out["pred"].device.type == device
    for key in ("loss", "loss_seg", "loss_kd", "loss_mse", "loss_kl"):
        assert torch.isfinite(out[key]).all(), key
    assert not any(k.startswith(("teacher", "u0", "denoised")) for k in out)  # large features are not kept
    for name, value in trainer.teacher.state_dict().items():  # the teacher never changes
        torch.testing.assert_close(value.cpu(), teacher_before[name], rtol=0, atol=0, msg=name)
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v.cpu(), student_before[k].cpu())]
    assert any(k.startswith("specific_students.3.") for k in changed)
    assert any(k.startswith("denoisers.0.") for k in changed) and any(k.startswith("decoder.") for k in changed)


def test_cpu_bf16_training_autocasts_teacher_forward_and_loss_keeps_float32_weights_learns():
    """``cpu_bf16``: the teacher and the students' matrix products run in bf16 on a CPU, weights and gradients stay
    float32, the backward pass is not autocast, and the loss falls on a batch the network overfits."""
    torch.manual_seed(0)
    net = DiffMedDINOv3(MODALITIES, num_classes=4, **TINY_NET)
    teacher = DINOv3Teacher(arch="tiny", random_init=True)
    seen: dict[str, torch.dtype] = {}

    def record(name: str):  # a hook that notes the dtype it sees first and changes nothing
        return lambda *args: seen.setdefault(name, args[-1].dtype) and None

    net.decoder.register_forward_hook(record("decoder"))
    next(m for m in teacher.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(record("teacher"))
    qkv_weight = net.shared_student.swin.layers1[0].blocks[0].attn.qkv.weight
    qkv_weight.register_hook(record("qkv_grad"))

    def autocast_state(grad: torch.Tensor) -> None:  # runs during backward
        seen.setdefault("autocast_in_backward", torch.is_autocast_enabled("cpu"))

    qkv_weight.register_hook(autocast_state)
    trainer = _trainer(net, teacher, num_batches=2, epochs=30, lr=2e-3, cpu_bf16=True)
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss"])))
    trainer.run()

    assert seen == {"teacher": torch.bfloat16, "decoder": torch.bfloat16, "qkv_grad": torch.float32,
                    "autocast_in_backward": False}
    assert not torch.is_autocast_enabled("cpu")  # the autocast region closed with the step
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3]), losses


def test_cpu_bf16_autocasts_in_the_projects_own_inferer_and_loss_and_converts_no_weights():
    """``cpu_bf16`` is a flag of :class:`DistillationInferer` and of the trainer's own loss call: nothing is wrapped
    onto the trainer instance, and the frozen teacher keeps its float32 weights (no in-place dtype conversion)."""
    net, teacher = DiffMedDINOv3(MODALITIES, num_classes=4, **TINY_NET), DINOv3Teacher(arch="tiny", random_init=True)
    trainer = _trainer(net, teacher, cpu_bf16=True)
    assert type(trainer.inferer) is DistillationInferer and trainer.inferer.cpu_bf16
    assert trainer.loss_function == trainer._distillation_loss  # MONAI calls the trainer's own method, unwrapped
    assert all(p.dtype == torch.float32 for p in trainer.teacher.parameters())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    with pytest.raises(ValueError, match="cpu_bf16"):  # a configured inferer must agree with the trainer
        _trainer(net, teacher, cpu_bf16=True, inferer=DistillationInferer(cpu_bf16=False))


def test_distillation_inferer_autocasts_only_cpu_inputs_when_asked():
    seen = []

    def probe(x, modality_mask=None, return_training_outputs=False):
        seen.append(torch.is_autocast_enabled("cpu"))
        return {"pred": x}

    x, tokens = torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 8, 1, 1)
    for cpu_bf16 in (False, True):
        DistillationInferer(cpu_bf16)(x, probe, tokens)
    assert seen == [False, True] and not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("device", DEVICES)
def test_cpu_bf16_acts_on_a_cpu_only_and_is_off_by_default(device):
    net, teacher = DiffMedDINOv3(MODALITIES, num_classes=4, **TINY_NET), DINOv3Teacher(arch="tiny", random_init=True)
    assert not _trainer(net, teacher, device).cpu_bf16
    assert _trainer(net, teacher, device, cpu_bf16=True).cpu_bf16 == (device == "cpu")


@pytest.mark.gpu
def test_gpu_inference_matches_cpu():
    torch.manual_seed(0)
    cpu_net = DiffMedDINOv3(MODALITIES, num_classes=4, **TINY_NET).eval()
    gpu_net = DiffMedDINOv3(MODALITIES, num_classes=4, **{**TINY_NET, "use_flash_attention": True}).cuda().eval()
    gpu_net.load_state_dict(cpu_net.state_dict())
    volume = torch.randn(1, 4, 48, 48, 6)
    inferer = SliceInferer(roi_size=(48, 48), sw_batch_size=4, spatial_dim=2, progress=False)
    with torch.inference_mode():
        ref = inferer(volume, cpu_net)
        got = inferer(volume.cuda(), gpu_net).cpu()
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.999
