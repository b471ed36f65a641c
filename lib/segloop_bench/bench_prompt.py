"""``segloop-bench bench prompt``: train the prompt model on a CPU budget, then evaluate it interactively.

Generates ``--train-cases`` labelled phantoms (random sizes and spacings) and ``--held-out``
unlabelled ones at 128 x 128 x 64 voxels (the latency target's volume) of 2.6 x 2.6 x 3.4 mm: a
333 x 333 x 218 mm field of view, so the held-out patients are adults like the training ones (at
1.5 x 1.5 x 3 mm the phantom fits a patient of half the size into the 192 mm field of view, and
every organ would be half the size the model learnt),
trains the prompt model for ``--train-minutes`` (or ``--train-epochs``, whichever ends first)
through the app's own trainer, and runs the
``segloop-bench eval interactive`` arms on the held-out cases, then times the same model through
the real server and MONAI Label's client (``latency_http``: round trip p50 / p95 beside the server
task's own time; the eval's ``latency_s_*`` are the in-process zoom-out-zoom-in calls). Writes ``interactive.json`` (with
the training run) and ``interactive.png`` into ``--out``.
"""

import argparse
import json
import os
import tempfile

from segloop.io import atomic_write_json, json_safe

from segloop.data.sample import write_sample_data
from segloop_bench.bench_latency import http_latency
from segloop_bench.errors import HarnessError
from segloop_bench.provenance import provenance
from segloop_bench.prompt_seeds import main as summarize_seeds
from segloop_bench.interactive import build_pipeline, held_out_cases, print_novel_summary, print_summary, run as evaluate, write_report
from segloop_bench.training import train

HELD_OUT_SHAPE = (128, 128, 64)
HELD_OUT_SPACING = (2.6, 2.6, 3.4)
HTTP_CLICKS = 5  # per structure, label sent with each, as the Slicer plugin does


def main(args) -> int:
    """One training seed (``--seed``), or several (``--seeds 0,1,2``): each its own run in
    ``<out>/seed<k>``, then their summary (:mod:`segloop_bench.prompt_seeds`) in ``<out>``."""
    if not args.seeds:
        return run_seed(args)
    folders = []
    for seed in [int(v) for v in args.seeds.split(",")]:
        one = argparse.Namespace(**{**vars(args), "seed": seed, "seeds": "",
                                    "out": os.path.join(args.out, f"seed{seed}"),
                                    "work": os.path.join(args.work, f"seed{seed}") if args.work else ""})
        run_seed(one)
        folders.append(one.out)
    if args.train_only:
        return 0
    return summarize_seeds(argparse.Namespace(runs=folders, out=args.out))


TRAINING_RECORD = "training.json"  # in the work folder: the training run, for a later evaluation


def run_seed(args) -> int:
    work = args.work or tempfile.mkdtemp(prefix="segloop-bench-prompt-")
    studies, truth = os.path.join(work, "studies"), os.path.join(work, "ground_truth")
    conf = dict(kv.split("=", 1) for kv in args.conf)
    record_path = os.path.join(work, TRAINING_RECORD)
    if args.reuse_training:
        # The model trained by an earlier `--train-only` run (its own commit and date in the record),
        # evaluated by this code: for changes that touch inference only.
        if not os.path.isfile(record_path):
            raise HarnessError(f"--reuse-training: {record_path} not found; train first with --train-only --work {work}")
        with open(record_path) as f:
            training = json.load(f)
        print(f"Reusing the model trained at {training['provenance']['commit']} in {work}", flush=True)
    else:
        started = provenance("none: a training run")  # the code that trains is the code at the start
        training = train_model(args, work, studies, conf)
        atomic_write_json(record_path, json_safe({**training, "provenance": started}))
        if args.train_only:
            print(f"trained; wrote {record_path} (evaluate with --reuse-training --work {work})", flush=True)
            return 0
    print(f"Evaluating the held-out cases, {args.clicks} clicks per structure ...", flush=True)
    report = evaluate(
        studies, truth, clicks=args.clicks, conf=conf, progress=lambda n, total: print(f"progress: {n}/{total} cases", flush=True)
    )
    print("Timing the label + click protocol through the real server and MONAI Label's client ...", flush=True)
    _, _, labels = build_pipeline(studies, conf)
    report["latency_http"] = http_latency(studies, held_out_cases(studies, truth, labels), labels, HTTP_CLICKS, clicks_only=True)
    report["held_out_volume"] = {"shape": HELD_OUT_SHAPE, "spacing_mm": HELD_OUT_SPACING}
    report["training"] = training
    report["targets"] = {
        "clicks_only_organ_dice_after_1_click": 0.85, "clicks_only_margin_over_ball": 0.2, "novel_dice_after_3_clicks": 0.8,
        "clicks_only_organ_noc@90": 5, "gain_click_1_to_5": 0.05, "text_organ_dice": 0.85, "latency_http_p95_s": 1.0,
    }
    paths = write_report(report, args.out)
    print_summary(report)
    print_novel_summary(report)
    for arm, h in (("label + click", report["latency_http"]), ("clicks only", report["latency_http"]["clicks_only"])):
        print(f"HTTP ({arm}, {h['interactions']} interactions): round trip p50 {h['latency_s_median']} s, "
              f"p95 {h['latency_s_p95']} s; server task p50 {h['server_task_s_median']} s, p95 {h['server_task_s_p95']} s")
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0


def train_model(args, work: str, studies: str, conf) -> dict:
    """Generate the cases and train the prompt model; the training run's record."""
    print(f"Generating {args.train_cases} labelled + {args.held_out} held-out cases in {work} ...", flush=True)
    write_sample_data(work, cases=args.train_cases, seed=303, labelled=args.train_cases, progress=None)
    write_sample_data(
        work, cases=args.held_out, seed=304, progress=None, shape=HELD_OUT_SHAPE, spacing=HELD_OUT_SPACING,
        first_index=args.train_cases,
    )
    print(f"Training the prompt model for {args.train_minutes:g} min ...", flush=True)
    request = {"max_epochs": args.train_epochs or 100000, "max_seconds": args.train_minutes * 60, "val_split": 0.0}
    request.update({"seed": args.seed, **dict(kv.split("=", 1) for kv in args.request)})
    run = train(studies, request, conf, name="prompt")
    return {
        "budget_min": args.train_minutes,
        "wall_s": run["seconds"],
        "iterations": run["stats"].get("current_iteration"),
        "max_epochs": args.train_epochs or None,
        "train_cases": args.train_cases,
        "conf": conf,
        "request": {k: v for k, v in request.items() if k not in ("max_epochs", "max_seconds")},
    }
