"""What every SegLoop process pays besides its work: the interpreter's exit after ``import monai``,
and the label writer's first call; and what a user feels of it through HTTP.

    python benchmarks/process_overheads.py [--studies S] [--repeats N] [--out out.json]

Each arm runs in fresh subprocesses, alternating with its baseline, ``--repeats`` times:

* ``exit``: ``import monai`` (what a training run, scoring job or server imports), then the time
  from the child's last line to its end, without and with ``import segloop`` first (SegLoop freezes
  the garbage collector at exit, ``segloop/processes.py``);
* ``writer``: MONAI Label's ``Writer`` on a 320x320x46 uint8 label map (the sample cases' grid), its
  first and second call in a process, through ITK (MONAI Label's default) and through nibabel
  (SegLoop's infer tasks);
* ``http`` (with ``--studies``, a studies folder whose segmentation model is trained): a real server,
  its readiness, then ``/infer/segmentation`` three times on one image through ``requests``, and
  the time ``stop`` takes; with the response's own latency phases (``write`` is the writer's).

Writes ``benchmarks/results/process_overheads/process_overheads.json`` (or ``--out``) with provenance.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import requests

from segloop_bench.provenance import write_result
from segloop_bench.server import NO_SCORING, running_server

EXIT_CHILD = "{imports}\nimport time\nprint(time.time(), flush=True)\n"

WRITER_CHILD = """
import json, time, numpy as np, torch
from monai.data import MetaTensor
from monailabel.transform.writer import Writer
label = np.random.default_rng(0).integers(0, 5, (320, 320, 46)).astype(np.uint8)
affine = np.diag([0.8, 0.8, 2.5, 1.0])
times = []
for _ in range(2):
    data = {"pred": MetaTensor(torch.as_tensor(label), affine=torch.as_tensor(affine)), "image_path": "x.nii.gz",
            "result_dtype": "uint8", "result_extension": ".nii.gz"}
    start = time.perf_counter()
    path, _ = Writer(label="pred", json="result", nibabel=NIBABEL)(data)
    times.append(time.perf_counter() - start)
    import os; os.remove(path)
print(json.dumps(times), flush=True)
"""


def child_exit_seconds(imports: str) -> dict:
    start = time.time()
    child = subprocess.Popen([sys.executable, "-c", EXIT_CHILD.format(imports=imports)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    printed = float(child.stdout.readline())
    child.wait()
    return {"import_s": round(printed - start, 2), "exit_s": round(time.time() - printed, 2)}


def child_writer_seconds(nibabel: bool) -> list:
    done = subprocess.run([sys.executable, "-c", WRITER_CHILD.replace("NIBABEL", str(nibabel))],
                          capture_output=True, text=True, check=True)
    return [round(t, 3) for t in json.loads(done.stdout.strip().splitlines()[-1])]


def median_of(rows: list, key) -> float:
    return round(statistics.median(key(r) for r in rows), 3)


def http_arm(studies: str, image: str, requests_n: int = 3) -> dict:
    work = tempfile.mkdtemp(prefix="overheads-")
    copy = os.path.join(work, "studies")
    shutil.copytree(studies, copy)
    try:
        start = time.time()
        conf = {"models": "segmentation", "auto_train": "false"}
        with running_server(copy, conf=conf, log_path=os.path.join(work, "server.log"), env=NO_SCORING) as server:
            ready = time.time() - start
            calls = []
            for _ in range(requests_n):
                t = time.time()
                r = requests.post(f"{server.url}/infer/segmentation", params={"image": image, "output": "json"}, timeout=300)
                r.raise_for_status()
                phases = {k.lower(): round(float(v), 3) for k, v in r.json().get("latencies", {}).items()
                          if isinstance(v, (int, float))}
                calls.append({"http_s": round(time.time() - t, 3), "phases": phases})
            stop_start = time.time()
        stop = time.time() - stop_start
        return {"image": image, "ready_s": round(ready, 2), "infer": calls, "stop_s": round(stop, 2)}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", default="", help="a studies folder with a trained segmentation model (http arm)")
    parser.add_argument("--image", default="case_004")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "process_overheads",
                                                      "process_overheads.json"))
    args = parser.parse_args(argv)

    exits = {"monai": [], "segloop_then_monai": []}
    writers = {"itk": [], "nibabel": []}
    for _ in range(args.repeats):  # alternating, so drift in the machine's load hits both arms alike
        exits["monai"].append(child_exit_seconds("import monai"))
        exits["segloop_then_monai"].append(child_exit_seconds("import segloop\nimport monai"))
        writers["itk"].append(child_writer_seconds(False))
        writers["nibabel"].append(child_writer_seconds(True))
    report = {
        "repeats": args.repeats,
        "exit": {arm: {"runs": rows, "median_exit_s": median_of(rows, lambda r: r["exit_s"]),
                       "median_import_s": median_of(rows, lambda r: r["import_s"])} for arm, rows in exits.items()},
        "writer_320x320x46_uint8": {arm: {"runs": rows, "median_first_s": median_of(rows, lambda r: r[0]),
                                          "median_second_s": median_of(rows, lambda r: r[1])} for arm, rows in writers.items()},
    }
    if args.studies:
        report["http"] = http_arm(args.studies, args.image)
    baseline = ("exit: the same child without `import segloop` (no freeze at exit); writer: MONAI Label's default "
                "ITK path; http: none (the current server, first request against later ones)")
    write_result(args.out, report, baseline, argv=[os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])])
    print(json.dumps({k: v for k, v in report.items()}, indent=1))
    return report


if __name__ == "__main__":
    main()
