"""Precision: bfloat16 autocast where the hardware computes it natively (both models' training,
the prompt model's inference; the automatic model's CPU inference stays float32).

On a CPU with AVX512-BF16 or AMX (oneDNN), bfloat16 autocast makes the prompt model's forward pass
and a training step (forward and backward) faster than float32, with logits close to float32's
(measured by ``benchmarks/training_step_precision.py`` and ``segloop-bench bench latency``).
Without those instructions bfloat16 is emulated and slower than float32, so ``auto`` keeps
float32 there. Weights, optimiser state and losses stay
float32; only the autocast-eligible operations (convolutions, matrix products) run in bfloat16.
A float32 pass on a CPU runs its convolutions on oneDNN (``segloop.networks.onednn``).
"""

import contextlib
import os

import torch
from monai.inferers import SimpleInferer

from segloop.networks.onednn import onednn_convolutions

AMP_MODES = ("auto", "float16", "off")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively (not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available() or not _onednn_isa_allows_bfloat16():
        return False
    # torch.cpu exposes the CPU's instruction sets only under these private names (torch 2.x).
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def _onednn_isa_allows_bfloat16() -> bool:
    """False when ``ONEDNN_MAX_CPU_ISA`` (or its older name ``DNNL_MAX_CPU_ISA``) caps oneDNN below
    AVX512-BF16: the CPU has the instructions, oneDNN may not use them, bfloat16 would be emulated."""
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return cap in ("ALL", "DEFAULT") or any(isa in cap for isa in ("BF16", "FP16", "AMX", "AVX10"))


def autocast_for(device: torch.device, mode: str = "auto"):
    """The autocast context of a pass on ``device`` under ``mode`` (see ``AMP_MODES``):
    ``auto`` -> bfloat16 where native, ``float16`` -> float16 on a GPU only, ``off`` -> float32."""
    if mode == "auto" and native_bfloat16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if mode == "float16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def inference_context(network: torch.nn.Module, device: torch.device, mode: str = "auto", onednn: bool = True):
    """The context of an inference pass of ``network`` on ``device``: :func:`autocast_for` under
    ``mode`` and, when that leaves a CPU pass in float32 and ``onednn`` is on, oneDNN convolutions."""
    device = torch.device(device)
    stack = contextlib.ExitStack()
    autocast = autocast_for(device, mode)
    stack.enter_context(autocast)
    if onednn and device.type == "cpu" and isinstance(autocast, contextlib.nullcontext):
        stack.enter_context(onednn_convolutions(network))
    return stack


class AutocastInferer(SimpleInferer):
    """MONAI's ``SimpleInferer`` under :func:`inference_context`; the logits come back float32."""

    def __init__(self, device: torch.device, mode: str = "auto"):
        super().__init__()
        self.device, self.mode = torch.device(device), mode

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        with inference_context(network, self.device, self.mode):
            return super().__call__(inputs, network, *args, **kwargs).float()
