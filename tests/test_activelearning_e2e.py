"""Active learning through the real server: scores after each version, distinct cases for
concurrent annotators, calibration per version, the uncertainty map of /infer, and /batch/infer
on Ray."""

import json
import os
import shutil
import threading

import nibabel as nib
import numpy as np
import pytest
import requests

from ray_processes import ray_processes, wait_until_gone
from segloop_bench.server import running_server, wait_for

pytestmark = pytest.mark.slow

CONF = {
    "models": "segmentation",
    "retrain_max_seconds": "4", "first_run_max_seconds": "4",
    "mc_samples": "2",
    "tta_samples": "2",
    "promotion_tolerance": "1.0",
    "scoring_workers": "2",  # the scoring job's images as Ray tasks on a local 2-worker runtime
    "batch_infer_workers": "2",  # and /batch/infer's
}
LABELLED = ("case_000", "case_001", "case_002")  # from 3 labels on, one case validates: calibration is measured


@pytest.fixture(scope="module")
def studies(sample_root, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("al") / "studies")
    shutil.copytree(os.path.join(sample_root, "studies"), path)
    os.makedirs(os.path.join(path, "labels", "final"))
    for case in LABELLED:
        shutil.copy(os.path.join(sample_root, "ground_truth", f"{case}.nii.gz"), os.path.join(path, "labels", "final"))
    return path


def next_case(url, strategy, client_id=None):
    r = requests.post(f"{url}/activelearning/{strategy}", json={"client_id": client_id} if client_id else {}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def scoring_done(url, version):
    state = requests.get(f"{url}/segloop/activelearning", timeout=30).json()["scoring"]["segmentation"]
    job = state["job"] or {}
    if job.get("version") == version and job.get("finished") and job["done"] == job["total"]:
        return state
    return None


def test_active_learning_through_the_server(studies, sample_root, tmp_path):
    unlabelled = {"case_003", "case_004", "case_005"}
    with running_server(studies, conf=CONF, log_path=str(tmp_path / "server.log")) as server:
        url = server.url
        model = lambda: requests.get(f"{url}/segloop/models/segmentation", timeout=30).json()  # noqa: E731
        wait_for(lambda: model()["serving_version"] == 1 and not model()["training_run"], 300, 1.0, "version 1")

        # Calibration of the served version on its validation case, with the fitted temperature.
        calibration = model()["versions"][0]["calibration"]
        assert calibration["temperature"] > 0 and calibration["voxels"] > 1000
        assert 0 <= calibration["before"]["ece"] <= 1 and 0 <= calibration["after"]["ece"] <= 1

        # MONAI Label starts the scoring job after the run: every unlabelled case gets scores of version 1.
        state = wait_for(lambda: scoring_done(url, 1), 300, 2.0, "scores of version 1")
        images = state["images"]
        assert unlabelled <= set(images)
        for image in unlabelled:
            assert images[image]["version"] == 1 and {"entropy", "mc", "tta"} <= set(images[image]), images[image]
        assert images["case_000"]["components"] == ["embedding"]
        assert state["job"]["ray"] and state["job"]["workers"] == 2 and wait_until_gone(15) == []  # Ray stopped with the job

        # Each strategy answers with an unlabelled case (a client asking again moves on to another
        # case); entropy, asked first, takes the highest-entropy case.
        answers = {}
        for strategy in ("entropy", "epistemic", "diversity", "hybrid", "random", "first"):
            answers[strategy] = next_case(url, strategy, "probe")
            assert answers[strategy]["id"] in unlabelled and "fallback" not in answers[strategy], answers
        assert answers["entropy"]["id"] == max(unlabelled, key=lambda i: images[i]["entropy"])
        assert answers["epistemic"]["id"] != answers["entropy"]["id"]
        probe = answers["first"]

        # Two annotators asking at the same time get two different cases, neither the probe's.
        picks = {}
        threads = [
            threading.Thread(target=lambda c=c: picks.__setitem__(c, next_case(url, "hybrid", c)["id"]))
            for c in ("dr_a", "dr_b")
        ]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len({picks["dr_a"], picks["dr_b"], probe["id"]}) == 3
        # Everything is booked now: a third annotator gets nothing, by any strategy.
        assert next_case(url, "hybrid", "dr_c") == {} and next_case(url, "random", "dr_c") == {}
        bookings = requests.get(f"{url}/segloop/activelearning", timeout=30).json()["assignments"]
        assert {bookings[i]["client_id"] for i in bookings} == {"probe", "dr_a", "dr_b"}
        assert requests.post(f"{url}/activelearning/nonsense", json={}).status_code == 404

        # Uncertainty map next to the label map, on the input grid, fetched by its URL.
        r = requests.post(
            f"{url}/infer/segmentation", params={"image": "case_004", "output": "json"},
            data={"params": json.dumps({"uncertainty": True})}, timeout=300,
        )
        assert r.status_code == 200, r.text
        result = r.json()
        assert set(result["label_confidence"]) == {"liver", "spleen", "kidney", "tumor"}
        assert result["temperature"] == pytest.approx(calibration["temperature"])
        r = requests.get(f"{url}{result['uncertainty']['url']}", timeout=60)
        assert r.status_code == 200
        path = tmp_path / "uncertainty.nii.gz"
        path.write_bytes(r.content)
        stored, image = nib.load(str(path)), nib.load(os.path.join(studies, "case_004.nii.gz"))
        assert stored.shape == image.shape and np.allclose(stored.affine, image.affine, atol=1e-4)
        assert 0 <= float(np.min(stored.dataobj)) and float(np.max(stored.dataobj)) <= 1
        assert requests.get(f"{url}/segloop/uncertainty/{'0' * 32}").status_code == 404
        assert requests.get(f"{url}/segloop/uncertainty/..%2F..%2Fregistry.json").status_code == 404

        # /batch/infer of the unlabelled images on Ray: each gets an "original" label, Ray stops after.
        unlabelled_now = sorted(i for i in requests.get(f"{url}/datastore/?output=all", timeout=30).json()["objects"]
                                if not os.path.exists(os.path.join(studies, "labels", "final", f"{i}.nii.gz")))
        r = requests.post(f"{url}/batch/infer/segmentation", params={"images": "unlabeled"}, json={}, timeout=60)
        assert r.status_code == 200, r.text
        original = lambda i: os.path.join(studies, "labels", "original", f"{i}.nii.gz")  # noqa: E731
        wait_for(lambda: all(os.path.exists(original(i)) for i in unlabelled_now), 300, 1.0, "batch inference's labels")
        for image in unlabelled_now:
            label, source = nib.load(original(image)), nib.load(os.path.join(studies, f"{image}.nii.gz"))
            assert label.shape == source.shape and set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2, 3, 4}
        assert "on Ray, 2 at a time" in open(server.log_path).read()  # SegLoop's Ray path, not the thread pool
        assert wait_until_gone(30) == [], "batch inference's Ray runtime is still running"

        # A new label: version 2, whose scoring job starts a Ray runtime; the server stops while it
        # runs, and nothing of Ray is left.
        saved = requests.put(
            f"{url}/datastore/label", params={"image": "case_003", "tag": "final"},
            files={"label": open(os.path.join(sample_root, "ground_truth", "case_003.nii.gz"), "rb")}, timeout=120,
        )
        assert saved.status_code == 200, saved.text
        wait_for(lambda: ray_processes(), 300, 0.5, "the scoring job's Ray runtime")
    assert wait_until_gone(30) == [], "Ray processes left after the server stopped"
