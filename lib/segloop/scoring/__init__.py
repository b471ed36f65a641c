"""Active-learning scores of the automatic model: uncertainty, embeddings, the scoring job, storage."""

from segloop.scoring.method import SCORING_METHOD, ImageScorer, UncertaintyScoring
from segloop.scoring.store import ScoreStore

__all__ = ["SCORING_METHOD", "ImageScorer", "ScoreStore", "UncertaintyScoring"]
