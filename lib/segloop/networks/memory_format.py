"""Channels-last (NDHWC) memory layout for float32 CPU training.

A float32 training step on a CPU spends most of its time in the convolutions' backward pass on
oneDNN. With the network's weights and the batch held channels-last (``torch.channels_last_3d``)
instead of PyTorch's default NCDHW, oneDNN takes the step in less time with the same arithmetic up
to float32 rounding (both CPU networks, 2 threads, no AVX512: ``benchmarks/training_step_precision.py``
times the layouts side by side; the profile is in ``benchmarks/trials.md``). Layers that hand back
the default layout (instance norms) leave the next convolution to take it as it comes.

Used where it was measured: float32 training on a CPU, by trainers that opt in (the automatic
model's; ``SegmentationTrainer.channels_last``). Training under bfloat16 autocast (a CPU with
native bfloat16) or on a GPU keeps the default layout. Inference has its own oneDNN path
(``segloop.networks.onednn``).
"""

import torch
from monai.inferers import SimpleInferer

from segloop.networks.precision import native_bfloat16


def trains_channels_last(device: torch.device, amp_mode: str) -> bool:
    """Whether a training run on ``device`` under ``amp_mode`` (``precision.AMP_MODES``) holds its
    network channels-last: float32 on a CPU, i.e. not bfloat16 autocast (``auto`` with native bfloat16)."""
    device = torch.device(device)
    return device.type == "cpu" and not (amp_mode == "auto" and native_bfloat16(device))


def to_channels_last(network: torch.nn.Module) -> torch.nn.Module:
    """Convert ``network``'s 5-D parameters and buffers in place (the same ``Parameter`` objects, so an
    optimiser built on them keeps working) to channels-last; returns ``network``."""
    return network.to(memory_format=torch.channels_last_3d)


def to_default_layout(network: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`to_channels_last` in place (the network serves inference in the default layout)."""
    return network.to(memory_format=torch.contiguous_format)


class ChannelsLastInferer(SimpleInferer):
    """MONAI's ``SimpleInferer`` that hands the network a channels-last batch (a 5-D input)."""

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        if inputs.dim() == 5:
            inputs = inputs.contiguous(memory_format=torch.channels_last_3d)
        return super().__call__(inputs, network, *args, **kwargs)
