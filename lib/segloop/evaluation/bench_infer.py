"""``segloop bench infer``: /infer latency and server memory, SegLoop vs upstream, same run.

1. Trains SegLoop's default model (``make serve`` configuration) in-process for a time budget on
   generated labelled cases and scores it on held-out generated cases (Dice per label, input grid).
2. Serves that model with ``monailabel start_server`` and times ``/infer`` on generated
   128 x 128 x 64 CT volumes at 1.5 x 1.5 x 3 mm, sampling the server's resident memory
   (process tree) while the requests run.
3. Does the same with MONAI Label's radiology sample app, ``segmentation_spleen``
   (``use_pretrained_model false``: untrained weights, same computation), on the same volumes.

Prints a table and writes JSON (default ``benchmarks/results/infer.json``).
"""

import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Dict, List

import requests
import torch

from segloop.data.sample import write_sample_data
from segloop.evaluation.server import running_server
from segloop.evaluation.training import evaluate, mean_per_label, train

BENCH_SHAPE = (128, 128, 64)
BENCH_SPACING = (1.5, 1.5, 3.0)


def upstream_radiology_app() -> str:
    app = os.path.join(sys.prefix, "monailabel", "sample-apps", "radiology")
    if not os.path.isfile(os.path.join(app, "main.py")):
        raise FileNotFoundError(f"MONAI Label's radiology sample app not found at {app}")
    return app


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


def time_infer(handle, model: str, image_ids: List[str], repeats: int) -> Dict:
    """One warm-up request, then ``repeats`` timed requests cycling over ``image_ids``."""
    url = f"{handle.url}/infer/{model}"
    warm = requests.post(url, params={"image": image_ids[0], "output": "image"}, timeout=1800)
    if warm.status_code != 200:
        raise RuntimeError(f"{model}: /infer failed ({warm.status_code}): {warm.text[:500]}\n{handle.log_tail()}")
    idle_mb = handle.memory_mb()
    latencies = []
    with MemorySampler(handle) as memory:
        for i in range(repeats):
            start = time.perf_counter()
            r = requests.post(url, params={"image": image_ids[i % len(image_ids)], "output": "image"}, timeout=1800)
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise RuntimeError(f"{model}: /infer failed ({r.status_code}): {r.text[:500]}")
    return {
        "median_latency_s": round(statistics.median(latencies), 3),
        "latencies_s": [round(v, 3) for v in latencies],
        "peak_memory_mib": round(memory.peak, 1),
        "idle_memory_mib_after_warmup": round(idle_mb, 1),
    }


def main(args) -> int:
    work = args.work or tempfile.mkdtemp(prefix="segloop-bench-")
    os.makedirs(work, exist_ok=True)
    report: Dict = {
        "machine": {
            "cpu_threads": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "platform": platform.platform(),
        },
        "volumes": {"shape": BENCH_SHAPE, "spacing_mm": BENCH_SPACING},
    }

    # 1. Train the default model for the budget and score it on held-out cases.
    held_out = 4
    train_root = os.path.join(work, "train")
    print(f"Generating {args.train_cases} labelled + {held_out} held-out cases in {train_root} ...", flush=True)
    write_sample_data(train_root, cases=args.train_cases + held_out, seed=101, labelled=args.train_cases, progress=None)
    train_studies = os.path.join(train_root, "studies")
    # Held-out cases must not be trained on: they have no final label in the datastore.
    held_ids = [f"case_{i:03d}" for i in range(args.train_cases, args.train_cases + held_out)]
    print(f"Training the default model for {args.train_minutes:g} min on {args.train_cases} cases ...", flush=True)
    run = train(train_studies, {"max_epochs": 100000, "max_seconds": args.train_minutes * 60, "val_split": 0.0, "seed": 0})
    scores = evaluate(train_studies, os.path.join(train_root, "ground_truth"), held_ids)
    report["training"] = {
        "budget_min": args.train_minutes,
        "wall_s": run["seconds"],
        "iterations": run["stats"].get("current_iteration"),
        "epochs": run["stats"].get("epoch"),
        "train_cases": args.train_cases,
        "held_out_cases": held_ids,
        "held_out_dice_mean": {k: round(v, 4) for k, v in mean_per_label(scores).items()},
        "held_out_dice_per_case": scores,
    }
    print(json.dumps(report["training"]["held_out_dice_mean"]), flush=True)

    # 2./3. The same benchmark volumes for both servers (separate copies: each app writes its own state).
    bench_root = os.path.join(work, "volumes")
    write_sample_data(bench_root, cases=3, seed=202, progress=None, shape=BENCH_SHAPE, spacing=BENCH_SPACING)
    image_ids = ["case_000", "case_001", "case_002"]

    seg_studies = os.path.join(work, "segloop_studies")
    shutil.copytree(os.path.join(bench_root, "studies"), seg_studies, dirs_exist_ok=True)
    model_dir = os.path.join(seg_studies, ".segloop", "model")
    os.makedirs(model_dir, exist_ok=True)
    shutil.copy(os.path.join(train_studies, ".segloop", "model", "segmentation.pt"), model_dir)
    print("Timing SegLoop /infer/segmentation ...", flush=True)
    with running_server(seg_studies, conf={"models": "segmentation"}, log_path=os.path.join(work, "segloop_server.log")) as handle:
        report["segloop"] = {"model": "segmentation (unetr_cpu)", **time_infer(handle, "segmentation", image_ids, args.requests)}
    print(json.dumps(report["segloop"]), flush=True)

    if not args.skip_upstream:
        up_studies = os.path.join(work, "upstream_studies")
        shutil.copytree(os.path.join(bench_root, "studies"), up_studies, dirs_exist_ok=True)
        up_app = os.path.join(work, "radiology_app")
        shutil.copytree(upstream_radiology_app(), up_app, dirs_exist_ok=True)
        conf = {"models": "segmentation_spleen", "use_pretrained_model": "false", "sam2": "false", "scribbles": "false"}
        print("Timing upstream radiology /infer/segmentation_spleen ...", flush=True)
        with running_server(up_studies, app=up_app, conf=conf, log_path=os.path.join(work, "upstream_server.log")) as handle:
            report["upstream"] = {
                "model": "radiology segmentation_spleen (UNet, 1 mm, roi 160^3)",
                **time_infer(handle, "segmentation_spleen", image_ids, args.requests),
            }
        print(json.dumps(report["upstream"]), flush=True)
        report["latency_ratio_segloop_over_upstream"] = round(
            report["segloop"]["median_latency_s"] / report["upstream"]["median_latency_s"], 3
        )
        report["target_latency_ratio"] = 0.5

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print_table(report)
    print(f"Wrote {args.out}")
    return 0


def print_table(report: Dict) -> None:
    print()
    print(f"/infer on {report['volumes']['shape']} voxels at {report['volumes']['spacing_mm']} mm")
    print(f"{'server':<12}{'median latency (s)':>20}{'peak memory (MiB)':>20}")
    for key in ("segloop", "upstream"):
        if key in report:
            r = report[key]
            print(f"{key:<12}{r['median_latency_s']:>20.3f}{r['peak_memory_mib']:>20.1f}")
    if "latency_ratio_segloop_over_upstream" in report:
        print(f"latency ratio SegLoop/upstream: {report['latency_ratio_segloop_over_upstream']} (target <= 0.5)")
    t = report["training"]
    print(f"held-out Dice after {t['budget_min']:g} min CPU training ({t['iterations']} iterations):")
    for name, value in t["held_out_dice_mean"].items():
        print(f"  {name:<8}{value:.3f}")
