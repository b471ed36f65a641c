"""Dice per label between label maps on the same grid.

``dice`` uses MONAI's ``DiceMetric`` on two masks. ``dice_per_label`` counts every label's
true/false positives and negatives in one pass over both maps (a joint histogram of the two
label values per voxel) and lets MONAI's confusion-matrix metric ("f1 score", which is Dice) turn
the counts into Dice: one pass for all labels instead of one ``DiceMetric`` call each, since the
server computes it for every submitted label.
"""

from typing import Dict, Iterable, Mapping

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.metrics.confusion_matrix import compute_confusion_matrix_metric


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of equal shape (1.0 when both are empty)."""
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs ground truth {truth.shape}")
    if not truth.any() and not pred.any():
        return 1.0
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    p, t = (torch.as_tensor(np.ascontiguousarray(m))[None, None].float() for m in (pred, truth))
    return float(metric(p, t)[0, 0])


def _as_label_values(volume: np.ndarray, what: str) -> np.ndarray:
    data = np.asarray(volume)
    if data.dtype.kind == "b":
        return data.astype(np.uint8)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise ValueError(f"{what}: label values must be whole numbers")
        data = data.astype(np.int64)
    elif data.dtype.kind not in "iu":
        raise ValueError(f"{what}: label values must be integers, got {data.dtype}")
    if data.size and data.min() < 0:
        raise ValueError(f"{what}: label values must not be negative")
    return data


def label_confusion(pred: np.ndarray, truth: np.ndarray, indices: Iterable[int]) -> torch.Tensor:
    """Voxel counts per label index: a float tensor ``[len(indices), 4]`` of (tp, fp, tn, fn),
    MONAI's confusion-matrix layout, between two integer label maps of equal shape."""
    if pred.shape != truth.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape} vs ground truth {truth.shape}")
    indices = list(indices)
    p, t = _as_label_values(pred, "prediction"), _as_label_values(truth, "ground truth")
    n = int(max([*indices, int(p.max()) if p.size else 0, int(t.max()) if t.size else 0])) + 1
    joint = np.bincount((t.astype(np.int64) * n + p).ravel(), minlength=n * n).reshape(n, n)  # [truth, pred]
    total = float(p.size)
    rows = []
    for i in indices:
        tp = float(joint[i, i])
        fp = float(joint[:, i].sum()) - tp
        fn = float(joint[i, :].sum()) - tp
        rows.append([tp, fp, total - tp - fp - fn, fn])
    return torch.tensor(rows, dtype=torch.float64).reshape(len(indices), 4)


def dice_per_label(pred: np.ndarray, truth: np.ndarray, labels: Mapping[str, int]) -> Dict[str, float]:
    """Dice of each label (storage index) between two integer label maps of equal shape.

    A label absent from ``truth`` is reported as NaN (nothing to score), as MONAI's
    ``DiceMetric(ignore_empty=True)`` does.
    """
    counts = label_confusion(pred, truth, labels.values())
    scores = dice_from_counts(counts)
    return {name: float(score) for name, score in zip(labels, scores)}


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Dice per row of (tp, fp, tn, fn) counts; NaN where the ground truth is empty (tp + fn = 0)."""
    scores = compute_confusion_matrix_metric("f1 score", counts)
    return torch.where(counts[:, 0] + counts[:, 3] > 0, scores, torch.full_like(scores, float("nan")))
