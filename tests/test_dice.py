"""Dice per label from voxel counts agrees with MONAI's DiceMetric run label by label."""

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from segloop.metrics.dice import dice_per_label, label_confusion

LABELS = {"liver": 1, "spleen": 2, "kidney": 3, "tumor": 4}


def monai_dice_per_label(pred, truth):
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=True)
    return {
        name: float(metric(torch.as_tensor(pred == i)[None, None].float(), torch.as_tensor(truth == i)[None, None].float())[0, 0])
        for name, i in LABELS.items()
    }


@pytest.mark.parametrize("seed", range(6))
def test_dice_per_label_matches_monai_dice_metric(seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 5, (9, 10, 11)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.3, rng.integers(0, 6, truth.shape), truth).astype(np.int16)
    truth[truth == 1 + seed % 4] = 0  # one label missing from the ground truth: NaN
    if seed % 2:
        pred[pred == 2] = 0  # a label missing from the prediction only: 0
    ours, reference = dice_per_label(pred, truth, LABELS), monai_dice_per_label(pred, truth)
    assert ours.keys() == reference.keys()
    for name in LABELS:
        assert ours[name] == pytest.approx(reference[name], rel=1e-6, nan_ok=True), name


def test_label_confusion_counts_each_voxel_once():
    truth = np.array([[[0, 1, 1, 2]]], np.uint8)
    pred = np.array([[[1, 1, 0, 2]]], np.uint8)
    counts = label_confusion(pred, truth, [1, 2, 3]).tolist()
    assert counts == [[1, 1, 1, 1], [1, 0, 3, 0], [0, 0, 4, 0]]  # (tp, fp, tn, fn)


@pytest.mark.parametrize("bad", [np.full((2, 2, 2), -1, np.int8), np.full((2, 2, 2), 0.5)])
def test_label_maps_hold_non_negative_whole_numbers(bad):
    with pytest.raises(ValueError):
        dice_per_label(bad, np.zeros((2, 2, 2), np.uint8), LABELS)
