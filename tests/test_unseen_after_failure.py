"""A failed or interrupted run does not mark labels as seen (fast, no training)."""

from types import SimpleNamespace

import torch

from segloop.campaign.loop import CampaignLoop
from segloop.campaign.registry import ModelRegistry
from segloop.labels import DEFAULT_LABELS
from segloop.trainers.segmentation import SegmentationTrainer


class FinalLabels:
    """The part of the datastore the loop reads: final labels and their timestamps."""

    def __init__(self, ts):
        self.ts = dict(ts)

    def get_labeled_images(self):
        return sorted(self.ts)

    def get_label_info(self, image_id, tag):
        return {"ts": self.ts[image_id]}


OPTIONS = SimpleNamespace(labels=DEFAULT_LABELS, retrain_every=1, auto_train=False, retrain_debounce_s=0, retrain_max_seconds=0, first_run_max_seconds=0)


def weights(value):
    return {"w": torch.full((2,), float(value))}


def test_a_failed_run_leaves_its_labels_unseen(tmp_path):
    reg = ModelRegistry(str(tmp_path), "seg")
    datastore = FinalLabels({"a": 1, "b": 2, "c": 3})
    loop = CampaignLoop("seg", reg, OPTIONS, datastore_fn=lambda: datastore, train_config_fn=dict)
    assert loop.count_unseen() == 3
    reg.record({"status": "promoted", "labels_seen": {"a": 1}}, weights(1), promote=True)
    assert loop.count_unseen() == 2
    reg.record({"status": "failed", "error": "boom", "labels_seen": {"a": 1, "b": 2, "c": 3}}, None, promote=False)
    reg.record({"status": "interrupted", "labels_seen": {"a": 1, "b": 2, "c": 3}}, None, promote=False)
    assert loop.count_unseen() == 2  # b and c still trigger training
    assert reg.latest_completed()["version"] == 1 and reg.latest_record()["version"] == 3
    reg.record({"status": "kept", "labels_seen": {"a": 1, "b": 2, "c": 3}}, weights(2), promote=False)
    assert loop.count_unseen() == 0  # a kept run did see them
    assert loop.summary()["trigger"]["unseen_labels"] == 0


def test_the_trainer_splits_new_labels_against_the_last_completed_run(tmp_path):
    reg = ModelRegistry(str(tmp_path), "seg")
    reg.record({"status": "promoted", "labels_seen": {"a": 1}, "labels_used": ["a"]}, weights(1), promote=True)
    reg.record({"status": "failed", "error": "boom", "labels_seen": {"a": 1, "b": 2}}, None, promote=False)
    trainer = SegmentationTrainer(
        str(tmp_path), torch.nn.Identity(), DEFAULT_LABELS, (3, 3, 3), (8, 8, 8), reg, device="cpu"
    )
    datalist = [{"image": f"/d/{i}.nii.gz", "label": f"/d/l/{i}.nii.gz", "label_ts": ts} for i, ts in (("a", 1), ("b", 2))]
    context = SimpleNamespace(request={"val_split": 0.0, "incremental": True, "replay_ratio": 1.0}, datalist=datalist)
    train, val = trainer.partition_datalist(context)
    assert trainer._run["new_labels"] == ["b"]  # the failed run's labels are still new
    assert [d["image"] for d in train] == ["/d/b.nii.gz", "/d/a.nii.gz"] and val == []  # b plus a replayed
