"""``segloop`` command line: sample data, a local PACS, datasets in and out, configuration help.

Benchmarks, evaluations and the campaign simulation are ``segloop-bench`` (package ``segloop_bench``).
"""

import argparse
import os
import sys


def _sample_data(args) -> int:
    from segloop.data.sample import write_sample_data

    write_sample_data(
        args.out, cases=args.cases, seed=args.seed, labelled=args.labelled, mixed=args.mixed,
        shape=args.shape, spacing=args.spacing, dicom=args.dicom,
    )
    print(f"Images in {args.out}/studies, ground truth in {args.out}/ground_truth")
    return 0


def _pacs(args) -> int:
    import signal
    import subprocess

    from segloop.pacs.orthanc import OrthancServer

    def stop(*_):  # SIGTERM ends this process like Ctrl-C does, so Orthanc and the command stop too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    users = {args.user: args.password} if args.user else None
    command = [c for c in args.command if c != "--"]
    child = None
    try:
        with OrthancServer(args.storage, http_port=args.port, users=users) as pacs:
            for folder in args.upload:
                print(f"Uploading {folder} to Orthanc ...", flush=True)
                print(f"  {len(pacs.upload(folder))} instances", flush=True)
            print(f"Orthanc (DICOMweb) at {pacs.dicomweb_url}; storage in {args.storage}", flush=True)
            if not command:
                print("Ctrl-C stops it.", flush=True)
                pacs.process.wait()
                return 0
            child = subprocess.Popen(command)
            return child.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


def _export(args) -> int:
    from segloop.data.datasets import export_dataset

    folder = export_dataset(args.studies, args.out, args.format, args.labels or None, args.dataset_id, args.name)
    print(f"Wrote {folder}")
    return 0


def _import(args) -> int:
    from segloop.data.datasets import import_dataset

    result = import_dataset(args.source, args.studies)
    print(f"Imported {result['labelled']} labelled and {result['unlabelled']} unlabelled case(s) ({result['format']}) into {args.studies}")
    print(f"Serve it with: --conf labels '{result['conf_labels']}'")
    return 0


def _report(args) -> int:
    from segloop.reporting.page import fetch_report, write_report

    token = args.token or os.environ.get("SEGLOOP_TOKEN", "")
    path = write_report(fetch_report(args.server, token), args.out, source=args.server)
    print(f"Wrote {path}")
    return 0


def _conf(args) -> int:
    from segloop.configs.options import OPTIONS

    for key, (default, help_text) in OPTIONS.items():
        print(f"--conf {key:<15} default {default or '(see help)':<16} {help_text}")
    return 0


def _triple(kind):
    def parse(text: str):
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3 or min(values) <= 0:
            raise argparse.ArgumentTypeError(f"expected three positive numbers like 96,96,48, got {text!r}")
        return values

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample-data", help="generate synthetic abdominal CT studies with ground truth")
    p.add_argument("--out", required=True, help="output folder (gets studies/ and ground_truth/)")
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labelled", type=int, default=0, help="seed the datastore with the first k labels")
    p.add_argument("--mixed", action="store_true",
                   help="draw subpopulations: contrast phase, body size, tumour burden, situs inversus")
    p.add_argument("--dicom", action="store_true",
                   help="also write each image as a DICOM CT series under OUT/dicom/<case>/ (for a PACS)")
    p.add_argument("--shape", type=_triple(int), default=None, help="fixed grid for every case, voxels: I,J,K")
    p.add_argument("--spacing", type=_triple(float), default=None, help="fixed spacing for every case, mm: I,J,K")
    p.set_defaults(func=_sample_data)

    p = sub.add_parser("pacs", help="run a local Orthanc PACS (DICOMweb) on loopback, upload series, optionally run a command")
    p.add_argument("--storage", default=".pacs", help="Orthanc's storage and configuration folder")
    p.add_argument("--port", type=int, default=8042, help="Orthanc HTTP port (DICOMweb at /dicom-web)")
    p.add_argument("--upload", action="append", default=[], metavar="FOLDER", help="DICOM files to store (repeatable)")
    p.add_argument("--user", default="", help="require HTTP basic auth with this user ...")
    p.add_argument("--password", default="", help="... and this password")
    p.add_argument("command", nargs=argparse.REMAINDER, help="after --: a command to run while Orthanc serves")
    p.set_defaults(func=_pacs)

    p = sub.add_parser("export", help="write the campaign's final labels as an nnU-Net v2 raw dataset or an MSD task")
    p.add_argument("--studies", required=True, help="the campaign's local studies folder")
    p.add_argument("--format", choices=("nnunet", "msd"), required=True)
    p.add_argument("--out", required=True, help="folder to write Dataset<ID>_<name> (nnunet) or Task<ID>_<name> (msd) in")
    p.add_argument("--labels", default="", help="the campaign's --conf labels JSON (default: the sample labels)")
    p.add_argument("--dataset-id", type=int, default=501, help="nnU-Net dataset id / MSD task number")
    p.add_argument("--name", default="SegLoop", help="dataset name (letters, digits, _ -)")
    p.set_defaults(func=_export)

    p = sub.add_parser("import", help="start a campaign from an nnU-Net v2 raw dataset or an MSD task")
    p.add_argument("--from", dest="source", required=True, help="the dataset folder (with dataset.json)")
    p.add_argument("--studies", required=True, help="new studies folder to create")
    p.set_defaults(func=_import)

    p = sub.add_parser("report", help="the campaign report of a running server as an HTML page with plots")
    p.add_argument("--server", default="http://127.0.0.1:8000", help="the SegLoop server")
    p.add_argument("--out", default="campaign_report", help="folder for index.html, report.json and the PNGs")
    p.add_argument("--token", default="", help="bearer token when auth is on (or set SEGLOOP_TOKEN)")
    p.set_defaults(func=_report)

    p = sub.add_parser("conf", help="list the app's --conf options and defaults")
    p.set_defaults(func=_conf)

    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # what the user asked cannot be done: say why, no traceback
        print(f"segloop {args.command}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
