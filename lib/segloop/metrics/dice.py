"""Dice per label between label maps on the same grid (MONAI's ``DiceMetric``)."""

from typing import Dict, Mapping

import numpy as np
import torch
from monai.metrics import DiceMetric


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of equal shape (1.0 when both are empty)."""
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs ground truth {truth.shape}")
    if not truth.any() and not pred.any():
        return 1.0
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    p, t = (torch.as_tensor(np.ascontiguousarray(m))[None, None].float() for m in (pred, truth))
    return float(metric(p, t)[0, 0])


def dice_per_label(pred: np.ndarray, truth: np.ndarray, labels: Mapping[str, int]) -> Dict[str, float]:
    """Dice of each label (storage index) between two integer label maps of equal shape.

    A label absent from both maps is reported as NaN (nothing to score).
    """
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs ground truth {truth.shape}")
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    result = {}
    for name, index in labels.items():
        p = torch.as_tensor(pred == index)[None, None].float()
        t = torch.as_tensor(truth == index)[None, None].float()
        result[name] = float(metric(p, t)[0, 0])
    return result
