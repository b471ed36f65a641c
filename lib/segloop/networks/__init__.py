"""Segmentation networks, built from MONAI's implementations by preset name.

A preset fixes the architecture and the geometry it is meant for (``roi_size`` in voxels at
``target_spacing`` in mm); both can be overridden from the app's ``--conf``.

* ``unetr_cpu`` (default): a small UNETR (hidden 96, 4 heads, ViT depth 12 as in MONAI, feature
  size 8, residual conv blocks) on 64^3 patches at 3 mm, sized for training and inference on a
  CPU (step time: ``benchmarks/training_step_precision.py``). The conv blocks in the skip paths
  make a step slower but are kept: without them the small organs (kidneys, spleen) are not learnt
  within a CPU time budget.
* ``unetr``: the full-size UNETR of Hatamizadeh et al. (hidden 768, 12 heads) on 96^3 at
  1.5 x 1.5 x 2 mm, for a GPU server.
* ``segresnet``: MONAI SegResNet (16 initial filters) on 96 x 96 x 64 at 2 x 2 x 3 mm.
* ``dynunet_cpu`` / ``dynunet``: MONAI DynUNet, the nnU-Net topology, with deep supervision
  (two auxiliary heads, trained through MONAI's ``DeepSupervisionLoss``). Its kernels and strides
  follow nnU-Net's planning rule from the roi and spacing (:func:`dynunet_topology`), so a planned
  geometry (``segloop.planning``) gives a matching network. The CPU preset has 8 initial filters.
* ``swinunetr_cpu``: MONAI SwinUNETR (feature size 12) on 64^3 at 3 mm, the Swin transformer
  counterpart of UNETR.
"""

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from monai.networks.nets import UNETR, DynUNet, SegResNet, SwinUNETR


@dataclass(frozen=True)
class NetworkPreset:
    name: str
    roi_size: Tuple[int, int, int]  # voxels, the network's input size
    target_spacing: Tuple[float, float, float]  # mm
    size_multiple: int  # every roi dimension must be a multiple of this
    kwargs: Dict = field(default_factory=dict)
    finest_spacing_mm: float = 2.0  # the finest spacing a planned geometry may use within this preset's budget


PRESETS: Dict[str, NetworkPreset] = {
    "unetr_cpu": NetworkPreset(
        "unetr_cpu",
        (64, 64, 64),
        (3.0, 3.0, 3.0),
        16,
        dict(feature_size=8, hidden_size=96, mlp_dim=384, num_heads=4, conv_block=True, res_block=True),
    ),
    "unetr": NetworkPreset(
        "unetr",
        (96, 96, 96),
        (1.5, 1.5, 2.0),
        16,
        dict(feature_size=16, hidden_size=768, mlp_dim=3072, num_heads=12, conv_block=True, res_block=True),
        finest_spacing_mm=1.0,
    ),
    "segresnet": NetworkPreset("segresnet", (96, 96, 64), (2.0, 2.0, 3.0), 8, dict(init_filters=16)),
    "dynunet_cpu": NetworkPreset("dynunet_cpu", (64, 64, 64), (3.0, 3.0, 3.0), 16, dict(first_filters=8, max_filters=128)),
    "dynunet": NetworkPreset("dynunet", (128, 128, 96), (1.5, 1.5, 2.0), 16, dict(first_filters=32, max_filters=320), 1.0),
    "swinunetr_cpu": NetworkPreset("swinunetr_cpu", (64, 64, 64), (3.0, 3.0, 3.0), 32, dict(feature_size=12)),
}
DEEP_SUPERVISION_HEADS = 2  # auxiliary DynUNet outputs (at 1/2 and 1/4 of the resolution) besides the main one
MIN_BOTTLENECK_VOXELS = 4  # nnU-Net: an axis is no longer halved once it would fall below this
DEFAULT_NETWORK = "unetr_cpu"


def get_preset(name: str) -> NetworkPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def check_roi_size(name: str, roi_size: Sequence[int]) -> Tuple[int, int, int]:
    """Validate an roi for a preset (UNETR needs multiples of 16, SegResNet of 8)."""
    preset = get_preset(name)
    roi = tuple(int(v) for v in roi_size)
    if len(roi) != 3 or any(v <= 0 or v % preset.size_multiple for v in roi):
        raise ValueError(f"roi_size for {name} must be 3 positive multiples of {preset.size_multiple}, got {roi_size}")
    return roi  # type: ignore[return-value]


def dynunet_topology(roi_size: Sequence[int], spacing: Sequence[float], max_levels: int = 5) -> Tuple[List, List]:
    """nnU-Net's rule for kernels and strides: halve an axis while it keeps at least
    ``MIN_BOTTLENECK_VOXELS`` voxels and its spacing is at most twice the finest axis' (so an
    anisotropic axis waits until the others have caught up); a 3-voxel kernel along an axis once its
    spacing is within a factor 2 of the finest, 1 before. Returns (kernel_size, strides) per level,
    the first level unstrided."""
    size, step = [int(v) for v in roi_size], [float(v) for v in spacing]
    kernels, strides = [], [[1, 1, 1]]
    kernels.append([3 if s <= 2 * min(step) else 1 for s in step])
    for _ in range(max_levels - 1):
        stride = [2 if (n // 2 >= MIN_BOTTLENECK_VOXELS and s <= 2 * min(step)) else 1 for n, s in zip(size, step)]
        if not any(v == 2 for v in stride):
            break
        size = [n // st for n, st in zip(size, stride)]
        step = [s * st for s, st in zip(step, stride)]
        strides.append(stride)
        kernels.append([3 if s <= 2 * min(step) else 1 for s in step])
    return kernels, strides


def has_deep_supervision(network: torch.nn.Module) -> bool:
    """True when the network returns its auxiliary heads stacked on dim 1 in training mode (DynUNet)."""
    return bool(getattr(network, "deep_supervision", False))


def build_network(
    name: str,
    out_channels: int,
    roi_size: Sequence[int],
    dropout: float = 0.0,
    target_spacing: Optional[Sequence[float]] = None,
) -> torch.nn.Module:
    """Instantiate preset ``name`` for 1 input channel (CT) and ``out_channels`` classes incl. background.
    ``target_spacing`` (mm, default the preset's) shapes DynUNet's kernels and strides."""
    preset = get_preset(name)
    roi = check_roi_size(name, roi_size)
    if name.startswith("dynunet"):
        kernels, strides = dynunet_topology(roi, target_spacing or preset.target_spacing)
        first, most = preset.kwargs["first_filters"], preset.kwargs["max_filters"]
        return DynUNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=out_channels,
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=[min(first * 2**i, most) for i in range(len(strides))],
            dropout=dropout or None,
            norm_name="instance",
            deep_supervision=True,
            deep_supr_num=min(DEEP_SUPERVISION_HEADS, len(strides) - 2),
            res_block=True,
        )
    if name.startswith("swinunetr"):
        return SwinUNETR(in_channels=1, out_channels=out_channels, spatial_dims=3, drop_rate=dropout, **preset.kwargs)
    if name.startswith("unetr"):
        return UNETR(
            in_channels=1,
            out_channels=out_channels,
            img_size=roi,
            norm_name="instance",
            dropout_rate=dropout,
            **preset.kwargs,
        )
    return SegResNet(spatial_dims=3, in_channels=1, out_channels=out_channels, dropout_prob=dropout or None, **preset.kwargs)


def copy_network(network: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``network``. DynUNet keeps its last auxiliary outputs (with their autograd
    graph) in a list its skip layers write into; they are detached in place first, since a tensor
    inside a graph cannot be deep-copied."""
    heads = getattr(network, "heads", None)
    if isinstance(heads, list):
        for i, head in enumerate(heads):
            if isinstance(head, torch.Tensor):
                heads[i] = head.detach()
    return copy.deepcopy(network)
