"""Checkpoint integrity: versions carry their sha256, a tampered file never serves (fast, no server)."""

import hashlib
import json
import logging
from types import SimpleNamespace

import pytest
import torch

import segloop.campaign.registry as registry_module
from segloop.campaign.loop import CampaignLoop
from segloop.campaign.registry import VERSION_KEY, ModelRegistry
from segloop.errors import ClientError
from segloop.infers import SegmentationInfer
from segloop.labels import DEFAULT_LABELS


class Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))


def weights(value):
    return {"w": torch.full((2,), float(value))}


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tamper(path, value=99.0):
    """Replace a checkpoint with another valid one (as a stray copy or a bad restore would)."""
    torch.save({"model": weights(value), VERSION_KEY: 1}, path)


def served_value(reg):
    return float(torch.load(reg.serving_path, weights_only=True)["model"]["w"][0])


@pytest.fixture
def reg(tmp_path):
    reg = ModelRegistry(str(tmp_path), "seg")
    reg.record({"status": "promoted"}, weights(1), promote=True)
    reg.record({"status": "kept"}, weights(2), promote=False)
    reg.record({"status": "promoted"}, weights(3), promote=True)
    reg.record({"status": "failed", "error": "boom"}, None, promote=False)
    return reg


def test_each_version_records_the_sha256_of_its_checkpoint(reg):
    versions = {v["version"]: v for v in reg.state()["versions"]}
    for number in (1, 2, 3):
        assert versions[number]["sha256"] == sha(reg.checkpoint_path(number))
    assert "sha256" not in versions[4]  # a failed run has no checkpoint
    assert sha(reg.serving_path) == versions[3]["sha256"]
    assert reg.verify_serving() is None


def test_a_tampered_serving_file_is_restored_from_its_version(reg):
    tamper(reg.serving_path)
    found = sha(reg.serving_path)
    event = reg.verify_serving()
    assert event["event"] == "checkpoint_mismatch" and event["restored"] == 3
    assert event["found"] == found and event["expected"] == reg.state()["versions"][2]["sha256"]
    assert "replaced or corrupted" in event["reason"]
    assert served_value(reg) == 3.0 and reg.serving() == 3
    assert reg.state()["events"][-1] == event
    assert reg.verify_serving() is None  # intact again


def test_with_its_version_file_also_damaged_the_newest_good_promoted_version_serves(reg):
    tamper(reg.serving_path)
    tamper(reg.checkpoint_path(3), 7.0)
    event = reg.verify_serving()
    assert event["restored"] == 1  # v2 was only kept, never promoted: not a fallback
    assert reg.serving() == 1 and served_value(reg) == 1.0


def test_with_no_good_version_the_serving_file_goes_and_the_infer_answers_409(reg, tmp_path):
    tamper(reg.serving_path)
    for number in (1, 3):
        tamper(reg.checkpoint_path(number), 5.0)
    event = reg.verify_serving()
    assert event["restored"] is None and "nothing serves" in event["reason"]
    assert not (tmp_path / "seg.pt").exists() and reg.serving() is None
    task = infer(reg)
    with pytest.raises(ClientError) as e:
        task._get_network("cpu", {})
    assert e.value.status_code == 409 and "not trained yet" in e.value.message


def test_rollback_refuses_a_version_file_that_does_not_match_its_record(reg):
    tamper(reg.checkpoint_path(1))
    with pytest.raises(ClientError) as e:
        reg.rollback(1)
    assert e.value.status_code == 409 and "sha256" in e.value.message and "v0001.pt" in e.value.message
    assert reg.serving() == 3 and served_value(reg) == 3.0
    assert reg.rollback(2) == {"serving": 2, "previous": 3}  # an intact version still rolls back


def test_records_without_a_hash_are_legacy_and_accepted(reg):
    state = json.load(open(reg.path))
    for v in state["versions"]:
        v.pop("sha256", None)
    json.dump(state, open(reg.path, "w"))
    tamper(reg.serving_path)
    assert reg.verify_serving() is None and served_value(reg) == 99.0
    tamper(reg.checkpoint_path(1))
    assert reg.rollback(1)["serving"] == 1


def infer(reg):
    return SegmentationInfer(
        path=[reg.serving_path], network=Scale(), labels=DEFAULT_LABELS, target_spacing=(3, 3, 3),
        roi_size=(8, 8, 8), device="cpu", registry=reg,
    )


def test_the_infer_checks_each_reload_loads_the_restored_version_and_hashes_once_per_file(reg, monkeypatch, caplog):
    hashed = []
    real = registry_module.sha256_file
    monkeypatch.setattr(registry_module, "sha256_file", lambda path: hashed.append(path) or real(path))
    task = infer(reg)
    data = {}
    assert float(task._get_network("cpu", data).w[0].detach()) == 3.0 and data["result"]["model_version"] == 3
    for _ in range(3):
        task._get_network("cpu", {})
    assert hashed == [reg.serving_path]  # one hash for the file, none per request

    tamper(reg.serving_path)
    with caplog.at_level(logging.WARNING, logger="segloop.infers.segmentation"):
        data = {}
        network = task._get_network("cpu", data)
    assert float(network.w[0].detach()) == 3.0 and data["result"]["model_version"] == 3  # the restored file, not the stray one
    assert any("replaced or corrupted" in r.getMessage() for r in caplog.records)
    assert reg.state()["events"][-1]["event"] == "checkpoint_mismatch"


def test_the_campaign_summary_shows_the_latest_mismatch(reg):
    options = SimpleNamespace(labels=DEFAULT_LABELS, retrain_every=1, auto_train=False, retrain_debounce_s=0, retrain_max_seconds=0, first_run_max_seconds=0)
    no_labels = SimpleNamespace(get_labeled_images=lambda: [])
    loop = CampaignLoop("seg", reg, options, datastore_fn=lambda: no_labels, train_config_fn=dict)
    assert loop.summary()["checkpoint_warning"] is None
    tamper(reg.serving_path)
    event = reg.verify_serving()
    assert loop.summary()["checkpoint_warning"] == event
