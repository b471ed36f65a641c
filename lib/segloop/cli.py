"""``segloop`` command line: sample data and configuration help.

Benchmarks, evaluations and the campaign simulation are ``segloop-bench`` (package ``segloop_bench``).
"""

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

    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
