"""The promotion rule: whether a trained candidate may serve in place of the serving version.

A worse model must never serve. The candidate and the serving version are scored on the same
validation cases in the same run (:mod:`segloop.trainers.candidate_eval`); the candidate serves
unless its mean validation Dice is lower than the serving version's by more than ``tolerance``.
A score that is not a finite number (no validation structure, a NaN from a broken candidate) never
promotes over a serving version.
"""

import math
from dataclasses import dataclass
from typing import Mapping, Optional


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str


def decide_promotion(
    candidate: Optional[Mapping[str, float]],
    serving: Optional[Mapping[str, float]],
    tolerance: float,
    has_validation: bool = True,
    serving_exists: bool = True,
) -> PromotionDecision:
    """Decide on a candidate from per-label validation Dice dicts with a ``mean`` entry.

    ``has_validation`` is False while the campaign has no validation case yet (the first labels):
    the candidate is promoted without comparison. ``serving_exists`` is False before any version
    serves: the candidate is the first version. Otherwise ``candidate`` and ``serving`` must hold
    the scores of both on the same cases.
    """
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"promotion tolerance must be a finite number >= 0, got {tolerance}")
    if not has_validation:
        return PromotionDecision(True, "no validation cases yet: promoted without comparison")
    if not serving_exists:
        return PromotionDecision(True, "first version")
    new = float((candidate or {}).get("mean", math.nan))
    old = float((serving or {}).get("mean", math.nan))
    if not math.isfinite(new):
        return PromotionDecision(False, f"candidate validation mean Dice is {new}: kept, not served")
    if not math.isfinite(old):
        return PromotionDecision(True, f"validation mean Dice {new:.4f}; serving version has no score: promoted")
    promote = new >= old - tolerance
    verdict = "promoted" if promote else "kept, not served"
    reason = f"validation mean Dice {new:.4f} vs serving {old:.4f} (tolerance {tolerance}): {verdict}"
    return PromotionDecision(promote, reason)
