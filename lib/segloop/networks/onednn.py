"""Float32 CPU inference with every 3D convolution on oneDNN.

PyTorch sends a float32 CPU ``conv3d`` of a single image to its native ("slow3d") kernel
whenever ``batch x channels x depth x height`` is at most 20480 (a heuristic tuned for 2D
convolutions, in ``ConvParams::use_mkldnn``). The prompt model's full-resolution layers have 5 to 8
channels, so on a 48^3 window every one of them takes the native path. Handing the convolution a
oneDNN tensor makes PyTorch run oneDNN's kernel instead, which is faster on these thin layers and
gives the native path's logits to float32 rounding (``segloop-bench bench latency`` times whole
clicks both ways on a trained model; results in ``benchmarks/results/bench_latency/``). The automatic
model's windows (``unetr_cpu``, ``segresnet``) take the same slow native path, so its CPU infer
task registers the same hooks.

Only for inference: under autograd the hooks step aside (oneDNN tensors carry no gradients here),
and under bfloat16 autocast PyTorch already takes oneDNN's path.
"""

import contextlib
from typing import Iterator, List

import torch
from torch.utils.hooks import RemovableHandle


def _to_onednn(module: torch.nn.Module, args):
    x = args[0]
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.is_mkldnn:
        return None
    if torch.is_grad_enabled() or torch.is_autocast_enabled("cpu"):
        return None
    return (x.as_subclass(torch.Tensor).contiguous().to_mkldnn(), *args[1:])  # MetaTensor -> plain tensor


def _to_dense(module: torch.nn.Module, args, output):
    return output.to_dense() if output.is_mkldnn else None


def register_onednn_convolutions(network: torch.nn.Module) -> List[RemovableHandle]:
    """Run every ``Conv3d`` of ``network`` on oneDNN from now on, in float32 CPU inference: its input
    becomes a oneDNN tensor and its output a dense one again, so the layers around it (instance
    norms, activations, MONAI blocks) see ordinary tensors. Returns the hooks' handles."""
    handles: List[RemovableHandle] = []
    if torch.backends.mkldnn.is_available():
        for module in network.modules():
            if isinstance(module, torch.nn.Conv3d):
                handles.append(module.register_forward_pre_hook(_to_onednn))
                handles.append(module.register_forward_hook(_to_dense))
    return handles


@contextlib.contextmanager
def onednn_convolutions(network: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """:func:`register_onednn_convolutions` for the duration of the block."""
    handles = register_onednn_convolutions(network)
    try:
        yield network
    finally:
        for handle in handles:
            handle.remove()
