"""Calibration of the automatic model: expected calibration error and temperature scaling.

Voxel-wise, top-label: a voxel's *confidence* is its highest softmax probability and it is
*correct* when that class is the reference label. ECE (Guo et al. 2017) bins voxels by confidence
(``n_bins`` equal-width bins over [0, 1]) and averages |accuracy - confidence| weighted by the
share of voxels per bin. Background voxels far from any organ are easy and numerous, so the
foreground ECE (voxels that the reference or the prediction labels as foreground) is reported too.

Temperature scaling divides the logits by one scalar T > 0 fitted by minimising the negative
log-likelihood on validation voxels; it changes confidences, never the argmax (the label map).
MONAI 1.5 has no calibration metric (``CalibrationErrorMetric`` arrives in 1.6), hence this module.
"""

from typing import Dict, List, Optional

import torch

N_BINS = 15


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS) -> float:
    """ECE of flat tensors ``confidence`` in [0, 1] and boolean ``correct`` (same length)."""
    confidence, correct = confidence.flatten().float(), correct.flatten().float()
    if confidence.numel() == 0:
        return float("nan")
    bins = torch.clamp((confidence * n_bins).long(), max=n_bins - 1)
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    return float((acc_sum - conf_sum).abs().sum() / confidence.numel())  # = sum_b (n_b / N) |acc_b - conf_b|


def reliability(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS) -> List[Dict[str, float]]:
    """Per non-empty bin: mean confidence, accuracy and voxel share (a reliability diagram's data)."""
    confidence, correct = confidence.flatten().float(), correct.flatten().float()
    bins = torch.clamp((confidence * n_bins).long(), max=n_bins - 1)
    rows = []
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            rows.append({
                "bin": b,
                "confidence": round(float(confidence[mask].mean()), 4),
                "accuracy": round(float(correct[mask].mean()), 4),
                "share": round(float(mask.float().mean()), 6),
            })
    return rows


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)``; ``logits [N, C]``, ``labels [N]``."""
    logits, labels = logits.detach().float(), labels.detach().long()
    log_t = torch.zeros(1, requires_grad=True)  # T = exp(log_t) stays positive
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().clamp(0.05, 20.0))


class CalibrationAccumulator:
    """Collects validation voxels case by case, then reports ECE before and after temperature scaling.

    ``add(logits [C, H, W, D], label [H, W, D] or [1, H, W, D])`` keeps a seeded random sample of at
    most ``max_voxels_per_case`` voxels per case, so memory stays bounded on large validation sets.
    """

    def __init__(self, max_voxels_per_case: int = 200_000, n_bins: int = N_BINS, seed: int = 0):
        self.max_voxels = max_voxels_per_case
        self.n_bins = n_bins
        self.generator = torch.Generator().manual_seed(seed)
        self.logits: List[torch.Tensor] = []
        self.labels: List[torch.Tensor] = []

    def add(self, logits: torch.Tensor, label: torch.Tensor) -> None:
        logits = torch.as_tensor(logits).detach().float().cpu()
        channels = logits.shape[0]
        flat_logits = logits.reshape(channels, -1).T  # [voxels, C]
        flat_labels = torch.as_tensor(label).detach().long().cpu().reshape(-1)
        if flat_labels.numel() != flat_logits.shape[0]:
            raise ValueError(f"label has {flat_labels.numel()} voxels, logits {flat_logits.shape[0]}")
        keep = torch.randperm(flat_labels.numel(), generator=self.generator)[: self.max_voxels]
        self.logits.append(flat_logits[keep])
        self.labels.append(flat_labels[keep])

    def _ece(self, logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> Dict[str, float]:
        probs = torch.softmax(logits / temperature, dim=1)
        confidence, predicted = probs.max(dim=1)
        correct = predicted == labels
        foreground = (labels > 0) | (predicted > 0)
        return {
            "ece": round(expected_calibration_error(confidence, correct, self.n_bins), 5),
            "ece_foreground": round(expected_calibration_error(confidence[foreground], correct[foreground], self.n_bins), 5),
        }

    def result(self) -> Optional[Dict]:
        """``{"temperature", "before": {...}, "after": {...}, "voxels", "reliability_before/after"}``, or None if empty."""
        if not self.logits:
            return None
        logits, labels = torch.cat(self.logits), torch.cat(self.labels)
        temperature = fit_temperature(logits, labels)
        confidence_before, predicted = torch.softmax(logits, dim=1).max(dim=1)
        confidence_after = torch.softmax(logits / temperature, dim=1).max(dim=1).values
        correct = predicted == labels
        return {
            "temperature": round(temperature, 4),
            "before": self._ece(logits, labels, 1.0),
            "after": self._ece(logits, labels, temperature),
            "voxels": int(labels.numel()),
            "n_bins": self.n_bins,
            "reliability_before": reliability(confidence_before, correct, self.n_bins),
            "reliability_after": reliability(confidence_after, correct, self.n_bins),
        }
