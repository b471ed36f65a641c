"""Crash safety: real SIGKILLs of real processes, then a restart.

* The whole server process group is killed with SIGKILL while labels are being saved; the server
  alone while a training run goes. The restarted server lists no temporary file as data, has every label
  that got a 200 byte for byte, a consistent registry, the last promoted version serving (its
  sha256 as recorded), and the interrupted run's labels still new.
* A process recording and promoting versions in a loop is killed with SIGKILL at random moments;
  after each kill the registry is consistent and the serving checkpoint is a whole recorded one.
* SIGTERM to the server alone stops its training subprocess; after SIGKILL to the server alone
  (during the training run above) the subprocess ends by itself.
"""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests

from segloop_bench.server import NO_SCORING, running_server, wait_for

pytestmark = pytest.mark.slow


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def kill_group(server):
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()


def temporaries(folder):
    return [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f.startswith(".tmp-")]


def marked_label(truth_path, dest, mark):
    """The true label with ``mark`` voxels of the corner relabelled: each submission's bytes differ."""
    image = nib.load(truth_path)
    data = np.asarray(image.dataobj).astype(np.uint8)
    data.flat[:mark] = 1
    nib.save(nib.Nifti1Image(data, image.affine), dest)
    return dest


@pytest.fixture
def studies(trained_segmentation, tmp_path):
    path = str(tmp_path / "studies")
    shutil.copytree(os.path.join(trained_segmentation["root"], "studies"), path)
    return path


def test_kill_during_label_saves_keeps_every_acknowledged_label(studies, trained_segmentation, tmp_path):
    truth = os.path.join(trained_segmentation["root"], "ground_truth")
    conf = {"models": "segmentation", "auto_train": "false"}
    acknowledged = {}  # (image, tag) -> sha256 of the uploaded bytes that got a 200
    uploads = []
    for k in range(40):
        case = f"case_{8 + k % 4:03d}"
        uploads.append((case, f"t{k}", marked_label(os.path.join(truth, f"{case}.nii.gz"), str(tmp_path / f"l{k}.nii.gz"), k + 1)))
    with running_server(studies, conf=conf, log_path=str(tmp_path / "server1.log"), env=NO_SCORING) as server:
        stop = threading.Event()

        def submit():
            for case, tag, path in uploads:
                if stop.is_set():
                    return
                try:
                    with open(path, "rb") as f:
                        r = requests.put(f"{server.url}/datastore/label", params={"image": case, "tag": tag}, files={"label": (f"{case}.nii.gz", f)}, timeout=60)
                except requests.RequestException:
                    return
                if r.status_code == 200:
                    acknowledged[(case, tag)] = sha256(path)

        threads = [threading.Thread(target=submit) for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acknowledged) >= 10, timeout=120, every=0.05, what="ten saved labels")
        kill_group(server)  # mid-stream: requests are in flight
        stop.set()
        for t in threads:
            t.join()
    # What a kill during a copy leaves: a temporary file beside the data.
    open(os.path.join(studies, ".tmp-leftover.nii.gz"), "wb").write(b"partial")
    open(os.path.join(studies, "labels", "final", ".tmp-leftover.nii.gz"), "wb").write(b"partial")
    with running_server(studies, conf=conf, log_path=str(tmp_path / "server2.log"), env=NO_SCORING) as server:
        assert not temporaries(studies)
        objects = requests.get(f"{server.url}/datastore/", params={"output": "all"}, timeout=60).json()["objects"]
        assert not [i for i in objects if "tmp" in i]
        for (case, tag), digest in acknowledged.items():
            assert tag in objects[case]["labels"], (case, tag)
            stored = os.path.join(studies, "labels", tag, f"{case}.nii.gz")
            assert sha256(stored) == digest, (case, tag)
        json.load(open(os.path.join(studies, "datastore_v2.json")))
        print(f"{len(acknowledged)} labels acknowledged before the kill, all stored intact")


def test_kill_during_training_keeps_the_serving_version(studies, trained_segmentation, tmp_path):
    conf = {"models": "segmentation", "auto_train": "false"}
    model_dir = os.path.join(studies, ".segloop", "model")
    serving_before = sha256(os.path.join(model_dir, "segmentation.pt"))
    truth = os.path.join(trained_segmentation["root"], "ground_truth")
    with running_server(studies, conf=conf, log_path=str(tmp_path / "server1.log"), env=NO_SCORING) as server:
        with open(os.path.join(truth, "case_008.nii.gz"), "rb") as f:
            assert requests.put(f"{server.url}/datastore/label", params={"image": "case_008"}, files={"label": ("case_008.nii.gz", f)}, timeout=60).status_code == 200
        unseen_before = requests.get(f"{server.url}/segloop/models/segmentation", timeout=60).json()["trigger"]["unseen_labels"]
        assert unseen_before >= 1
        r = requests.post(f"{server.url}/train/segmentation", json={"max_seconds": 120, "max_epochs": 1000}, timeout=60)
        assert r.status_code == 200, r.text
        wait_for(lambda: requests.get(f"{server.url}/segloop/models/segmentation", timeout=60).json()["training_run"], 120, 1, "the run to start")
        children = training_children(server.proc.pid)
        assert children
        # Another run while one trains: refused (MONAI Label's 429) unless queued with enqueue=true.
        r = requests.post(f"{server.url}/train/segmentation", json={"max_epochs": 1}, timeout=60)
        assert r.status_code == 429 and "Already Running" in r.text, r.text
        r = requests.post(f"{server.url}/train/segmentation", params={"enqueue": "true"}, json={"max_epochs": 1}, timeout=60)
        assert r.status_code == 200 and r.json()["status"] == "SUBMITTED", r.text
        tasks = requests.get(f"{server.url}/train/", params={"all": "true"}, timeout=60).json()
        assert [t["status"] for t in tasks][-2:] == ["RUNNING", "SUBMITTED"], tasks
        time.sleep(5)  # inside the run: data loading and the first iterations
        # The server alone: its training subprocess must end by itself (killing the group would hide that).
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        assert wait_for(lambda: not any(alive(c) for c in children), 30, 0.5, "the orphaned run to end")
    with running_server(studies, conf=conf, log_path=str(tmp_path / "server2.log"), env=NO_SCORING) as server:
        state = requests.get(f"{server.url}/segloop/models/segmentation", timeout=60).json()
        assert state["training_run"] is None
        assert state["serving_version"] == 1 and len(state["versions"]) == 1
        assert any(e["event"] == "interrupted" for e in state["events"])
        assert sha256(os.path.join(model_dir, "segmentation.pt")) == serving_before == state["versions"][0]["sha256"]
        assert not temporaries(studies) and not [d for d in os.listdir(os.path.join(model_dir, "segmentation")) if d.startswith("run_")]
        # The interrupted run saw case_008's label but recorded nothing: it is still new.
        assert state["trigger"]["unseen_labels"] == unseen_before
        r = requests.post(f"{server.url}/infer/segmentation", params={"image": "case_009", "output": "json"}, timeout=300)
        assert r.status_code == 200 and r.json()["model_version"] == 1, r.text


PROMOTER = textwrap.dedent(
    """
    import sys, torch
    from segloop.campaign.registry import ModelRegistry
    registry = ModelRegistry(sys.argv[1], "segmentation")
    print("ready", flush=True)
    for i in range(10**6):
        weights = {"w": torch.full((256, 1024), float(i))}  # 1 MiB: a copy takes a moment
        registry.record({"status": "promoted", "labels_seen": {"case": i}}, weights, promote=True)
    """
)


def test_kills_during_promotion_leave_a_consistent_registry(tmp_path):
    from segloop.campaign.registry import ModelRegistry
    from segloop.io import remove_leftover_temporaries

    model_dir = str(tmp_path / "model")
    rng = random.Random(0)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for attempt in range(6):
        proc = subprocess.Popen([sys.executable, "-c", PROMOTER, model_dir], stdout=subprocess.PIPE, env=env)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        registry = ModelRegistry(model_dir, "segmentation")
        state = registry.state()  # parses: the registry file is whole
        remove_leftover_temporaries(model_dir)  # what the server does when it starts ...
        registry.verify_serving()  # ... and before it serves: the serving file matches the registry
        state = registry.state()
        serving = state["serving"]
        if serving is None:
            continue
        record = next(v for v in state["versions"] if v["version"] == serving)
        assert sha256(registry.serving_path) == record["sha256"] == sha256(registry.checkpoint_path(serving))
        assert [v["version"] for v in state["versions"]] == list(range(1, len(state["versions"]) + 1))
    assert serving and serving > 1, "the kills never let a promotion through: the test proves nothing"


def training_children(pid):
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in children:
        try:  # a child that has just exited (gone, or a zombie not yet reaped) is not training
            if "monailabel.interfaces.utils.app" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


def alive(process):
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_stops_the_training_run(studies, tmp_path):
    conf = {"models": "segmentation", "auto_train": "false"}
    with running_server(studies, conf=conf, log_path=str(tmp_path / "server.log"), env=NO_SCORING) as server:
        assert requests.post(f"{server.url}/train/segmentation", json={"max_seconds": 300, "max_epochs": 1000}, timeout=60).status_code == 200
        children = wait_for(lambda: training_children(server.proc.pid), 60, 0.5, "the training subprocess")
        os.kill(server.proc.pid, signal.SIGTERM)  # the server alone, not its process group
        server.proc.wait(timeout=60)
        assert wait_for(lambda: not any(alive(c) for c in children), 30, 0.5, "the training subprocess to end")
