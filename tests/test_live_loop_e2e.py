"""The live loop through the real server: labels in, new versions out, nobody presses train."""

import os
import shutil
import threading

import pytest
import requests
from monailabel.client import MONAILabelClient

from segloop_bench.server import NO_SCORING, running_server, wait_for

pytestmark = pytest.mark.slow

CONF = {
    "models": "segmentation",  # the automatic model's loop; the prompt model's is in test_prompt_e2e
    "retrain_max_seconds": "4", "first_run_max_seconds": "4",
    "retrain_debounce_s": "1",
    "promotion_tolerance": "1.0",  # promotion itself is unit-tested; here every finished run serves
    # The scoring job after each version is test_activelearning_e2e's subject: one pass per case
    # here (no MC-dropout / TTA passes), so it does not take the cores the runs under test need.
    "mc_samples": "0",
    "tta_samples": "0",
}


# MONAI Label runs /infer inside its event loop, so every other request waits for the hammer's
# inference in flight; with a training run and the scoring job on the same 2 cores one took 31 s
# (1-2 s alone) and a 30 s read timeout failed a CI run. The loop, not latency, is tested here.
STATE_TIMEOUT_S = 120


def model_state(url):
    return requests.get(f"{url}/segloop/models/segmentation", timeout=STATE_TIMEOUT_S).json()


def wait_until(predicate, timeout=300, every=1.0, what="condition"):
    return wait_for(predicate, timeout, every, what)


def idle(url):
    s = model_state(url)
    t = s["trigger"]
    busy = t["running"] or t["queued"] or s["training_run"] is not None
    train = requests.get(f"{url}/train/", timeout=STATE_TIMEOUT_S)
    if train.status_code == 200 and train.json()["status"] in ("SUBMITTED", "RUNNING"):
        busy = True
    return None if busy else s


def infer_version(url, image="case_004"):
    r = requests.post(f"{url}/infer/segmentation", params={"image": image, "output": "json"}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


class InferenceHammer(threading.Thread):
    """Keeps /infer busy while versions are trained and promoted: a request, then a pause
    (``PAUSE_S``). The runs under test train at a lower priority (nice 10) than the server's
    inference: with a pause much shorter than a request they got so little CPU that a 4-s budget
    run took minutes to reach its epoch end (``benchmarks/trials.md``)."""

    PAUSE_S = 2.0

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.stop, self.results = url, threading.Event(), []

    def run(self):
        while not self.stop.is_set():
            r = requests.post(f"{self.url}/infer/segmentation", params={"image": "case_004", "output": "json"}, timeout=300)
            self.results.append((r.status_code, r.json().get("model_version") if r.status_code == 200 else r.text))
            self.stop.wait(self.PAUSE_S)


@pytest.fixture(scope="module")
def studies(sample_root, tmp_path_factory):
    """Sample studies with two cases already labelled (the campaign's starting point)."""
    path = str(tmp_path_factory.mktemp("loop") / "studies")
    shutil.copytree(os.path.join(sample_root, "studies"), path)
    os.makedirs(os.path.join(path, "labels", "final"))
    for case in ("case_000", "case_001"):
        shutil.copy(os.path.join(sample_root, "ground_truth", f"{case}.nii.gz"), os.path.join(path, "labels", "final"))
    return path


def test_live_loop(studies, sample_root, tmp_path):
    truth = lambda case: os.path.join(sample_root, "ground_truth", f"{case}.nii.gz")  # noqa: E731
    log = str(tmp_path / "server.log")
    with running_server(studies, conf=CONF, log_path=log, env=NO_SCORING) as server:
        url = server.url
        client = MONAILabelClient(url, tmpdir=str(tmp_path))

        # Labels found at start are trained on by themselves: version 1 serves.
        state = wait_until(lambda: idle(url) if model_state(url)["serving_version"] else None, what="version 1")
        assert state["serving_version"] == 1 and state["trigger"]["runs_started"] == 1
        assert infer_version(url) == 1

        # The proposal served for case_002 is compared with the submitted correction.
        assert infer_version(url, "case_002") == 1
        hammer = InferenceHammer(url)
        hammer.start()
        saved = client.save_label("case_002", truth("case_002"), tag="final", params={"annotator": "dr_a"})
        effort = saved["edit_effort"]["segmentation"]
        assert effort["version"] == 1 and set(effort["dice"]) == {"liver", "spleen", "kidney", "tumor"}

        # Labels arriving while that run trains cause exactly one follow-up run. The registry marks
        # the run as running only after it has read its datalist: from then on, a label is new.
        wait_until(lambda: model_state(url)["training_run"], every=0.2, what="run 2 to read its labels")
        client.save_label("case_003", truth("case_003"), tag="final")
        client.save_label("case_005", truth("case_005"), tag="final")
        state = wait_until(lambda: idle(url) if model_state(url)["serving_version"] == 3 else None, what="version 3")
        hammer.stop.set()
        hammer.join()

        assert state["trigger"]["runs_started"] == 3
        versions = {v["version"]: v for v in state["versions"]}
        assert sorted(versions) == [1, 2, 3]
        assert sorted(versions[2]["labels_seen"]) == ["case_000", "case_001", "case_002"]
        assert sorted(versions[3]["labels_seen"]) == ["case_000", "case_001", "case_002", "case_003", "case_005"]
        assert versions[3]["parent"] == 2 and versions[2]["parent"] == 1
        assert infer_version(url) == 3
        assert state["edit_effort_by_version"]["1"]["submissions"] == 1

        # Inference never failed while versions were trained and swapped, and versions only moved forward.
        assert hammer.results and all(code == 200 for code, _ in hammer.results), hammer.results
        seen = [v for _, v in hammer.results]
        assert seen == sorted(seen) and seen[-1] >= 2

        # A diverging run (NaN loss) is recorded as failed and leaves the serving version alone.
        client.train_start("segmentation", {"lr": 1e6, "max_epochs": 3})
        wait_until(lambda: idle(url), what="failing run to end")
        assert requests.get(f"{url}/train/").json()["status"] == "ERROR"
        state = model_state(url)
        assert state["serving_version"] == 3
        assert state["versions"][-1]["status"] == "failed" and "nan" in state["versions"][-1]["error"]
        assert infer_version(url) == 3

        # Rollback to any stored version, by request.
        r = requests.post(f"{url}/segloop/models/segmentation/rollback", json={"version": 2})
        assert r.status_code == 200 and r.json() == {"serving": 2, "previous": 3}
        assert infer_version(url) == 2
        assert requests.post(f"{url}/segloop/models/segmentation/rollback", json={"version": 99}).status_code == 404
        assert client.info()["segloop"]["segmentation"]["serving_version"] == 2

        # A run cut short by the server's stop ...
        requests.post(f"{url}/train/segmentation", json={"max_seconds": 300, "max_epochs": 1000})
        wait_until(lambda: model_state(url)["training_run"], every=0.5, what="manual run to start")

    # ... is discarded cleanly at the next start; the promoted (here: rolled-back) version serves
    # again; nothing retrains by itself.
    with running_server(studies, conf=CONF, log_path=log + ".2", env=NO_SCORING) as server:
        state = model_state(server.url)
        assert state["training_run"] is None and state["serving_version"] == 2
        assert state["events"][-1]["event"] == "interrupted"
        assert state["trigger"]["runs_started"] == 0
        assert infer_version(server.url) == 2
