"""``segloop`` command line: sample data, configuration help, benchmarks."""

import argparse
import sys


def _sample_data(args) -> int:
    from segloop.data.sample import write_sample_data

    write_sample_data(args.out, cases=args.cases, seed=args.seed, labelled=args.labelled)
    print(f"Images in {args.out}/studies, ground truth in {args.out}/ground_truth")
    return 0


def _conf(args) -> int:
    from segloop.configs.options import OPTIONS

    for key, (default, help_text) in OPTIONS.items():
        print(f"--conf {key:<15} default {default or '(see help)':<16} {help_text}")
    return 0


def _bench_infer(args) -> int:
    from segloop.evaluation.bench_infer import main as bench_main

    return bench_main(args)


def _bench_loop(args) -> int:
    from segloop.evaluation.bench_loop import main as bench_main

    return bench_main(args)


def _eval_interactive(args) -> int:
    from segloop.evaluation.interactive import main as eval_main

    return eval_main(args)


def _eval_uncertainty(args) -> int:
    from segloop.evaluation.uncertainty_view import main as view_main

    return view_main(args)


def _bench_prompt(args) -> int:
    from segloop.evaluation.bench_prompt import main as bench_main

    return bench_main(args)


def _bench_latency(args) -> int:
    from segloop.evaluation.bench_latency import main as bench_main

    return bench_main(args)


def _simulate(args) -> int:
    from segloop.evaluation.simulate import main as simulate_main

    return simulate_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-data", help="generate synthetic abdominal CT studies with ground truth")
    p.add_argument("--out", required=True, help="output folder (gets studies/ and ground_truth/)")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labelled", type=int, default=0, help="seed the datastore with the first k labels")
    p.set_defaults(func=_sample_data)

    p = sub.add_parser("conf", help="list the app's --conf options and defaults")
    p.set_defaults(func=_conf)

    p = sub.add_parser("simulate", help="replay annotation campaigns from ground truth: Dice vs labels per strategy")
    p.add_argument("--studies", required=True, help="folder of images (the last --test-cases are held out)")
    p.add_argument("--ground-truth", required=True, help="folder of <case>.nii.gz ground-truth label maps")
    p.add_argument("--strategy", default="all", help="comma-separated strategies, or all: random,entropy,epistemic,diversity,hybrid")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per-round", type=int, default=2, help="cases labelled per round (picked as by k annotators)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--initial", type=int, default=2, help="randomly chosen labels before the first round")
    p.add_argument("--test-cases", type=int, default=4, help="held-out cases for Dice")
    p.add_argument("--first-iterations", type=int, default=60, help="training iterations of the initial model")
    p.add_argument("--round-iterations", type=int, default=30, help="fine-tuning iterations per round")
    p.add_argument("--full-iterations", type=int, default=0, help="full-data model (default: 2x a campaign's total)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="app --conf options")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary folder)")
    p.add_argument("--out", default="benchmarks/results/simulation", help="folder for simulation.json / .png")
    p.set_defaults(func=_simulate)

    evaluate = sub.add_parser("eval", help="evaluations").add_subparsers(dest="eval", required=True)
    p = evaluate.add_parser("interactive", help="prompt model: Dice per click, NoC@85/90, box and text Dice, latency")
    p.add_argument("--studies", required=True, help="datastore folder whose serving prompt model is evaluated")
    p.add_argument("--ground-truth", required=True, help="folder of <case>.nii.gz ground-truth label maps")
    p.add_argument("--cases", default="", help="comma-separated case ids (default: those without a final label)")
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results", help="folder for interactive.json / interactive.png")
    p.set_defaults(func=_eval_interactive)
    p = evaluate.add_parser("uncertainty", help="PNG: uncertainty overlay of one case and the reliability diagram")
    p.add_argument("--studies", required=True, help="datastore folder whose serving automatic model is used")
    p.add_argument("--image", required=True, help="image id in that datastore")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="app --conf options")
    p.add_argument("--out", default="benchmarks/results/uncertainty_overlay.png")
    p.set_defaults(func=_eval_uncertainty)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("infer", help="/infer latency and server memory: SegLoop vs upstream radiology app")
    p.add_argument("--out", default="benchmarks/results/infer.json")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary folder)")
    p.add_argument("--requests", type=int, default=5, help="timed /infer requests per server")
    p.add_argument("--train-minutes", type=float, default=10.0, help="SegLoop training budget for the Dice report")
    p.add_argument("--train-cases", type=int, default=24)
    p.add_argument("--skip-upstream", action="store_true")
    p.set_defaults(func=_bench_infer)

    p = bench.add_parser("loop", help="label-to-serving time, learning curve, /infer latency during training")
    p.add_argument("--out", default="benchmarks/results/loop.json")
    p.add_argument("--work", default="", help="scratch folder (default: a temporary folder)")
    p.add_argument("--labels", type=int, default=6, help="labels submitted one by one")
    p.add_argument("--run-seconds", type=float, default=30.0, help="budget of each automatic run")
    p.add_argument("--requests", type=int, default=5, help="timed /infer requests, idle and during training")
    p.add_argument("--skip-upstream", action="store_true")
    p.set_defaults(func=_bench_loop)

    p = bench.add_parser("prompt", help="train the prompt model on a CPU budget, then the interactive evaluation")
    p.add_argument("--out", default="benchmarks/results", help="folder for interactive.json / interactive.png")
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
    p.set_defaults(func=_bench_prompt)

    p = bench.add_parser("latency", help="prompt model click latency on the CPU: float32 (native / oneDNN) and bfloat16")
    p.add_argument("--studies", required=True, help="datastore folder whose serving prompt model is timed")
    p.add_argument("--ground-truth", required=True, help="folder of <case>.nii.gz ground-truth label maps")
    p.add_argument("--cases", default="", help="comma-separated case ids (default: those without a final label)")
    p.add_argument("--clicks", type=int, default=3, help="clicks per structure and path")
    p.add_argument("--out", default="benchmarks/results/latency", help="folder for latency.json / latency.png")
    p.set_defaults(func=_bench_latency)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
