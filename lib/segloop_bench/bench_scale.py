"""``segloop-bench bench scale``: what more workers and more training processes buy on this machine.

* **Scoring throughput** (volumes per minute): the active-learning scoring job (embedding,
  entropy, MC dropout, TTA) over the same unlabelled sample volumes, scored by the job's own
  process (``scoring_workers 0``, torch on every core), then as Ray tasks on a local runtime with 1
  and 2 workers. Wall time of the whole job (Ray's start and stop included) and the steady part
  (the per-volume seconds the workers report).
* **Batch inference** (volumes per minute): ``POST /batch/infer/segmentation?images=unlabeled`` to
  a real server serving the same published weights, timed from the request to the last saved
  label: MONAI Label's own batch task (``batch_infer_workers 0``: one image after another in the
  batch's process, torch on every core), then SegLoop's Ray tasks with 1 and 2 workers.
* **Training** (steps and samples per second): the automatic model's trainer for a fixed number of
  iterations on the same labelled cases, in one process (torch on every core), then under
  torchrun with 2 gloo processes (one thread each, torchrun's default). A distributed step is one
  batch per rank, so samples per second is the comparable figure.

Ratios are against the single-process figure of the same run. Writes ``scale.json``.
"""

import json
import os
import shutil
import tempfile
import time
from typing import Any, Dict, Tuple

import requests
import torch

from segloop.data.sample import write_sample_data
from segloop.scoring import SCORING_METHOD
from segloop.server.datastore import SegLoopDatastore
from segloop_bench.provenance import write_result
from segloop_bench.server import NO_SCORING, running_server, wait_for
from segloop_bench.training import build_task_config

APP_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "MONAILabelApp")
BASELINE = "the same job in one process (scoring_workers 0; train_procs 1), same volumes, same iterations, same run"


def _studies(root: str, cases: int, labelled: int, seed: int) -> str:
    write_sample_data(root, cases=cases, seed=seed, labelled=labelled, progress=None)
    return os.path.join(root, "studies")


def _published_copy(studies: str, conf: Dict[str, str]) -> Tuple[str, Any]:
    """A fresh copy of ``studies`` in a temporary folder, serving the same seeded weights as version
    1; returns its path and its task config (whose infer tasks load the published weights)."""
    work = tempfile.mkdtemp(prefix="segloop-scale-")
    copy = os.path.join(work, "studies")
    shutil.copytree(studies, copy, ignore=shutil.ignore_patterns(".segloop"))
    torch.manual_seed(0)  # the same published weights for every arm
    config = build_task_config(copy, conf)
    config.registry.record({"status": "promoted"}, config.network.state_dict(), promote=True)
    return copy, config


def scoring(studies: str, conf: Dict[str, str], workers: int) -> Dict:
    """One full scoring job of a fresh copy of ``studies`` with ``workers`` (0: in-process)."""
    conf = dict(conf, scoring_workers=str(workers))
    copy, config = _published_copy(studies, conf)
    try:
        datastore = SegLoopDatastore(copy, labels=config.labels)
        job = config.scoring_method()[SCORING_METHOD]
        start = time.time()
        summary = job({"force": True}, datastore)
        wall = time.time() - start
        records = config.scores.records()
        unlabelled = [r for r in records.values() if r.get("label_ts") is None and not r.get("error")]
        per_volume = [r["seconds"] for r in unlabelled]
        return {
            "workers": workers, "volumes": len(unlabelled), "errors": summary["errors"], "wall_s": round(wall, 1),
            "volumes_per_minute": round(60 * len(unlabelled) / wall, 2),
            "seconds_per_volume_in_worker": round(sum(per_volume) / max(1, len(per_volume)), 2),
        }
    finally:
        shutil.rmtree(os.path.dirname(copy), ignore_errors=True)


def batch_inference(studies: str, conf: Dict[str, str], workers: int) -> Dict:
    """``/batch/infer`` of the unlabelled images through a real server with ``batch_infer_workers``
    = ``workers`` (0: MONAI Label's batch task), from the request to the last label on disk."""
    copy, config = _published_copy(studies, conf)
    try:
        datastore = SegLoopDatastore(copy, labels=config.labels)
        unlabelled = sorted(datastore.get_unlabeled_images())
        outputs = [os.path.join(copy, "labels", "original", f"{image}.nii.gz") for image in unlabelled]
        server_conf = dict(conf, auto_train="false", batch_infer_workers=str(workers))
        with running_server(copy, conf=server_conf, env=NO_SCORING) as server:
            start = time.time()
            r = requests.post(f"{server.url}/batch/infer/segmentation", params={"images": "unlabeled"}, json={}, timeout=60)
            r.raise_for_status()
            wait_for(lambda: all(os.path.exists(output) for output in outputs), 1800, 0.25, "batch inference's labels")
            wall = time.time() - start
        return {"workers": workers, "volumes": len(outputs), "wall_s": round(wall, 1),
                "volumes_per_minute": round(60 * len(outputs) / wall, 2)}
    finally:
        shutil.rmtree(os.path.dirname(copy), ignore_errors=True)


def training(studies: str, conf: Dict[str, str], procs: int, iterations: int) -> Dict:
    """One training run of ``iterations`` on a fresh copy of ``studies`` with ``procs`` processes."""
    work = tempfile.mkdtemp(prefix="segloop-scale-")
    try:
        copy = os.path.join(work, "studies")
        shutil.copytree(studies, copy, ignore=shutil.ignore_patterns(".segloop"))
        # torchrun's workers build the app as the server's training subprocess would
        os.environ.update({"MONAI_LABEL_APP_DIR": os.path.abspath(APP_DIR), "MONAI_LABEL_STUDIES": copy,
                           "MONAI_LABEL_APP_CONF": json.dumps(conf), "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
        config = build_task_config(copy, conf)
        datastore = SegLoopDatastore(copy, labels=config.labels)
        request = {"max_epochs": 100000, "max_iterations": iterations, "max_seconds": 3600, "val_split": 0.0,
                   "seed": 0, "train_procs": procs, "model": "segmentation"}
        start = time.time()
        config.trainer()(request, datastore)
        wall = time.time() - start
        version = config.registry.history()[-1]
        steps, seconds = version["iterations"], version["train_seconds"]
        samples = steps * procs * 2  # batch 1 x samples_per_case 2 per rank and step
        return {
            "processes": procs, "iterations": steps, "run_seconds": seconds, "wall_s": round(wall, 1),
            "steps_per_second": round(steps / seconds, 3), "samples_per_second": round(samples / seconds, 3),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ratio(arms, i: int, of: int = 0) -> float:
    """Volumes per minute of arm ``i`` over arm ``of``'s."""
    return round(arms[i]["volumes_per_minute"] / arms[of]["volumes_per_minute"], 2)


def main(args) -> int:
    root = tempfile.mkdtemp(prefix="segloop-scale-data-")
    try:
        studies = _studies(root, args.cases, args.labelled, args.seed)
        conf = {"models": "segmentation", "mc_samples": str(args.mc_samples), "tta_samples": str(args.tta_samples)}
        report: Dict = {"cases": args.cases, "labelled": args.labelled, "seed": args.seed, "conf": conf,
                        "scoring": [], "batch_inference": [], "training": []}
        for workers in (0, 1, 2):
            report["scoring"].append(scoring(studies, conf, workers))
            print("scoring", report["scoring"][-1], flush=True)
        for workers in (0, 1, 2):
            report["batch_inference"].append(batch_inference(studies, conf, workers))
            print("batch inference", report["batch_inference"][-1], flush=True)
        for procs in (1, 2):
            report["training"].append(training(studies, conf, procs, args.iterations))
            print("training", report["training"][-1], flush=True)
        report["ratios"] = {
            "scoring_ray_1_worker_vs_in_process": ratio(report["scoring"], 1),
            "scoring_ray_2_workers_vs_in_process": ratio(report["scoring"], 2),
            "scoring_ray_2_vs_1_worker": ratio(report["scoring"], 2, of=1),
            "batch_inference_ray_1_worker_vs_monai_label": ratio(report["batch_inference"], 1),
            "batch_inference_ray_2_workers_vs_monai_label": ratio(report["batch_inference"], 2),
            "training_samples_per_second_2_vs_1_process": round(
                report["training"][1]["samples_per_second"] / report["training"][0]["samples_per_second"], 2),
        }
        os.makedirs(args.out, exist_ok=True)
        path = write_result(os.path.join(args.out, "scale.json"), report, BASELINE)
        print(json.dumps(report["ratios"]), "->", path)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
