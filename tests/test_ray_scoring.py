"""The scoring job and batch inference on Ray (segloop/scoring/ray_pool.py, segloop/infers/batch_ray.py):
a local 2-worker runtime gives the scores the job computes in its own process, a worker killed
mid-task loses only that task (Ray runs it again), and the runtime is gone when the job ends; a
cluster started outside SegLoop gives the labels the infer task gives in this process, and stays
up. Both paths send their tasks through ``segloop.ray_tasks.map_on_ray``, whose retry the killed
scoring worker tests (a second kill during batch inference would cost another worker start and
test the same code). Through the server: tests/test_activelearning_e2e.py."""

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import nibabel as nib
import numpy as np
import psutil
import pytest
import ray
import torch

from segloop.infers.batch_ray import RayBatchInfer
from segloop.scoring import SCORING_METHOD
from segloop.server.datastore import SegLoopDatastore
from segloop_bench.training import build_task_config
from ray_processes import ray_processes, wait_until_gone

pytestmark = pytest.mark.slow

TINY = {"models": "segmentation", "roi_size": "[32,32,32]", "target_spacing": "[6,6,6]", "mc_samples": "3", "tta_samples": "2"}
def datastore_with_a_version(sample_root, folder, conf):
    """The sample studies, case_000 labelled, and one published version (seeded weights)."""
    studies = os.path.join(folder, "studies")
    shutil.copytree(os.path.join(sample_root, "studies"), studies)
    os.makedirs(os.path.join(studies, "labels", "final"))
    shutil.copy(os.path.join(sample_root, "ground_truth", "case_000.nii.gz"), os.path.join(studies, "labels", "final"))
    torch.manual_seed(0)  # the network's initial weights, every parameter of them
    config = build_task_config(studies, conf)
    config.registry.record({"status": "promoted"}, config.network.state_dict(), promote=True)
    return build_task_config(studies, conf), SegLoopDatastore(studies, labels=config.labels)


def differences(a, b, path=""):
    """Where two score records disagree (numbers beyond 1e-4 relative: float sums in another
    order); times and label timestamps are the two datastores' own."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {"seconds", "scored", "label_ts"}
        return [d for k in sorted(keys) for d in (differences(a.get(k), b.get(k), f"{path}.{k}"))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")][:3]
    if isinstance(a, float) and isinstance(b, float):
        return [] if abs(a - b) <= 1e-4 * max(1.0, abs(a), abs(b)) else [f"{path}: {a} vs {b}"]
    return [] if a == b else [f"{path}: {a!r} vs {b!r}"]


def test_ray_scores_equal_the_single_process_jobs_and_a_killed_workers_task_runs_again(sample_root, tmp_path):
    config, datastore = datastore_with_a_version(sample_root, str(tmp_path / "single"), TINY)
    single = config.scoring_method()[SCORING_METHOD]({}, datastore)
    expected = config.scores.records()
    assert single["errors"] == 0 and len(expected) == len(datastore.list_images())

    config, datastore = datastore_with_a_version(sample_root, str(tmp_path / "ray"), dict(TINY, scoring_workers="2"))
    job = config.scoring_method()[SCORING_METHOD]
    folders_before = ray_folders()  # (a server stopped in the middle of a Ray job, in another test, may leave its own)
    result, killed = run_killing_one_busy_worker(lambda: job({}, datastore), "_score_one")
    assert killed, "no Ray worker was seen scoring an image"
    assert result["errors"] == 0 and result["scored"] == len(expected)  # the killed worker's image was scored again
    got = config.scores.records()
    assert set(got) == set(expected)
    for image, record in expected.items():
        assert not differences(record, got[image]), (image, differences(record, got[image]))
    job_state = config.scores.state()["job"]
    assert job_state["ray"] and job_state["workers"] == 2 and job_state["done"] == job_state["total"]
    assert wait_until_gone(30) == [], "the job's local Ray runtime is still running"
    assert ray_folders() <= folders_before  # its session folder removed with it


def run_killing_one_busy_worker(target, task_name):
    """``target()`` in a thread while the first Ray worker seen running ``task_name`` is SIGKILLed;
    returns its result and the killed PIDs."""
    result, killed = {}, []
    runner = threading.Thread(target=lambda: result.update(value=target()))
    runner.start()
    deadline = time.time() + 300
    while runner.is_alive() and not killed and time.time() < deadline:
        busy = [p for p in ray_processes() if f"ray::{task_name}" in " ".join(p.info["cmdline"] or [])]
        if busy:
            busy[0].kill()
            killed.append(busy[0].pid)
        time.sleep(0.05)
    runner.join(timeout=600)
    return result.get("value"), killed


def test_batch_inference_on_a_ray_cluster_saves_the_in_process_labels_and_leaves_the_cluster_up(sample_root, tmp_path):
    """``ray_address``: a Ray head started outside SegLoop, as a lab runs its cluster, takes the
    batch's tasks. (The local runtime SegLoop starts and stops for a batch: tests/test_activelearning_e2e.py.)"""
    config, datastore = datastore_with_a_version(sample_root, str(tmp_path / "batch"), TINY)
    task = config.infer()
    images = sorted(datastore.list_images())
    expected = {}
    for image in images:  # the infer task in this process, image by image
        path, _ = task({"image": datastore.get_image_uri(image), "device": "cpu"})
        expected[image] = np.asarray(nib.load(path).dataobj)
        os.remove(path)
    with ray_head() as (address, head_processes):
        head = {p.pid for p in head_processes()}
        assert head, "the Ray head did not start"
        batch = RayBatchInfer(lambda: {"segmentation": task}, workers=2, address=address)
        results = batch({"model": "segmentation", "images": "all", "label_tag": "original"}, datastore, infer=None)
        assert sorted(results) == images and all(r.get("label") for r in results.values()), results
        for image in images:
            saved = np.asarray(nib.load(datastore.get_label_uri(image, "original")).dataobj)
            assert saved.shape == expected[image].shape and np.array_equal(saved, expected[image]), image
            info = datastore.get_label_info(image, "original")
            assert info["model"] == "segmentation" and info["params"]["model_version"] == 1, info
        assert head <= {p.pid for p in head_processes()}, "SegLoop stopped a cluster it did not start"
        assert not ray.is_initialized(), "the batch left its driver connected to the cluster"
    assert wait_until_gone(30) == []


@contextlib.contextmanager
def ray_head():
    """A one-node Ray cluster started as a lab starts its head (``ray start --head``) and stopped as
    it stops one (``ray stop``); yields its address and a function listing its raylet and GCS."""
    folder = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", f"--temp-dir={folder}",
                              "--include-dashboard=false", "--disable-usage-stats"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        # the command lines read once by ray_processes (a worker killed by the test is a zombie until
        # the raylet reaps it, and reading its command line again raises)
        yield f"127.0.0.1:{port}", lambda: [p for p in ray_processes() if any(folder in a for a in (p.info["cmdline"] or []))]
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)
        for p in ray_processes():  # workers orphaned by the raylet's stop, not all named by `ray stop`
            with contextlib.suppress(psutil.Error):
                p.kill()
        shutil.rmtree(folder, ignore_errors=True)


def ray_folders():
    return {f for f in os.listdir(tempfile.gettempdir()) if f.startswith("segloop-ray-")}


# The ports Ray's head gives its other components by default (`ray start --help`): a head whose GCS
# port the kernel happened to hand out as 52365 failed to start ("used by other components").
RAY_DEFAULT_PORTS = {6379, 8265, 10001, 52365}


def _free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RAY_DEFAULT_PORTS:
            return port
