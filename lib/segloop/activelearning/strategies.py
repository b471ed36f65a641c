"""SegLoop's active-learning strategies (MONAI Label ``Strategy`` objects, one per name).

Each picks one unlabelled image from the datastore it is given (the app passes a view without the
cases booked by other annotators, see ``segloop.campaign.assignments``) using the scores of the
automatic model in the ``ScoreStore``:

* ``foreground_random`` -- nnActive's foreground-aware random baseline for whole images: each pick
  draws a foreground class uniformly (so a tumour is as likely as the liver), then a random image
  the served model predicts to contain that class (any image when none does); the baseline an
  active strategy has to beat;
* ``entropy``   -- highest predictive entropy of the served prediction;
* ``epistemic`` -- highest MC-dropout mutual information (the test-time-augmentation variance for
  a network without dropout; ``source: "mc" | "tta"`` in the request chooses);
* ``diversity`` -- core-set / farthest point: the image whose encoder embedding is farthest from
  every labelled image and every image booked by an annotator right now;
* ``hybrid``    -- uncertainty (entropy rank, or ``uncertainty: "epistemic" | "mc" | "tta"``) times that distance
  (normalised over the candidates), so concurrent annotators get cases that are both informative
  and different from each other's.

Scores from an older model version are used when the current version's are not there yet (the
job is running); images without a score rank last. With no usable score at all a strategy falls
back to a seeded random pick and says so in its answer (``fallback``), so ``/activelearning``
always answers while a scoring job runs or after one failed.
"""

import logging
import random
from typing import Dict, List, Optional, Sequence

import numpy as np
from monailabel.interfaces.tasks.strategy import Strategy

from segloop.errors import bad_request
from segloop.scoring.store import ScoreStore

logger = logging.getLogger(__name__)


def uncertainty_of(record: Dict, source: str) -> Optional[float]:
    """The uncertainty named ``source`` from a score record, None if absent: ``entropy``, ``mc``
    (MC-dropout mutual information), ``tta`` (TTA variance) or ``epistemic`` (mc, else tta)."""
    if source == "epistemic":
        return uncertainty_of(record, "mc") if record.get("mc") else uncertainty_of(record, "tta")
    if source == "entropy":
        return record.get("entropy")
    if source == "mc":
        return (record.get("mc") or {}).get("mutual_information")
    if source == "tta":
        return (record.get("tta") or {}).get("variance")
    raise bad_request(f"unknown uncertainty source {source!r}; use entropy, epistemic, mc or tta")


def min_distances(candidates: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each candidate embedding ``[M, F]``: Euclidean distance to the nearest of ``reference [R, F]``."""
    if len(reference) == 0:
        # Nothing labelled or booked yet: prefer the most typical case (closest to the centroid).
        centroid = candidates.mean(axis=0, keepdims=True)
        return 2.0 - np.linalg.norm(candidates - centroid, axis=1)
    diff = candidates[:, None, :] - reference[None, :, :]
    return np.linalg.norm(diff, axis=2).min(axis=1)


def rank_scores(values: Sequence[float]) -> np.ndarray:
    """Percentile ranks in (0, 1]: the largest value gets 1 (scale-free, so the product with a
    distance does not depend on the uncertainty measure's units)."""
    order = np.argsort(np.argsort(np.asarray(values, dtype=float), kind="stable"), kind="stable")
    return (order + 1) / len(values)


class ScoredStrategy(Strategy):
    name = "scored"

    def __init__(self, store: ScoreStore, description: str):
        super().__init__(description)
        self.store = store

    def candidates(self, request, datastore) -> List[str]:
        return sorted(datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels")))

    def __call__(self, request, datastore):
        images = self.candidates(request, datastore)
        if not images:
            return None
        records = {i: r for i, r in self.store.records().items() if not r.get("error")}
        choice = self.choose(images, records, request, datastore)
        if choice is None:
            rng = random.Random(request.get("seed"))
            image = rng.choice(images)
            logger.info(f"{self.name}: no usable scores yet; random pick {image}")
            return {"id": image, "strategy": self.name, "fallback": "random", "reason": "no scores for these images yet"}
        image, score = choice
        logger.info(f"{self.name}: picked {image} (score {score:.4f}) among {len(images)}")
        return {"id": image, "strategy": self.name, "score": score, "model_version": records[image].get("version")}

    def choose(self, images: List[str], records: Dict[str, Dict], request, datastore):
        raise NotImplementedError


class UncertaintyStrategy(ScoredStrategy):
    """Highest uncertainty first (ties broken by image id)."""

    def __init__(self, store: ScoreStore, name: str, source: str, description: str):
        super().__init__(store, description)
        self.name, self.source = name, source

    def choose(self, images, records, request, datastore):
        source = request.get("source", self.source)
        scored = [(uncertainty_of(records[i], source), i) for i in images if i in records]
        scored = [(s, i) for s, i in scored if s is not None]
        if not scored:
            return None
        score, image = max(scored, key=lambda si: si[0])  # the first maximum: candidates are sorted by id
        return image, float(score)


class ForegroundRandomStrategy(ScoredStrategy):
    name = "foreground_random"

    def __init__(self, store: ScoreStore):
        super().__init__(store, "Foreground-aware random: a random case predicted to hold a class drawn uniformly")

    def choose(self, images, records, request, datastore):
        counts = {i: records[i]["class_voxels"] for i in images if records.get(i, {}).get("class_voxels")}
        if not counts:
            return None
        rng = random.Random(request.get("seed"))
        classes = len(next(iter(counts.values())))
        wanted = rng.randrange(1, classes) if classes > 1 else 0
        holding = sorted(i for i, c in counts.items() if len(c) > wanted and c[wanted] > 0)
        image = rng.choice(holding or sorted(counts))
        return image, float(counts[image][wanted])  # the drawn class's predicted voxels in that image


def reference_embeddings(records: Dict[str, Dict], datastore, booked: Sequence[str]) -> np.ndarray:
    """Embeddings of the labelled images and of the images booked by annotators now."""
    ids = set(datastore.get_labeled_images()) | set(booked)
    vectors = [records[i]["embedding"] for i in sorted(ids) if "embedding" in records.get(i, {})]
    return np.asarray(vectors, dtype=float).reshape(len(vectors), -1)


class DiversityStrategy(ScoredStrategy):
    name = "diversity"

    def __init__(self, store: ScoreStore, uncertainty: Optional[str] = None, name: str = "diversity", description: str = ""):
        super().__init__(store, description or "Core-set: the case least like any labelled or booked case")
        self.name, self.uncertainty = name, uncertainty

    def choose(self, images, records, request, datastore):
        with_embedding = [i for i in images if "embedding" in records.get(i, {})]
        if not with_embedding:
            return None
        source = request.get("uncertainty", self.uncertainty)
        if source:  # hybrid: only images with both scores compete
            with_embedding = [i for i in with_embedding if uncertainty_of(records[i], source) is not None]
            if not with_embedding:
                return None
        embeddings = np.asarray([records[i]["embedding"] for i in with_embedding], dtype=float)
        distance = min_distances(embeddings, reference_embeddings(records, datastore, request.get("assigned", [])))
        score = distance / max(float(distance.max()), 1e-8)
        if source:
            score = score * rank_scores([uncertainty_of(records[i], source) for i in with_embedding])
        best = int(np.argmax(score))  # first maximum: candidates are sorted by id
        return with_embedding[best], float(score[best])


def build_strategies(store: ScoreStore) -> Dict[str, Strategy]:
    """SegLoop's scored strategies by name (random and first come from MONAI Label)."""
    return {
        "foreground_random": ForegroundRandomStrategy(store),
        "entropy": UncertaintyStrategy(store, "entropy", "entropy", "Highest predictive entropy of the automatic model"),
        "epistemic": UncertaintyStrategy(
            store, "epistemic", "epistemic", "Highest epistemic uncertainty: MC-dropout mutual information (else TTA variance)"
        ),
        "diversity": DiversityStrategy(store),
        "hybrid": DiversityStrategy(
            store, uncertainty="entropy", name="hybrid", description="Uncertainty x diversity, batch-aware across annotators"
        ),
    }


# The score components each strategy reads (the simulation scores only these; the server all).
STRATEGY_COMPONENTS: Dict[str, Sequence[str]] = {
    "random": (),
    "first": (),
    "foreground_random": ("entropy",),  # the class voxel counts come with the served prediction
    "entropy": ("entropy",),
    "epistemic": ("mc",),
    "diversity": ("embedding",),
    "hybrid": ("entropy", "embedding"),
}
