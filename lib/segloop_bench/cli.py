"""``segloop-bench``: benchmarks, evaluations and the campaign simulation.

Each command writes a result JSON with its provenance (:mod:`segloop_bench.provenance`): commit,
command line, machine, package versions, date and the baseline its figures compare with.
"""

import argparse
import importlib
import sys


def _runs(module: str):
    """The command's ``main(args)``, imported when the command runs (each pulls in torch, MONAI ...)."""

    def run(args) -> int:
        return importlib.import_module(f"segloop_bench.{module}").main(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segloop-bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="replay annotation campaigns from ground truth: Dice vs labels per strategy")
    p.add_argument("--studies", required=True, help="folder of images (the last --test-cases are held out)")
    p.add_argument("--ground-truth", required=True, help="folder of <case>.nii.gz ground-truth label maps")
    p.add_argument("--strategy", default="all", help="comma-separated strategies, or all: random,foreground_random,entropy,epistemic,diversity,hybrid")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per-round", type=int, default=2, help="cases labelled per round (picked as by k annotators)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--initial", type=int, default=2, help="labels before the first round")
    p.add_argument("--cold-start", choices=("random", "diversity"), default="random",
                   help="how the initial labels are chosen: seeded random, or the most different cases (HU histogram, body size)")
    p.add_argument("--test-cases", type=int, default=4, help="held-out cases for Dice")
    p.add_argument("--first-iterations", type=int, default=60, help="training iterations of the initial model")
    p.add_argument("--round-iterations", type=int, default=30, help="fine-tuning iterations per round")
    p.add_argument("--full-iterations", type=int, default=0, help="full-data model (default: 2x a campaign's total)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="app --conf options")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary folder)")
    p.add_argument("--out", default="benchmarks/results/simulate", help="folder for simulation.json / .png")
    p.set_defaults(func=_runs("simulate"))

    p = sub.add_parser("campaign-demo", help="a sample two-annotator campaign with review through the real server, and its report page")
    p.add_argument("--cases", type=int, default=8, help="sample cases (make serve's, seed 0), every one read twice")
    p.add_argument("--seed", type=int, default=0, help="the annotators' styles (which slices each draws tight or generous)")
    p.add_argument("--missed-ml", type=float, default=2.0, help="tumours under this volume (ml) the generous annotator misses")
    p.add_argument("--threshold", type=float, default=0.7, help="--conf agreement_threshold")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary folder)")
    p.add_argument("--out", default="benchmarks/results/campaign_demo", help="folder for campaign_demo.json and the report page")
    p.add_argument("--screenshot", default="docs/campaign_report.png", help="where the page's screenshot goes")
    p.set_defaults(func=_runs("campaign_demo"))

    evaluate = sub.add_parser("eval", help="evaluations").add_subparsers(dest="eval", required=True)
    p = evaluate.add_parser("interactive", help="prompt model: Dice per click, NoC@85/90, box and text Dice, latency")
    p.add_argument("--studies", required=True, help="datastore folder whose serving prompt model is evaluated")
    p.add_argument("--ground-truth", required=True, help="folder of <case>.nii.gz ground-truth label maps")
    p.add_argument("--cases", default="", help="comma-separated case ids (default: those without a final label)")
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/eval_interactive", help="folder for interactive.json / interactive.png")
    p.set_defaults(func=_runs("interactive"))
    p = evaluate.add_parser("uncertainty", help="PNG: uncertainty overlay of one case and the reliability diagram")
    p.add_argument("--studies", required=True, help="datastore folder whose serving automatic model is used")
    p.add_argument("--image", required=True, help="image id in that datastore")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="app --conf options")
    p.add_argument("--out", default="benchmarks/results/eval_uncertainty/uncertainty_overlay.png")
    p.set_defaults(func=_runs("uncertainty_view"))

    summarize = sub.add_parser("summarize", help="figures over several result folders").add_subparsers(dest="summarize", required=True)
    p = summarize.add_parser("prompt-seeds", help="the prompt model's target measures over several `bench prompt` seeds: per seed, mean, sd")
    p.add_argument("runs", nargs="+", help="result folders of `bench prompt` (each with interactive.json)")
    p.add_argument("--out", default="benchmarks/results/bench_prompt_seeds", help="folder for summary.json")
    p.set_defaults(func=_runs("prompt_seeds"))

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("auto", help="the automatic model's configurations vs the radiology app's segmentation model: same cases and CPU budget; held-out Dice, /infer latency, memory")
    p.add_argument("--out", default="benchmarks/results/bench_auto", help="folder for auto.json / auto.png")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary folder)")
    p.add_argument("--train-minutes", type=float, default=30.0, help="training budget of each model (wall-clock minutes)")
    p.add_argument("--train-cases", type=int, default=16)
    p.add_argument("--held-out", type=int, default=4)
    p.add_argument("--arms", default="unetr_cpu,unetr_cpu+plan,dynunet_cpu+plan,swinunetr_cpu",
                   help="SegLoop configurations, comma-separated: a network, then optionally +plan (planned geometry), +tumour (tumour-centred crops and loss weight) and +shift / +noshift (per-structure intensity augmentation, the default, or none); or prompt (the prompt model's label-only answers, merged)")
    p.add_argument("--skip-upstream", action="store_true")
    p.add_argument(
        "--reuse-training", action="store_true",
        help="serve the arms an earlier run trained in --work again, without training (for changes to inference "
        "only; each arm keeps its training's commit); the data is generated again, identically",
    )
    p.set_defaults(func=_runs("bench_auto"))

    p = bench.add_parser("first-session", help="the README's first session, scripted: held-out Dice of the proposal after it")
    p.add_argument("--out", default="benchmarks/results/bench_first_session", help="folder for first_session.json")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary folder)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="app --conf options, e.g. amp=off plan=auto")
    p.add_argument("--request", default="", help="JSON body of the README's training request (default: the README's)")
    p.set_defaults(func=_runs("bench_first_session"))

    p = bench.add_parser("scale", help="scoring volumes per minute with 0 (in-process), 1 and 2 Ray workers; training samples per second with 1 and 2 torchrun processes")
    p.add_argument("--out", default="benchmarks/results/bench_scale", help="folder for scale.json")
    p.add_argument("--cases", type=int, default=8, help="sample cases (seed --seed)")
    p.add_argument("--labelled", type=int, default=4, help="of which labelled (training; the others are scored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iterations", type=int, default=40, help="training iterations per run")
    p.add_argument("--mc-samples", type=int, default=2)
    p.add_argument("--tta-samples", type=int, default=2)
    p.set_defaults(func=_runs("bench_scale"))

    p = bench.add_parser("loop", help="label-to-serving time, learning curve, /infer latency during training")
    p.add_argument("--out", default="benchmarks/results/bench_loop/loop.json")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary folder)")
    p.add_argument("--labels", type=int, default=6, help="labels submitted one by one")
    p.add_argument("--run-seconds", type=float, default=30.0, help="budget of each automatic run")
    p.add_argument("--requests", type=int, default=5, help="timed /infer requests, idle and during training")
    p.add_argument("--skip-upstream", action="store_true")
    p.set_defaults(func=_runs("bench_loop"))

    p = bench.add_parser("load", help="annotators submitting at once beside /infer and retraining: labels intact, no 5xx, latency idle vs load")
    p.add_argument("--out", default="benchmarks/results/bench_load/result.json")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary folder)")
    p.add_argument("--annotators", type=int, default=8, help="threads submitting final labels at once")
    p.add_argument("--labels-per-annotator", type=int, default=25)
    p.add_argument("--infer-threads", type=int, default=2, help="threads calling /infer in a loop during the load")
    p.add_argument("--idle-requests", type=int, default=10, help="sequential /infer requests and label submissions timed idle")
    p.add_argument("--cases", type=int, default=16, help="generated cases (at least --annotators: each image has one annotator)")
    p.add_argument("--train-seconds", type=float, default=60.0, help="budget of the first training run (POST /train)")
    p.add_argument("--retrain-seconds", type=float, default=30.0, help="budget of each automatic run during the load")
    p.add_argument("--retrain-every", type=int, default=1, help="unseen final labels that start an automatic run")
    p.add_argument("--seed", type=int, default=0, help="data generation and training seed")
    p.set_defaults(func=_runs("bench_load"))

    p = bench.add_parser("prompt", help="train the prompt model on a CPU budget, then the interactive evaluation")
    p.add_argument("--out", default="benchmarks/results/bench_prompt", help="folder for interactive.json / interactive.png")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary folder)")
    p.add_argument("--train-minutes", type=float, default=30.0, help="training budget (the README's figures: 30 on 2 CPU threads)")
    p.add_argument(
        "--train-epochs", type=int, default=0,
        help="stop after this many epochs (one iteration per training case each) even within the minutes; "
        "0: the minutes alone. Fixes the iteration count, e.g. to train on a GPU what a CPU budget trains",
    )
    p.add_argument("--train-cases", type=int, default=16)
    p.add_argument("--held-out", type=int, default=4)
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="app --conf options, e.g. prompt_network=prompt")
    p.add_argument("--request", action="append", default=[], metavar="KEY=VALUE", help="training request options, e.g. lr=1e-3")
    p.add_argument("--seed", type=int, default=0, help="training seed (data generation is fixed)")
    p.add_argument("--seeds", default="", help="several training seeds, e.g. 0,1,2: a run each in <out>/seed<k>, and their summary.json in <out>")
    p.add_argument("--train-only", action="store_true", help="train into --work (its training.json records the run) and stop")
    p.add_argument(
        "--reuse-training", action="store_true",
        help="evaluate the model an earlier --train-only run left in --work (for changes to inference only; "
        "the result keeps that training's commit)",
    )
    p.set_defaults(func=_runs("bench_prompt"))

    p = bench.add_parser("latency", help="prompt model click latency on the CPU: float32 (native / oneDNN) and bfloat16")
    p.add_argument("--studies", required=True, help="datastore folder whose serving prompt model is timed")
    p.add_argument("--ground-truth", required=True, help="folder of <case>.nii.gz ground-truth label maps")
    p.add_argument("--cases", default="", help="comma-separated case ids (default: those without a final label)")
    p.add_argument("--clicks", type=int, default=3, help="clicks per structure and path")
    p.add_argument("--out", default="benchmarks/results/bench_latency", help="folder for latency.json / latency.png")
    p.add_argument("--skip-http", action="store_true", help="in-process paths only (no server)")
    p.set_defaults(func=_runs("bench_latency"))
    return parser


def main(argv=None) -> int:
    from segloop_bench.errors import HarnessError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as e:
        print(f"segloop-bench: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
