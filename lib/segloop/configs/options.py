"""The app's ``--conf`` options: one table with defaults and help, parsed in one place.

``segloop conf`` prints this table; the README documents the same names.
"""

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from segloop.labels import parse_labels
from segloop.networks import DEFAULT_NETWORK, check_roi_size, get_preset
from segloop.transforms import DEFAULT_HU_WINDOW

OPTIONS: Dict[str, Tuple[str, str]] = {
    "models": ("segmentation", "comma-separated task names to serve"),
    "labels": ("", 'JSON name->index map, e.g. {"liver":1,"spleen":2}; default: the sample labels'),
    "network": (DEFAULT_NETWORK, "unetr_cpu (CPU-sized UNETR), unetr (full size, GPU) or segresnet"),
    "target_spacing": ("", "JSON [x,y,z] mm the model works at; default: the network preset's"),
    "roi_size": ("", "JSON [x,y,z] voxels of the network input; default: the network preset's"),
    "hu_window": (json.dumps(list(DEFAULT_HU_WINDOW)), "JSON [low,high] HU mapped to [0,1]"),
    "device": ("auto", "auto (cuda if available), cpu or cuda[:N]"),
    "checkpoint": ("", "local path of a starting checkpoint (.pt); never downloaded"),
    "max_epochs": ("50", "default epochs per training run"),
}


@dataclass
class SegLoopOptions:
    models: List[str]
    labels: Dict[str, int]
    network: str
    target_spacing: Tuple[float, float, float]
    roi_size: Tuple[int, int, int]
    hu_window: Tuple[float, float]
    device: str
    checkpoint: Optional[str]
    max_epochs: int


def _json_list(conf: Mapping[str, str], key: str, length: int, cast) -> Optional[tuple]:
    raw = conf.get(key) or OPTIONS[key][0]
    if not raw:
        return None
    try:
        value = json.loads(raw)
        if not isinstance(value, list) or len(value) != length:
            raise ValueError
        return tuple(cast(v) for v in value)
    except (ValueError, TypeError):
        raise ValueError(f"--conf {key} must be a JSON list of {length} numbers, got {raw!r}") from None


def parse_options(conf: Mapping[str, str]) -> SegLoopOptions:
    """Validate every option up front so a typo stops the server with a clear message."""
    network = conf.get("network") or OPTIONS["network"][0]
    preset = get_preset(network)
    spacing = _json_list(conf, "target_spacing", 3, float) or preset.target_spacing
    if min(spacing) <= 0:
        raise ValueError(f"--conf target_spacing must be positive mm, got {spacing}")
    roi = check_roi_size(network, _json_list(conf, "roi_size", 3, int) or preset.roi_size)
    window = _json_list(conf, "hu_window", 2, float)
    if window[0] >= window[1]:
        raise ValueError(f"--conf hu_window must be [low, high] with low < high, got {window}")
    checkpoint = conf.get("checkpoint") or None
    if checkpoint:
        if "://" in checkpoint:
            raise ValueError("--conf checkpoint must be a local file path; SegLoop never downloads models")
        if not os.path.isfile(checkpoint):
            raise ValueError(f"--conf checkpoint: file not found: {checkpoint}")
    device = conf.get("device") or "auto"
    models = [m.strip() for m in (conf.get("models") or OPTIONS["models"][0]).split(",") if m.strip()]
    try:
        max_epochs = int(conf.get("max_epochs") or OPTIONS["max_epochs"][0])
    except ValueError:
        raise ValueError(f"--conf max_epochs must be an integer, got {conf.get('max_epochs')!r}") from None
    return SegLoopOptions(
        models=models,
        labels=parse_labels(conf.get("labels")),
        network=network,
        target_spacing=spacing,  # type: ignore[arg-type]
        roi_size=roi,
        hu_window=window,  # type: ignore[arg-type]
        device=device,
        checkpoint=os.path.abspath(checkpoint) if checkpoint else None,
        max_epochs=max_epochs,
    )


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
