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
"""

from dataclasses import dataclass, field
from typing import Dict, Sequence, Tuple

import torch
from monai.networks.nets import UNETR, SegResNet


@dataclass(frozen=True)
class NetworkPreset:
    name: str
    roi_size: Tuple[int, int, int]  # voxels, the network's input size
    target_spacing: Tuple[float, float, float]  # mm
    size_multiple: int  # every roi dimension must be a multiple of this
    kwargs: Dict = field(default_factory=dict)


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
    ),
    "segresnet": NetworkPreset("segresnet", (96, 96, 64), (2.0, 2.0, 3.0), 8, dict(init_filters=16)),
}
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


def build_network(name: str, out_channels: int, roi_size: Sequence[int], dropout: float = 0.0) -> torch.nn.Module:
    """Instantiate preset ``name`` for 1 input channel (CT) and ``out_channels`` classes incl. background."""
    preset = get_preset(name)
    roi = check_roi_size(name, roi_size)
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
