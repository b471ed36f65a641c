"""The promotion rule (segloop.campaign.promotion): a worse candidate never serves."""

import math

import pytest

from segloop.campaign.promotion import decide_promotion


def scores(mean):
    return {"liver": mean, "mean": mean}


def test_a_better_or_equal_candidate_serves():
    assert decide_promotion(scores(0.80), scores(0.70), 0.02).promote
    assert decide_promotion(scores(0.70), scores(0.70), 0.0).promote


def test_a_candidate_within_the_tolerance_serves_and_one_beyond_it_is_kept():
    assert decide_promotion(scores(0.69), scores(0.70), 0.02).promote
    decision = decide_promotion(scores(0.60), scores(0.70), 0.02)
    assert not decision.promote
    assert "kept, not served" in decision.reason and "0.6000" in decision.reason and "0.7000" in decision.reason


def test_zero_tolerance_keeps_any_worse_candidate():
    assert not decide_promotion(scores(0.6999), scores(0.70), 0.0).promote


def test_a_candidate_without_a_finite_score_never_replaces_a_serving_version():
    assert not decide_promotion(scores(math.nan), scores(0.10), 1.0).promote
    assert not decide_promotion({}, scores(0.10), 1.0).promote
    assert not decide_promotion(None, scores(0.10), 0.02).promote


def test_first_version_and_campaigns_without_validation_cases_promote():
    assert decide_promotion(None, None, 0.02, has_validation=False).promote
    first = decide_promotion(scores(0.1), None, 0.02, serving_exists=False)
    assert first.promote and first.reason == "first version"


def test_a_serving_version_without_a_score_gives_way_to_a_scored_candidate():
    assert decide_promotion(scores(0.3), scores(math.nan), 0.02).promote


@pytest.mark.parametrize("tolerance", [-0.1, math.inf, math.nan])
def test_a_bad_tolerance_is_refused(tolerance):
    with pytest.raises(ValueError):
        decide_promotion(scores(0.5), scores(0.5), tolerance)
