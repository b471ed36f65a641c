"""End to end through the real ``monailabel start_server`` and MONAI Label's own client.

Automatic retraining is off here: this is the manual path (press train, then infer).
"""

import os
import re
import shutil
import subprocess

import nibabel as nib
import numpy as np
import psutil
import pytest
import requests
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from segloop.data.sample import save_nifti
from segloop.pacs.orthanc import free_port
from segloop_bench.server import NO_SCORING, running_server, wait_for
from segloop_bench.training import build_task_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(sample_root, tmp_path_factory):
    studies = str(tmp_path_factory.mktemp("e2e") / "studies")
    shutil.copytree(os.path.join(sample_root, "studies"), studies)
    log = str(tmp_path_factory.mktemp("logs") / "server.log")
    # Started as a user would by hand, without SegLoop's OpenMP setting: the app itself must give
    # it to the training subprocess (segloop.cpu_sharing).
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("OMP_WAIT_POLICY", raising=False)
        mp.setattr("segloop_bench.server.shared_cpu_env", lambda env: env)
        # train_rdzv: where the nodes of a multi-node run meet (node 0 = this machine, loopback here)
        conf = {"auto_train": "false", "train_rdzv": f"127.0.0.1:{free_port()}"}
        with running_server(studies, conf=conf, log_path=log, env=NO_SCORING) as handle:
            handle.studies, handle.log, handle.rdzv = studies, log, conf["train_rdzv"]
            yield handle


def truth(sample_root, case_id):
    return os.path.join(sample_root, "ground_truth", f"{case_id}.nii.gz")


def train_subprocess_env(server):
    """The environment of the server's training subprocess, once it runs (else None)."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "train" in child.cmdline() and "monailabel.interfaces.utils.app" in child.cmdline():
                return child.environ()
        except psutil.NoSuchProcess:
            continue
    return None


def wait_for_training(client, timeout=600):
    return wait_for(
        lambda: (s := client.train_status())["status"] not in ("SUBMITTED", "RUNNING") and s, timeout, 2, "training"
    )


def test_full_annotation_round_trip(server, sample_root, tmp_path):
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))

    info = client.info()
    assert info["name"] == "SegLoop"
    assert info["labels"] == ["liver", "spleen", "kidney", "tumor"]  # MONAI Label's convention (its OHIF panel needs it)
    assert info["models"]["segmentation"]["labels"] == {"liver": 1, "spleen": 2, "kidney": 3, "tumor": 4}
    assert "segmentation" in info["models"] and "segmentation" in info["trainers"]
    assert {"random", "first"} <= set(info["strategies"])

    # Before any training the model answers 409 with a message, not random output.
    r = requests.post(f"{server.url}/infer/segmentation", params={"image": "case_000"})
    assert r.status_code == 409 and "not trained yet" in r.json()["detail"]

    sample = client.next_sample("first", {})
    assert sample["id"] == "case_000"

    # A user uploads a CT of their own, then labels it and two more cases.
    own = os.path.join(sample_root, "studies", "case_005.nii.gz")
    assert client.upload_image(own, image_id="my_ct")["image"] == "my_ct"
    for image_id, case in [("my_ct", "case_005"), ("case_000", "case_000"), ("case_001", "case_001")]:
        client.save_label(image_id, truth(sample_root, case), tag="final", params={"annotator": "dr_test"})
    assert sorted(client.datastore()["objects"]["my_ct"]["labels"]) == ["final", "read-dr_test"]  # the label and the annotator's read

    started = client.train_start("segmentation", {"max_epochs": 2, "val_split": 0.0, "seed": 0})
    assert started["status"] in ("SUBMITTED", "RUNNING")
    # The training subprocess shares the CPU with the server: the app lets its OpenMP threads sleep.
    assert "OMP_WAIT_POLICY" not in psutil.Process(server.proc.pid).environ()
    train_env = wait_for(lambda: train_subprocess_env(server), 60, 0.2, "the training subprocess")
    assert train_env.get("OMP_WAIT_POLICY") == "PASSIVE"
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    assert any("progress: epoch" in line for line in status["details"])  # progress is reported
    stats = client.info()["train_stats"]["segmentation"]
    assert stats["progress"]["epoch"] == 2 and stats["progress"]["percent"] == 100.0
    assert os.path.exists(os.path.join(server.studies, ".segloop", "model", "segmentation.pt"))

    # Inference on a stored case returns a label map on the input's exact grid.
    image_path = os.path.join(server.studies, "case_002.nii.gz")
    result_file, params = client.infer("segmentation", "case_002", {})
    out, ref = nib.load(result_file), nib.load(image_path)
    assert out.shape == ref.shape and np.allclose(out.affine, ref.affine, atol=1e-4)
    served = np.asarray(out.dataobj)
    assert set(np.unique(served).tolist()) <= {0, 1, 2, 3, 4}
    # It is the trained version's answer: the same published model run in this process gives the
    # same labels. (Six iterations may well answer background everywhere: quality is the learning
    # and active-learning tests' business, not this one's.)
    local_file, _ = build_task_config(server.studies, {"auto_train": "false"}).infer()({"image": image_path})
    local = np.asarray(nib.load(local_file).dataobj)
    os.remove(local_file)
    assert np.mean(served != local) <= 1e-3, f"{np.mean(served != local):.4%} of voxels differ from the in-process answer"
    assert params["model"] == "segmentation" and params["checkpoint"] == "segmentation.pt"

    # ... and on an uploaded file that is not in the datastore.
    result_file, _ = client.infer("segmentation", "", {}, file=os.path.join(sample_root, "studies", "case_003.nii.gz"))
    assert nib.load(result_file).shape == nib.load(os.path.join(sample_root, "studies", "case_003.nii.gz")).shape

    # /batch/infer with MONAI Label's own batch task (no batch_infer_workers) on this GPU-less
    # machine: every unlabelled image gets an "original" label on its grid.
    unlabelled = [i for i, o in client.datastore()["objects"].items() if "final" not in o["labels"]]
    r = requests.post(f"{server.url}/batch/infer/segmentation", params={"images": "unlabeled"}, json={}, timeout=60)
    assert r.status_code == 200, r.text
    done = wait_for(lambda: (s := requests.get(f"{server.url}/batch/infer/").json())["status"] not in ("SUBMITTED", "RUNNING") and s,
                    300, 1, "batch inference")
    assert done["status"] == "DONE", done["details"][-5:]
    for image_id in unlabelled:
        label = nib.load(os.path.join(server.studies, "labels", "original", f"{image_id}.nii.gz"))
        assert label.shape == nib.load(os.path.join(server.studies, f"{image_id}.nii.gz")).shape, image_id


def test_bad_requests_get_clear_client_errors(server, sample_root, tmp_path):
    url = server.url
    r = requests.post(f"{url}/infer/segmentation", params={"image": "/etc/passwd"})
    assert r.status_code == 400 and "invalid image id" in r.json()["detail"]
    r = requests.post(f"{url}/infer/segmentation", params={"image": "no_such_case"})
    assert r.status_code == 404
    r = requests.post(f"{url}/infer/no_such_model", params={"image": "case_003"})
    assert r.status_code == 404 and "no model 'no_such_model'" in r.json()["detail"] and "segmentation" in r.json()["detail"]

    wrong = str(tmp_path / "wrong.nii.gz")
    save_nifti(np.zeros((10, 10, 10), np.uint8), np.eye(4), wrong)
    with open(wrong, "rb") as f:
        r = requests.put(f"{url}/datastore/label", params={"image": "case_004", "tag": "final"}, files={"label": f})
    assert r.status_code == 422 and "does not match the image shape" in r.json()["detail"]

    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not an image")
    with open(corrupt, "rb") as f:
        r = requests.put(f"{url}/datastore/", params={"image": "bad_upload"}, files={"file": ("x.nii.gz", f)})
    assert r.status_code == 400 and "NIfTI" in r.json()["detail"]
    assert "bad_upload" not in requests.get(f"{url}/datastore/", params={"output": "all"}).json()["objects"]

    client = MONAILabelClient(url, tmpdir=str(tmp_path))
    with pytest.raises(MONAILabelClientException):
        client.save_label("case_004", wrong, tag="final")
    assert "final" not in client.datastore()["objects"]["case_004"]["labels"]


def node_zero_torchrun(server):
    """(command line, environment) of the torchrun agent the server started for the current run, once it runs."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            command = child.cmdline()
            if "torch.distributed.run" in command:
                return command, child.environ()
        except psutil.NoSuchProcess:
            continue
    return None


def test_training_runs_of_both_models_on_two_nodes_and_on_two_processes_through_torchrun(server, sample_root, tmp_path):
    """``train_nodes: 2`` (as ``--conf train_nodes 2`` sets for every run): the server's run is node
    0 of a torchrun meeting at ``train_rdzv``; node 1 joins with the README's command (node 0's,
    ``--node_rank 1``, the server's environment), started here on the same machine; one CPU rank
    each on gloo, each on its shard of the cases; one version recorded. Then the prompt model's run
    on 2 processes of one node (``train_procs: 2``)."""
    client = MONAILabelClient(server.url, tmpdir=str(tmp_path))
    for case in ("case_000", "case_001"):  # the round trip's labels, when this test runs alone
        if "final" not in client.datastore()["objects"][case]["labels"]:
            client.save_label(case, truth(sample_root, case), tag="final")
    models = lambda: requests.get(f"{server.url}/segloop/models/segmentation", timeout=30).json()  # noqa: E731
    before = len(models()["versions"])
    too_many = requests.post(f"{server.url}/train/segmentation", json={"train_procs": 65}, timeout=30)
    assert too_many.status_code == 400 and "train_procs" in too_many.text

    started = client.train_start("segmentation", {"train_nodes": 2, "max_epochs": 1, "val_split": 0.0, "seed": 0})
    assert started["status"] in ("SUBMITTED", "RUNNING")
    command, env = wait_for(lambda: node_zero_torchrun(server), 120, 0.2, "node 0's torchrun")
    rank = command.index("--node_rank")
    assert command[rank + 1] == "0" and command[command.index("--rdzv_endpoint") + 1] == server.rdzv
    node_one = subprocess.run(command[:rank + 1] + ["1"] + command[rank + 2:], env=env, capture_output=True, text=True, timeout=600)
    assert node_one.returncode == 0, node_one.stdout[-3000:] + node_one.stderr[-3000:]
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    state = models()
    assert len(state["versions"]) == before + 1 and not state["training_run"]  # exactly one version, from rank 0
    version = state["versions"][-1]
    assert version["status"] in ("promoted", "kept") and version["iterations"] > 0
    with open(server.log) as f:
        log = f.read()
    run = log[log.rindex("distributed training: 2 processes"):]
    shards = [int(n) for rank, text in ((0, run), (1, node_one.stdout + node_one.stderr))
              for n in re.findall(rf"\) - {rank} - Records for Training: (\d+)", text)[:1]]
    labelled = len(version["labels_used"])
    assert len(shards) == 2 and shards[0] == shards[1] == -(-labelled // 2), (shards, labelled)  # MONAI's even partition
    assert run.count("Distributed Training = TRUE") == 0  # torchrun's ranks, not MONAI Label's multi-GPU spawn
    stats = client.info()["train_stats"]["segmentation"]
    assert stats["progress"]["epoch"] == 1 and stats["version"]["version"] == version["version"]

    # The prompt model trains the same way (its simulated clicks run on each rank's own crops).
    prompt = lambda: requests.get(f"{server.url}/segloop/models/prompt", timeout=30).json()  # noqa: E731
    before = len(prompt()["versions"])
    client.train_start("prompt", {"train_procs": 2, "max_iterations": 2, "val_split": 0.0, "seed": 0})
    status = wait_for_training(client)
    assert status["status"] == "DONE", status
    state = prompt()
    assert len(state["versions"]) == before + 1 and state["versions"][-1]["iterations"] == 2
