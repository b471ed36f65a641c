"""Self-configuration of the automatic model: a labelled dataset's fingerprint and the plan from it."""

from segloop.planning.fingerprint import dataset_fingerprint
from segloop.planning.plan import labelled_pairs, load_or_make_plan, plan_training

__all__ = ["dataset_fingerprint", "labelled_pairs", "load_or_make_plan", "plan_training"]
