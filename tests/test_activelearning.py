"""Active-learning strategies, bookings and the score store (fast; no network training)."""

import time

import numpy as np
import pytest
from fastapi import HTTPException

from segloop.activelearning import build_strategies
from segloop.activelearning.strategies import min_distances, rank_scores
from segloop.campaign.assignments import AssignmentBook, UnassignedView
from segloop.scoring.store import ScoreStore


class FakeDatastore:
    def __init__(self, images, labelled=()):
        self.images, self.labelled = list(images), set(labelled)

    def get_unlabeled_images(self, label_tag=None, labels=None):
        return [i for i in self.images if i not in self.labelled]

    def get_labeled_images(self, label_tag=None, labels=None):
        return sorted(self.labelled)


def unit(v):
    v = np.asarray(v, dtype=float)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture
def pool(tmp_path):
    """Six images: a/b/c near each other, d/e near each other, f far from all; a is labelled."""
    store = ScoreStore(str(tmp_path))
    embeddings = {
        "a": [1, 0, 0], "b": [0.95, 0.1, 0], "c": [0.9, 0.15, 0.05],
        "d": [0, 1, 0], "e": [0.05, 0.95, 0.1], "f": [0, 0, 1],
    }
    entropy = {"a": 0.1, "b": 0.9, "c": 0.8, "d": 0.3, "e": 0.35, "f": 0.5}
    mutual_information = {"a": 0.0, "b": 0.01, "c": 0.05, "d": 0.02, "e": 0.03, "f": 0.04}
    for image in embeddings:
        store.put(image, {
            "version": 1, "label_ts": None, "components": ["embedding", "entropy", "mc"],
            "embedding": unit(embeddings[image]), "entropy": entropy[image],
            "mc": {"mutual_information": mutual_information[image], "variance": 0.0},
        })
    return store, FakeDatastore(sorted(embeddings), labelled={"a"})


def pick(strategy, datastore, **request):
    return strategy(dict({"strategy": "x"}, **request), datastore)


def test_uncertainty_strategies_pick_the_most_uncertain_unlabelled_case(pool):
    store, datastore = pool
    strategies = build_strategies(store)
    assert pick(strategies["entropy"], datastore)["id"] == "b"
    assert pick(strategies["epistemic"], datastore)["id"] == "c"
    # booked cases are invisible through the view the app passes
    assert pick(strategies["entropy"], UnassignedView(datastore, {"b"}))["id"] == "c"


def test_epistemic_uses_tta_variance_when_the_network_has_no_dropout(tmp_path):
    store = ScoreStore(str(tmp_path))
    store.put("x", {"version": 1, "components": ["tta"], "tta": {"variance": 0.2}})
    store.put("y", {"version": 1, "components": ["tta"], "tta": {"variance": 0.4}})
    assert pick(build_strategies(store)["epistemic"], FakeDatastore(["x", "y"]))["id"] == "y"


def test_diversity_picks_far_from_labelled_and_booked_cases(pool):
    store, datastore = pool
    diversity = build_strategies(store)["diversity"]
    assert pick(diversity, datastore)["id"] in {"d", "f"}  # both at distance sqrt(2) from a
    # with f booked by another annotator, the farthest case from {a, f} is in the d/e cluster
    assert pick(diversity, UnassignedView(datastore, {"f"}), assigned=["f"])["id"] in {"d", "e"}
    # with d booked too, only the a-cluster is left: the least similar to a wins
    assert pick(diversity, UnassignedView(datastore, {"f", "d", "e"}), assigned=["f", "d", "e"])["id"] == "c"


def test_hybrid_is_batch_aware_across_concurrent_annotators(pool, tmp_path):
    store, datastore = pool
    hybrid = build_strategies(store)["hybrid"]
    book = AssignmentBook(str(tmp_path / "book"), lock_seconds=600)
    picks = []
    for annotator in ("dr_a", "dr_b", "dr_c"):
        others = book.held_by_others(annotator)
        result = pick(hybrid, UnassignedView(datastore, others), assigned=sorted(others))
        book.assign(result["id"], annotator, "hybrid")
        picks.append(result["id"])
    assert len(set(picks)) == 3
    # informative and diverse: never two from the same cluster while another cluster is untouched
    clusters = {"b": 0, "c": 0, "d": 1, "e": 1, "f": 2}
    assert len({clusters[p] for p in picks}) == 3
    # b is the most uncertain but next to the labelled a: hybrid hands out the far f first
    assert picks[0] == "f"


def test_strategies_fall_back_to_a_seeded_random_pick_without_scores(tmp_path):
    store = ScoreStore(str(tmp_path))
    datastore = FakeDatastore([f"case_{i}" for i in range(8)])
    for name, strategy in build_strategies(store).items():
        first = pick(strategy, datastore, seed=3)
        assert first["fallback"] == "random" and first["id"] in datastore.images, name
        assert pick(strategy, datastore, seed=3)["id"] == first["id"]
    assert pick(build_strategies(store)["entropy"], FakeDatastore([])) is None


def test_failed_and_missing_scores_do_not_break_the_choice(pool):
    store, datastore = pool
    store.put("b", {"error": "RuntimeError: unreadable", "components": []})
    datastore.images.append("new")  # added after the last scoring job
    result = pick(build_strategies(store)["entropy"], datastore)
    assert result["id"] == "c" and "fallback" not in result


def test_unknown_uncertainty_source_is_a_client_error(pool):
    store, datastore = pool
    with pytest.raises(HTTPException) as error:
        pick(build_strategies(store)["hybrid"], datastore, uncertainty="vibes")
    assert error.value.status_code == 400


def test_bookings_expire_move_with_the_annotator_and_end_on_submission(tmp_path):
    book = AssignmentBook(str(tmp_path), lock_seconds=60)
    now = time.time()
    book.assign("x", "dr_a", "hybrid", now=now)
    assert book.held_by_others("dr_b", now=now + 1) == {"x"}
    assert book.held_by_others("dr_a", now=now + 1) == set()
    assert book.held_by_others("dr_b", now=now + 61) == set()  # lock window over
    book.assign("y", "dr_a", "hybrid", now=now + 2)  # dr_a moved on: x is free again
    assert book.held_by_others("dr_b", now=now + 3) == {"y"}
    book.release("y")
    assert book.active(now=now + 3) == {}
    # bookings live in a file: a new book (another process, a restart) sees them
    book.assign("z", "dr_c", "random")
    assert AssignmentBook(str(tmp_path), lock_seconds=60).held_by_others("dr_a") == {"z"}
    assert book.client(None) != book.client(None)  # anonymous requests are distinct annotators


def test_score_records_go_stale_with_a_new_version_a_new_label_or_a_missing_component():
    record = {"version": 2, "label_ts": None, "components": ["embedding", "entropy"]}
    assert not ScoreStore.is_stale(record, 2, None, ["entropy"])
    assert ScoreStore.is_stale(record, 3, None, ["entropy"])
    assert ScoreStore.is_stale(record, 2, 1700000000, ["embedding"])
    assert ScoreStore.is_stale(record, 2, None, ["mc"])
    failed = {"version": 2, "label_ts": None, "components": [], "error": "EOFError: truncated"}
    assert not ScoreStore.is_stale(failed, 2, None, ["entropy"])  # the same file would fail again
    assert ScoreStore.is_stale(failed, 3, None, ["entropy"]) and ScoreStore.is_stale(failed, 2, 1700000000, ["embedding"])
    assert ScoreStore.is_stale(None, 2, None, ["entropy"])


def test_distance_and_rank_helpers():
    candidates = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert np.allclose(min_distances(candidates, np.array([[1.0, 0.0]])), [0.0, np.sqrt(2)])
    assert np.allclose(rank_scores([0.3, 0.1, 0.2]), [1.0, 1 / 3, 2 / 3])


def test_foreground_random_draws_a_class_then_a_case_predicted_to_hold_it(tmp_path):
    """Channels: background, liver, spleen, kidney, tumour. Only t1 and t2 are predicted to hold a
    tumour, so over many seeds the tumour draws (a quarter of them) land on t1/t2 alone, and the
    two tumour cases are picked far more often than the plain-random 2/8."""
    store = ScoreStore(str(tmp_path))
    images = [f"n{i}" for i in range(6)] + ["t1", "t2"]
    for image in images:
        tumour = 50 if image.startswith("t") else 0
        store.put(image, {"version": 1, "components": ["entropy"], "entropy": 0.1,
                          "class_voxels": [1000, 300, 80, 60, tumour]})
    strategy = build_strategies(store)["foreground_random"]
    picks = [pick(strategy, FakeDatastore(images), seed=s) for s in range(400)]
    assert all("fallback" not in p for p in picks)
    tumour_share = np.mean([p["id"].startswith("t") for p in picks])
    # a tumour draw (1/4) always gives t1/t2; an organ draw gives them 2/8 of the time
    assert abs(tumour_share - (0.25 + 0.75 * 2 / 8)) < 0.08
    assert {p["id"] for p in picks} == set(images)  # organ draws still reach every case
    assert pick(strategy, FakeDatastore(images), seed=7) == pick(strategy, FakeDatastore(images), seed=7)
