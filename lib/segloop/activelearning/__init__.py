"""Active-learning strategies: which case an annotator gets next."""

from segloop.activelearning.strategies import STRATEGY_COMPONENTS, build_strategies

__all__ = ["STRATEGY_COMPONENTS", "build_strategies"]
