import threading
import time

import numpy as np
import pytest
import torch

from segloop.campaign.effort import edit_effort
from segloop.campaign.registry import VERSION_KEY, ModelRegistry
from segloop.campaign.trigger import RetrainTrigger
from segloop.errors import ClientError
from segloop.trainers.split import select_incremental


def weights(value):
    return {"w": torch.full((2,), float(value))}


def test_registry_promotes_keeps_fails_and_rolls_back(tmp_path):
    reg = ModelRegistry(str(tmp_path), "seg")
    assert reg.serving() is None
    v1 = reg.record({"status": "promoted", "labels_seen": {"a": 1}}, weights(1), promote=True)
    v2 = reg.record({"status": "kept", "labels_seen": {"a": 1, "b": 2}}, weights(2), promote=False)
    v3 = reg.record({"status": "failed", "error": "boom"}, None, promote=False)
    assert (v1["version"], v2["version"], v3["version"]) == (1, 2, 3)
    assert reg.serving() == 1
    served = torch.load(reg.serving_path, weights_only=True)
    assert served[VERSION_KEY] == 1 and torch.equal(served["model"]["w"], weights(1)["w"])
    assert reg.rollback(2) == {"serving": 2, "previous": 1}
    assert torch.load(reg.serving_path, weights_only=True)[VERSION_KEY] == 2
    with pytest.raises(ClientError) as e:
        reg.rollback(3)  # a failed run has no checkpoint
    assert e.value.status_code == 409
    with pytest.raises(ClientError) as e:
        reg.rollback(9)
    assert e.value.status_code == 404
    assert [v["serving"] for v in reg.history()] == [False, True, False]
    assert reg.latest_record()["version"] == 3


def test_registry_discards_a_run_interrupted_by_a_restart(tmp_path):
    reg = ModelRegistry(str(tmp_path), "seg")
    reg.record({"status": "promoted"}, weights(1), promote=True)
    reg.start_run("run_x", {"incremental": True})
    restarted = ModelRegistry(str(tmp_path), "seg")
    assert restarted.discard_interrupted_run()["run_id"] == "run_x"
    assert restarted.state()["running"] is None and restarted.serving() == 1
    assert restarted.state()["events"][-1]["event"] == "interrupted"
    assert restarted.discard_interrupted_run() is None


def test_select_incremental_trains_new_labels_with_a_replay_sample():
    items = [{"image": f"/d/c{i}.nii.gz", "label_ts": 1} for i in range(10)]
    items[3]["label_ts"] = 2  # re-edited since the last run
    seen = {f"c{i}": 1 for i in range(8)}  # c8, c9 are new
    parts = select_incremental(items, seen, replay_ratio=1.0, seed=0)
    assert sorted(d["image"] for d in parts["new"]) == ["/d/c3.nii.gz", "/d/c8.nii.gz", "/d/c9.nii.gz"]
    assert len(parts["replay"]) == 3 and not set(map(id, parts["replay"])) & set(map(id, parts["new"]))
    assert select_incremental(items, seen, replay_ratio=0.0, seed=0)["replay"] == []


def test_edit_effort_per_label():
    final = np.zeros((4, 4, 4), np.uint8)
    final[:2] = 1
    proposal = final.copy()
    proposal[0] = 0  # half of label 1 missed
    effort = edit_effort(proposal, final, {"liver": 1, "spleen": 2})
    assert effort["dice"]["liver"] == pytest.approx(2 * 16 / (16 + 32))
    assert effort["changed_fraction"]["liver"] == pytest.approx(0.5)
    assert np.isnan(effort["changed_fraction"]["spleen"])
    assert effort["changed_voxels_fraction"] == pytest.approx(16 / 64)


class FakeRuns:
    """Stands in for MONAI Label's background runner: each run lasts ``seconds`` in a thread."""

    def __init__(self, seconds=0.3):
        self.seconds, self.started, self.unseen = seconds, 0, 0

    def start(self, on_finished):
        self.started += 1
        seen_at_start = self.unseen

        def run():
            time.sleep(self.seconds)
            self.unseen -= seen_at_start  # the run saw the labels present when it started
            on_finished({"status": "DONE"})

        threading.Thread(target=run, daemon=True).start()


def wait_idle(trigger, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = trigger.state()
        if not s["running"] and not s["queued"]:
            time.sleep(0.3)
            if not trigger.state()["running"]:
                return
        time.sleep(0.05)
    raise TimeoutError


def test_labels_during_a_run_cause_exactly_one_follow_up():
    runs = FakeRuns()
    trigger = RetrainTrigger("seg", lambda: runs.unseen, runs.start, lambda: False, debounce_s=0.05)
    runs.unseen = 1
    trigger.on_label_saved()
    time.sleep(0.15)
    assert trigger.state()["running"]
    for _ in range(3):  # three labels while training
        runs.unseen += 1
        trigger.on_label_saved()
    wait_idle(trigger)
    assert runs.started == 2 and runs.unseen == 0


def test_threshold_disabled_and_busy_slot():
    runs = FakeRuns(0.05)
    trigger = RetrainTrigger("seg", lambda: runs.unseen, runs.start, lambda: False, retrain_every=2, debounce_s=0.01)
    runs.unseen = 1
    trigger.on_label_saved()
    time.sleep(0.2)
    assert runs.started == 0  # below retrain_every
    runs.unseen = 2
    trigger.on_label_saved()
    wait_idle(trigger)
    assert runs.started == 1
    off = RetrainTrigger("seg", lambda: 5, runs.start, lambda: False, enabled=False, debounce_s=0.01)
    off.on_label_saved()
    time.sleep(0.1)
    assert runs.started == 1
    busy = {"manual run": True}
    waiting = RetrainTrigger("seg", lambda: 1, runs.start, lambda: busy["manual run"], debounce_s=0.01, poll_s=0.05)
    waiting.on_label_saved()
    time.sleep(0.2)
    assert runs.started == 1 and waiting.state()["queued"]
    busy["manual run"] = False
    time.sleep(0.3)
    assert runs.started == 2


def test_a_models_first_automatic_run_gets_the_first_run_budget(tmp_path):
    from types import SimpleNamespace

    from segloop.campaign.loop import CampaignLoop
    from segloop.labels import DEFAULT_LABELS

    options = SimpleNamespace(labels=DEFAULT_LABELS, retrain_every=1, auto_train=False, retrain_debounce_s=0,
                              retrain_max_seconds=60, first_run_max_seconds=300, retrain_max_iterations={"seg": 0},
                              first_run_max_iterations={"seg": 40, "prompt": 5})
    reg = ModelRegistry(str(tmp_path), "seg")
    loop = CampaignLoop("seg", reg, options, datastore_fn=lambda: None, train_config_fn=dict)
    assert loop.run_budget() == {"max_seconds": 300, "max_iterations": 40}  # nothing serves yet
    reg.record({"status": "failed", "error": "boom"}, None, promote=False)
    assert loop.run_budget() == {"max_seconds": 300, "max_iterations": 40}  # a failed first run served nothing
    reg.record({"status": "promoted", "labels_seen": {"a": 1}}, weights(1), promote=True)
    assert loop.run_budget() == {"max_seconds": 60, "max_iterations": 0}
