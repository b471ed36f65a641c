"""A worse candidate is kept, not served: through the real server, on a model that has learnt.

The trained model of the learning test serves (version 1). The held-out cases get their true
labels (they become validation cases, never trained on); the training cases get labels with the
organs swapped; a training run fine-tunes on them. The candidate scores worse on the validation
cases than the serving version by more than the tolerance, so it is recorded and kept while
version 1 goes on serving, as ``/infer`` shows.
"""

import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import LEARNING_HELD_OUT
from segloop.labels import DEFAULT_LABELS
from segloop_bench.server import NO_SCORING, running_server, wait_for

pytestmark = pytest.mark.slow

SWAP = {DEFAULT_LABELS["liver"]: DEFAULT_LABELS["spleen"], DEFAULT_LABELS["spleen"]: DEFAULT_LABELS["kidney"],
        DEFAULT_LABELS["kidney"]: DEFAULT_LABELS["liver"]}
TOLERANCE = 0.02


def swapped_label(source: str, dest: str) -> str:
    image = nib.load(source)
    data = np.asarray(image.dataobj)
    out = data.copy()
    for old, new in SWAP.items():
        out[data == old] = new
    nib.save(nib.Nifti1Image(out.astype(data.dtype), image.affine, image.header), dest)
    return dest


def put_label(url: str, image_id: str, path: str) -> None:
    with open(path, "rb") as f:
        r = requests.put(f"{url}/datastore/label", params={"image": image_id, "tag": "final"}, files={"label": (f"{image_id}.nii.gz", f)})
    assert r.status_code == 200, r.text


def test_a_worse_candidate_is_kept_and_the_serving_version_answers(trained_segmentation, tmp_path):
    root = trained_segmentation["root"]
    studies = str(tmp_path / "studies")
    shutil.copytree(os.path.join(root, "studies"), studies)
    truth = lambda case: os.path.join(root, "ground_truth", f"{case}.nii.gz")  # noqa: E731
    conf = {"models": "segmentation", "auto_train": "false", "promotion_tolerance": str(TOLERANCE)}
    with running_server(studies, conf=conf, log_path=str(tmp_path / "server.log"), env=NO_SCORING) as server:
        url = server.url
        state = requests.get(f"{url}/segloop/models/segmentation", timeout=60).json()
        assert state["serving_version"] == 1
        for case in LEARNING_HELD_OUT:
            put_label(url, case, truth(case))
        for i in range(8):
            case = f"case_{i:03d}"
            put_label(url, case, swapped_label(truth(case), str(tmp_path / f"{case}_swapped.nii.gz")))
        # A tiny val_split: no case validates by its hash, so the campaign's first validation case is
        # the lowest-hash case no run trained on, one of the held-out cases with its true label.
        r = requests.post(f"{url}/train/segmentation", json={"max_seconds": 40, "max_epochs": 1000, "val_split": 0.001, "seed": 0})
        assert r.status_code == 200, r.text

        def finished():
            versions = requests.get(f"{url}/segloop/models/segmentation", timeout=120).json()["versions"]
            return versions[-1] if len(versions) == 2 and versions[-1]["status"] != "running" else None

        candidate = wait_for(finished, timeout=400, every=2, what="the swapped-label candidate")
        print(f"candidate: {candidate['reason']}")
        assert set(candidate["validation_cases"]) <= set(LEARNING_HELD_OUT) and candidate["validation_cases"]
        assert candidate["val_dice"]["mean"] < candidate["parent_val_dice"]["mean"] - TOLERANCE
        assert candidate["status"] == "kept" and "kept, not served" in candidate["reason"]
        state = requests.get(f"{url}/segloop/models/segmentation", timeout=60).json()
        assert state["serving_version"] == 1
        r = requests.post(f"{url}/infer/segmentation", params={"image": LEARNING_HELD_OUT[0], "output": "json"}, timeout=300)
        assert r.status_code == 200 and r.json()["model_version"] == 1, r.text
