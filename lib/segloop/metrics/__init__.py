"""Metrics the product computes: Dice per label, calibration error and temperature scaling."""

from segloop.metrics.dice import dice, dice_per_label

__all__ = ["dice", "dice_per_label"]
