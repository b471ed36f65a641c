"""Metrics the product computes: Dice per label, calibration error and temperature scaling."""

from segloop.metrics.dice import dice, dice_from_counts, dice_per_label, label_confusion

__all__ = ["dice", "dice_from_counts", "dice_per_label", "label_confusion"]
