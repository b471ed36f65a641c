"""``segloop-bench bench prompt``: train the prompt model on a CPU budget, then evaluate it interactively.

Generates ``--train-cases`` labelled phantoms (random sizes and spacings) and ``--held-out``
unlabelled ones at 128 x 128 x 64 voxels (the latency target's volume) of 2.6 x 2.6 x 3.4 mm: a
333 x 333 x 218 mm field of view, so the held-out patients are adults like the training ones (at
1.5 x 1.5 x 3 mm the phantom fits a patient of half the size into the 192 mm field of view, and
every organ would be half the size the model learnt),
trains the prompt model for ``--train-minutes`` (or ``--train-epochs``, whichever ends first)
through the app's own trainer, and runs the
``segloop-bench eval interactive`` arms on the held-out cases. Writes ``interactive.json`` (with
the training run) and ``interactive.png`` into ``--out``.
"""

import os
import tempfile

from segloop.data.sample import write_sample_data
from segloop_bench.interactive import print_novel_summary, print_summary, run as evaluate, write_report
from segloop_bench.training import train

HELD_OUT_SHAPE = (128, 128, 64)
HELD_OUT_SPACING = (2.6, 2.6, 3.4)


def main(args) -> int:
    work = args.work or tempfile.mkdtemp(prefix="segloop-bench-prompt-")
    studies, truth = os.path.join(work, "studies"), os.path.join(work, "ground_truth")
    print(f"Generating {args.train_cases} labelled + {args.held_out} held-out cases in {work} ...", flush=True)
    write_sample_data(work, cases=args.train_cases, seed=303, labelled=args.train_cases, progress=None)
    write_sample_data(
        work, cases=args.held_out, seed=304, progress=None, shape=HELD_OUT_SHAPE, spacing=HELD_OUT_SPACING,
        first_index=args.train_cases,
    )
    print(f"Training the prompt model for {args.train_minutes:g} min ...", flush=True)
    conf = dict(kv.split("=", 1) for kv in args.conf)
    request = {"max_epochs": args.train_epochs or 100000, "max_seconds": args.train_minutes * 60, "val_split": 0.0}
    request.update({"seed": args.seed, **dict(kv.split("=", 1) for kv in args.request)})
    run = train(studies, request, conf, name="prompt")
    print(f"Evaluating the held-out cases, {args.clicks} clicks per structure ...", flush=True)
    report = evaluate(
        studies, truth, clicks=args.clicks, conf=conf, progress=lambda n, total: print(f"progress: {n}/{total} cases", flush=True)
    )
    report["held_out_volume"] = {"shape": HELD_OUT_SHAPE, "spacing_mm": HELD_OUT_SPACING}
    report["training"] = {
        "budget_min": args.train_minutes,
        "wall_s": run["seconds"],
        "iterations": run["stats"].get("current_iteration"),
        "max_epochs": args.train_epochs or None,
        "train_cases": args.train_cases,
        "conf": conf,
        "request": {k: v for k, v in request.items() if k not in ("max_epochs", "max_seconds")},
    }
    report["targets"] = {"organ_noc@90": 3, "organ_dice_after_1_click": 0.8, "latency_s": 1.0}
    paths = write_report(report, args.out)
    print_summary(report)
    print_novel_summary(report)
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0
