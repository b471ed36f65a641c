"""``segloop-bench bench first-session``: the README's first session, scripted, and what its
proposal marks on the sample cases nobody labelled.

1. The ``make serve`` sample data: 8 cases (seed 0), the first 4 labelled.
2. ``monailabel start_server`` with the automatic model only (``--conf`` as given, e.g.
   ``amp=off`` for the float32 path of a CPU without AVX512-BF16): the live loop's first automatic
   run starts by itself (``first_run_max_seconds``).
3. Once version 1 serves, the README's request is queued: ``POST /train/segmentation?enqueue=true``
   with ``--request`` (the README's body).
4. When the server is idle again: ``/infer/segmentation`` on the 4 unlabelled cases (never trained
   on), Dice per organ against their ground truth, beside two baselines that learn nothing (the
   training labels' mean label and an HU threshold per label, from the 4 labelled cases).

Writes ``first_session.json`` in ``--out``. The prompt model, which ``make serve`` also trains, is
left out: its runs come before or after the automatic model's, not beside them, so they add
waiting time but do not change what the automatic model learns.
"""

import json
import os
import tempfile
import time
from typing import Dict, List

import nibabel as nib
import numpy as np
import requests

from segloop.data.sample import write_sample_data
from segloop.labels import DEFAULT_LABELS
from segloop.metrics.dice import dice_per_label
from segloop_bench.baselines import hu_ranges, hu_threshold_dice, mean_label_dice
from segloop_bench.provenance import write_result
from segloop_bench.server import running_server, wait_for

ORGANS = ("liver", "spleen", "kidney")
README_REQUEST = {"max_seconds": 300}
BASELINE = "the 4 labelled cases' mean label and a per-label HU threshold (both learn nothing), on the same 4 unlabelled cases"


def _state(url: str) -> Dict:
    return requests.get(f"{url}/segloop/models/segmentation", timeout=120).json()


def _idle(url: str):
    state = _state(url)
    busy = state["trigger"]["running"] or state["trigger"]["queued"] or state["training_run"] is not None
    status = requests.get(f"{url}/train/", params={"all": "true"}, timeout=120).json()
    tasks = status if isinstance(status, list) else [status]
    if any(t.get("status") in ("SUBMITTED", "RUNNING") for t in tasks):
        busy = True
    return None if busy else state


def score(url: str, cases: List[str], truth: str, scratch: str) -> Dict[str, Dict[str, float]]:
    scores = {}
    for case in cases:
        r = requests.post(f"{url}/infer/segmentation", params={"image": case, "output": "image"}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"/infer {case}: {r.status_code} {r.text[:300]}")
        path = os.path.join(scratch, f"{case}.nii.gz")
        with open(path, "wb") as f:
            f.write(r.content)
        gt = np.asarray(nib.load(os.path.join(truth, f"{case}.nii.gz")).dataobj)
        scores[case] = dice_per_label(np.asarray(nib.load(path).dataobj).reshape(gt.shape), gt, DEFAULT_LABELS)
    return scores


def mean_of(scores: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    return {k: round(float(np.nanmean([s[k] for s in scores.values()])), 4) for k in DEFAULT_LABELS}


def main(args) -> int:
    work = args.work or tempfile.mkdtemp(prefix="segloop-first-session-")
    root = os.path.join(work, "data")
    write_sample_data(root, cases=8, seed=0, labelled=4, progress=None)
    studies, truth = os.path.join(root, "studies"), os.path.join(root, "ground_truth")
    labelled = [f"case_{i:03d}" for i in range(4)]
    held = [f"case_{i:03d}" for i in range(4, 8)]
    conf = {"models": "segmentation", **dict(kv.split("=", 1) for kv in args.conf)}
    request = json.loads(args.request) if args.request else dict(README_REQUEST)
    report: Dict = {"conf": conf, "readme_request": request, "labelled": labelled, "held_out": held}

    train_labels = [os.path.join(truth, f"{c}.nii.gz") for c in labelled]
    ranges = hu_ranges([{"image": os.path.join(studies, f"{c}.nii.gz"), "label": p} for c, p in zip(labelled, train_labels)],
                       DEFAULT_LABELS)
    report["baselines"] = {
        "mean_label": mean_of({c: mean_label_dice(train_labels, os.path.join(truth, f"{c}.nii.gz"), DEFAULT_LABELS) for c in held}),
        "hu_threshold": mean_of({c: hu_threshold_dice(ranges, {"image": os.path.join(studies, f"{c}.nii.gz"),
                                                               "label": os.path.join(truth, f"{c}.nii.gz")}, DEFAULT_LABELS)
                                 for c in held}),
    }
    scratch = os.path.join(work, "responses")
    os.makedirs(scratch, exist_ok=True)
    start = time.time()
    with running_server(studies, conf=conf, log_path=os.path.join(work, "server.log")) as server:
        url = server.url
        print("waiting for the first automatic run ...", flush=True)
        first = wait_for(lambda: _idle(url) if _state(url)["serving_version"] else None, 3600, 2.0, "version 1")
        report["after_first_run"] = {"seconds": round(time.time() - start, 1), "version": first["versions"][-1],
                                     "held_out_dice": mean_of(score(url, held, truth, scratch))}
        print(f"version 1: {report['after_first_run']['held_out_dice']}; queueing the README's request {request}", flush=True)
        r = requests.post(f"{url}/train/segmentation", params={"enqueue": "true"}, json=request, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"POST /train/segmentation: {r.status_code} {r.text[:300]}")
        wait_for(lambda: len(_state(url)["versions"]) >= 2, 3600, 2.0, "the README's run to start and end")
        final = wait_for(lambda: _idle(url), 3600, 2.0, "the server to be idle")
        report["after_readme_request"] = {"seconds": round(time.time() - start, 1), "version": final["versions"][-1],
                                          "serving_version": final["serving_version"],
                                          "held_out_dice": mean_of(score(url, held, truth, scratch))}
    for version in (report["after_first_run"]["version"], report["after_readme_request"]["version"]):
        version.pop("calibration", None)
    dice = report["after_readme_request"]["held_out_dice"]
    report["every_organ_at_least_0.5"] = all(dice[k] >= 0.5 for k in ORGANS)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "first_session.json")
    write_result(path, report, BASELINE)
    print(json.dumps({k: report[k] for k in ("baselines",)}, indent=1))
    print(f"after the first run: {report['after_first_run']['held_out_dice']}")
    print(f"after the README's request: {dice}")
    print(f"wrote {path}")
    return 0
