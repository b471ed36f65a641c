"""A scoring error is not retried on every /activelearning request (fast, no network)."""

from types import SimpleNamespace

import torch

from segloop.scoring.method import UncertaintyScoring
from segloop.scoring.store import ScoreStore


class Images:
    def __init__(self, images, label_ts):
        self.images, self.label_ts = list(images), dict(label_ts)

    def list_images(self):
        return list(self.images)

    def get_labeled_images(self):
        return sorted(self.label_ts)

    def get_label_info(self, image_id, tag):
        return {"ts": self.label_ts[image_id]}


def job(store, serving):
    task = SimpleNamespace(network=torch.nn.Identity(), inferer=lambda data=None: None, pre_transforms=lambda data=None: [])
    return UncertaintyScoring(task, store, (8, 8, 8), "cpu", mc_samples=1, tta_samples=2, registry=SimpleNamespace(serving=lambda: serving))


def test_an_error_record_waits_for_a_new_version_or_label(tmp_path):
    store = ScoreStore(str(tmp_path))
    datastore = Images(["bad", "good", "labelled_bad"], {"labelled_bad": 5})
    store.put("good", {"version": 1, "label_ts": None, "components": ["embedding", "entropy", "tta"]})
    store.put("bad", {"version": 1, "label_ts": None, "components": [], "error": "EOFError: truncated"})
    store.put("labelled_bad", {"version": 1, "label_ts": 5, "components": [], "error": "EOFError: truncated"})
    assert job(store, serving=1).pending(datastore) == 0  # nothing to do: no subprocess per request
    assert [t["id"] for t in job(store, serving=2).plan(datastore, 2, ["embedding", "entropy", "tta"])] == [
        "labelled_bad", "bad", "good",
    ]
    datastore.label_ts["labelled_bad"] = 6  # label saved again
    assert [t["id"] for t in job(store, serving=1).plan(datastore, 1, ["embedding", "entropy", "tta"])] == ["labelled_bad"]
