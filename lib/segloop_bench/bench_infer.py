"""``segloop-bench bench infer``: SegLoop's automatic model against MONAI Label's radiology
``segmentation`` model on equal terms: same labelled cases, same CPU budget, same held-out cases.

1. Generates ``--train-cases`` labelled and ``--held-out`` unlabelled phantoms (one seed, random
   sizes and spacings).
2. Trains SegLoop's default model (``make serve`` configuration: ``unetr_cpu``, 3 mm, 64^3 windows)
   in-process through the app's trainer for ``--train-minutes``.
3. Trains the radiology app's ``segmentation`` model (SegResNet at 1.5 mm, 96^3 patches, its own
   trainer and transforms; ``--conf labels`` set to SegLoop's labels, so no pretrained weights) on
   the same final labels for the same minutes (:mod:`segloop_bench.upstream`).
4. Serves each with ``monailabel start_server`` over the held-out images and sends ``/infer`` for
   every held-out case (after one warm-up request): held-out Dice per label on the input grid, the
   client's round-trip seconds per request and the server's peak resident memory.

The two models differ in network, resolution and patch size: the figures compare what each app
delivers for the same labels and CPU time, not the same computation. Writes
``benchmarks/results/bench_infer/infer.json``.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

import nibabel as nib
import numpy as np
import requests

from segloop.data.sample import write_sample_data
from segloop.labels import DEFAULT_LABELS
from segloop.metrics.dice import dice_per_label
from segloop_bench.baselines import mean_label_dice
from segloop_bench.provenance import write_result
from segloop_bench.server import running_server, server_env
from segloop_bench.training import mean_per_label, train
from segloop_bench.upstream import radiology_app



class MemorySampler:
    """Samples a server's resident memory (MiB) every ``interval`` seconds in a thread."""

    def __init__(self, handle, interval: float = 0.1):
        self.handle, self.interval, self.peak = handle, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.handle.memory_mb())
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def serve_and_score(handle, model: str, image_ids: List[str], truth_dir: str, labels: Dict[str, int], scratch: str) -> Dict:
    """One warm-up request, then one timed ``/infer`` per held-out image: Dice per label and seconds."""
    url = f"{handle.url}/infer/{model}"
    warm = requests.post(url, params={"image": image_ids[0], "output": "image"}, timeout=1800)
    if warm.status_code != 200:
        raise RuntimeError(f"{model}: /infer failed ({warm.status_code}): {warm.text[:500]}\n{handle.log_tail()}")
    idle_mb = handle.memory_mb()
    latencies, scores = [], {}
    with MemorySampler(handle) as memory:
        for image_id in image_ids:
            start = time.perf_counter()
            r = requests.post(url, params={"image": image_id, "output": "image"}, timeout=1800)
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise RuntimeError(f"{model}: /infer failed ({r.status_code}): {r.text[:500]}")
            path = os.path.join(scratch, f"{model}_{image_id}.nii.gz")
            with open(path, "wb") as f:
                f.write(r.content)
            pred = np.asarray(nib.load(path).dataobj)
            truth = np.asarray(nib.load(os.path.join(truth_dir, f"{image_id}.nii.gz")).dataobj)
            scores[image_id] = dice_per_label(pred.reshape(truth.shape), truth, labels)
    return {
        "held_out_dice_mean": {k: round(v, 4) for k, v in mean_per_label(scores).items()},
        "held_out_dice_per_case": scores,
        "median_latency_s": round(statistics.median(latencies), 3),
        "latencies_s": [round(v, 3) for v in latencies],
        "peak_memory_mib": round(memory.peak, 1),
        "idle_memory_mib_after_warmup": round(idle_mb, 1),
    }


def train_upstream(studies: str, seconds: float, labels: Dict[str, int], model_dir: str, log_path: str) -> Dict:
    names = ",".join(sorted(labels, key=labels.get))
    cmd = [sys.executable, "-m", "segloop_bench.upstream", "train", "--studies", studies, "--seconds", str(seconds),
           "--labels", names, "--model-dir", model_dir]
    with open(log_path, "w") as log:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=server_env())
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"upstream training failed (exit {done.returncode}); see {log_path}")
    return json.loads(lines[-1][len("RESULT "):])


def held_out_studies(source: str, ids: List[str], dest: str) -> str:
    """A studies folder holding only the held-out images (no labels): what each server serves."""
    os.makedirs(dest, exist_ok=True)
    for image_id in ids:
        shutil.copy(os.path.join(source, f"{image_id}.nii.gz"), dest)
    return dest


BASELINE = (
    "MONAI Label radiology app 'segmentation' (SegResNet, 1.5 mm, 96^3 patches) trained on the same final labels for "
    "the same wall-clock CPU budget; and the mean-label atlas of the training labels (learns nothing)"
)


def main(args) -> int:
    work = args.work or tempfile.mkdtemp(prefix="segloop-bench-")
    os.makedirs(work, exist_ok=True)
    labels = dict(DEFAULT_LABELS)
    root = os.path.join(work, "data")
    n, held = args.train_cases, args.held_out
    print(f"Generating {n} labelled + {held} held-out cases in {root} ...", flush=True)
    write_sample_data(root, cases=n + held, seed=101, labelled=n, progress=None)
    studies, truth = os.path.join(root, "studies"), os.path.join(root, "ground_truth")
    held_ids = [f"case_{i:03d}" for i in range(n, n + held)]
    train_ids = [f"case_{i:03d}" for i in range(n)]
    budget_s = args.train_minutes * 60
    report: Dict = {"train_cases": train_ids, "held_out_cases": held_ids, "budget_min": args.train_minutes}

    atlas = [mean_label_dice([os.path.join(truth, f"{c}.nii.gz") for c in train_ids], os.path.join(truth, f"{c}.nii.gz"), labels)
             for c in held_ids]
    report["baseline_mean_label"] = {k: round(float(np.nanmean([a[k] for a in atlas])), 4) for k in labels}
    print(f"mean-label baseline: {report['baseline_mean_label']}", flush=True)

    seg_train = os.path.join(work, "segloop_train")
    shutil.copytree(studies, seg_train)
    print(f"Training SegLoop's default model for {args.train_minutes:g} min ...", flush=True)
    run = train(seg_train, {"max_epochs": 100000, "max_seconds": budget_s, "val_split": 0.0, "seed": 0})
    report["segloop"] = {
        "model": "segmentation (unetr_cpu, 3 mm, 64^3 windows)",
        "training": {"wall_s": run["seconds"], "iterations": run["stats"].get("current_iteration"), "epochs": run["stats"].get("epoch")},
    }

    up_train = os.path.join(work, "upstream_train")
    shutil.copytree(studies, up_train, ignore=shutil.ignore_patterns(".segloop"))
    up_app = os.path.join(work, "radiology_app")
    shutil.copytree(radiology_app(), up_app, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model", "__pycache__"))
    print(f"Training the radiology app's segmentation model for {args.train_minutes:g} min ...", flush=True)
    up_run = train_upstream(up_train, budget_s, labels, os.path.join(up_app, "model"), os.path.join(work, "upstream_train.log"))
    report["upstream"] = {"model": "radiology segmentation (SegResNet, 1.5 mm, 96^3 patches)", "training": up_run}

    scratch = os.path.join(work, "responses")
    os.makedirs(scratch, exist_ok=True)
    seg_studies = held_out_studies(studies, held_ids, os.path.join(work, "segloop_serve"))
    os.makedirs(os.path.join(seg_studies, ".segloop", "model"), exist_ok=True)
    shutil.copy(os.path.join(seg_train, ".segloop", "model", "segmentation.pt"), os.path.join(seg_studies, ".segloop", "model"))
    print("Serving SegLoop: /infer/segmentation on the held-out cases ...", flush=True)
    conf = {"models": "segmentation", "auto_train": "false"}
    with running_server(seg_studies, conf=conf, log_path=os.path.join(work, "segloop_server.log")) as handle:
        report["segloop"].update(serve_and_score(handle, "segmentation", held_ids, truth, labels, scratch))
    up_studies = held_out_studies(studies, held_ids, os.path.join(work, "upstream_serve"))
    print("Serving upstream: /infer/segmentation on the held-out cases ...", flush=True)
    conf = {"models": "segmentation", "labels": ",".join(sorted(labels, key=labels.get)), "use_pretrained_model": "false",
            "sam2": "false", "scribbles": "false"}
    with running_server(up_studies, app=up_app, conf=conf, log_path=os.path.join(work, "upstream_server.log")) as handle:
        report["upstream"].update(serve_and_score(handle, "segmentation", held_ids, truth, labels, scratch))
    report["latency_ratio_segloop_over_upstream"] = round(
        report["segloop"]["median_latency_s"] / report["upstream"]["median_latency_s"], 3
    )
    write_result(args.out, report, BASELINE)
    print_table(report)
    print(f"Wrote {args.out}")
    return 0


def print_table(report: Dict) -> None:
    print()
    print(f"{report['budget_min']:g} CPU minutes of training each, {len(report['held_out_cases'])} held-out cases")
    names = list(report["baseline_mean_label"])
    print(f"{'':<10}{'iterations':>11}{'/infer median s':>16}{'peak MiB':>10}" + "".join(f"{n:>9}" for n in names))
    for key in ("segloop", "upstream"):
        r = report[key]
        iterations = r["training"].get("iterations")
        print(f"{key:<10}{str(iterations):>11}{r['median_latency_s']:>16.3f}{r['peak_memory_mib']:>10.0f}"
              + "".join(f"{r['held_out_dice_mean'][n]:>9.3f}" for n in names))
    print(f"{'mean label':<47}" + "".join(f"{report['baseline_mean_label'][n]:>9.3f}" for n in names))
    print(f"latency ratio SegLoop/upstream: {report['latency_ratio_segloop_over_upstream']}")
