"""``segloop-bench bench load``: many annotators at once, beside /infer and automatic retraining.

The issue's scenario: 8 annotators each submit 25 final labels as fast as they can while others run
``/infer`` and the live loop retrains on what arrives. Nothing may be lost or garbled and no request
may get a 5xx; the ``/infer`` p95 latency under that load should stay within 3x its idle p95.

Two servers run on one generated datastore, one after the other:

1. *idle* (``auto_train false``, no automatic scoring job): the segmentation model trains once by
   ``POST /train`` (the version everything is timed with); once that run is over,
   ``idle_requests`` ``/infer`` requests from ``infer_threads`` clients at once (the same /infer
   traffic as under load, so the ratio measures what the annotators and retraining add, not the
   /infer clients queueing for each other), then as many sequential label submissions, are timed.
   This is the baseline.
2. *load* (``auto_train true``, scoring as usual): the same datastore (its idle-phase labels
   start a run at once, the new version's scores a scoring job);
   ``annotators`` threads submit ``labels_per_annotator`` labels each while ``infer_threads``
   threads call ``/infer`` in a loop until the annotators are done.

Every submission is the image's ground truth with a few voxels set to a per-submission marker, so
any two submissions differ. Each image belongs to one annotator, so for each image the last
submission that got a 200 is well defined; afterwards the stored final label of every image must
equal it voxel for voxel (an older submission stored instead is *lost*, anything else *garbled*).

Latencies are wall-clock seconds from sending a request to receiving its whole answer.
"""

import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import nibabel as nib
import numpy as np
import requests

from segloop.data.sample import write_sample_data
from segloop.labels import DEFAULT_LABELS
from segloop_bench.errors import HarnessError
from segloop_bench.provenance import write_result
from segloop_bench.server import ServerHandle, running_server, wait_for

TARGET_INFER_P95_RATIO = 3.0  # the target: /infer p95 under load <= 3x idle
REQUEST_TIMEOUT_S = 600  # one request; under load an /infer waits for the one inference thread
MARKER_DIGITS = 6  # voxels that carry a submission's number (base: the number of label values)
LABELLED_AT_START = 2  # cases with a final label before the servers start (the first model trains on them)


@dataclass
class Call:
    """One timed request: which kind (``infer`` / ``label``), the answer's status code (None: no
    answer), seconds until the whole answer arrived, the image, and the submission's number."""

    kind: str
    status: Optional[int]
    seconds: float
    image: str
    submission: Optional[int] = None
    error: Optional[str] = None


@dataclass
class Submission:
    """A label upload planned ahead: its number, the annotator who sends it, the image and the file."""

    number: int
    annotator: int
    image: str
    path: str


# ---- the labels submitted ------------------------------------------------------------------------


def marker_values(number: int) -> List[int]:
    """``number`` written in base ``len(label values)`` with label values as digits: MARKER_DIGITS
    voxel values, valid in the label map and different for every submission number."""
    values = [0] + sorted(set(DEFAULT_LABELS.values()))
    if number >= len(values) ** MARKER_DIGITS:
        raise HarnessError(f"too many submissions to mark ({number}); lower the scale")
    digits = []
    for _ in range(MARKER_DIGITS):
        number, digit = divmod(number, len(values))
        digits.append(values[digit])
    return digits


def write_marked_label(truth_path: str, number: int, out_path: str) -> None:
    """The ground truth with the first MARKER_DIGITS voxels of its first row set to the marker of
    submission ``number``; same grid, header and integer dtype as the ground truth."""
    truth = nib.load(truth_path)
    array = np.asarray(truth.dataobj).copy()
    array[:MARKER_DIGITS, 0, 0] = marker_values(number)
    nib.Nifti1Image(array, truth.affine, truth.header).to_filename(out_path)


def plan_submissions(images: List[str], annotators: int, per_annotator: int, first_number: int) -> List[List[Tuple[int, str]]]:
    """For each annotator, its ``(number, image)`` uploads in order. Annotator ``a`` owns
    ``images[a::annotators]`` and cycles through them, so every image has one writer."""
    if len(images) < annotators:
        raise HarnessError(f"{annotators} annotators need at least as many cases, got {len(images)}")
    plans, number = [], first_number
    for a in range(annotators):
        owned = images[a::annotators]
        plans.append([(number + n, owned[n % len(owned)]) for n in range(per_annotator)])
        number += per_annotator
    return plans


def write_submissions(plans: List[List[Tuple[int, str]]], truth_dir: str, out_dir: str) -> List[List[Submission]]:
    """Write every planned upload's file (before anything is timed); returns the plans as Submissions."""
    os.makedirs(out_dir, exist_ok=True)
    out = []
    for annotator, plan in enumerate(plans):
        subs = []
        for number, image in plan:
            path = os.path.join(out_dir, f"{number:05d}_{image}.nii.gz")
            write_marked_label(os.path.join(truth_dir, f"{image}.nii.gz"), number, path)
            subs.append(Submission(number, annotator, image, path))
        out.append(subs)
    return out


# ---- timed requests ------------------------------------------------------------------------------


def timed_infer(url: str, image: str) -> Call:
    """``POST /infer/segmentation?image=`` as a client sends it (multipart, params ``{}``)."""
    start = time.perf_counter()
    try:
        r = requests.post(f"{url}/infer/segmentation", params={"image": image}, files={"params": (None, "{}")}, timeout=REQUEST_TIMEOUT_S)
        return Call("infer", r.status_code, time.perf_counter() - start, image, error=None if r.ok else r.text[:300])
    except requests.RequestException as e:
        return Call("infer", None, time.perf_counter() - start, image, error=repr(e)[:300])


def timed_submit(url: str, sub: Submission) -> Call:
    """``PUT /datastore/label?image=&tag=final`` with the submission's file, as its annotator."""
    start = time.perf_counter()
    try:
        with open(sub.path, "rb") as f:
            r = requests.put(
                f"{url}/datastore/label",
                params={"image": sub.image, "tag": "final"},
                files={"label": (f"{sub.image}.nii.gz", f), "params": (None, f'{{"annotator": "annotator_{sub.annotator}"}}')},
                timeout=REQUEST_TIMEOUT_S,
            )
        return Call("label", r.status_code, time.perf_counter() - start, sub.image, sub.number, None if r.ok else r.text[:300])
    except requests.RequestException as e:
        return Call("label", None, time.perf_counter() - start, sub.image, sub.number, repr(e)[:300])


# ---- server state --------------------------------------------------------------------------------


def model_state(url: str) -> Dict:
    """``GET /segloop/models/segmentation``: serving version, version history, retrain trigger."""
    r = requests.get(f"{url}/segloop/models/segmentation", timeout=REQUEST_TIMEOUT_S)
    r.raise_for_status()
    return r.json()


def task_running(url: str, task: str) -> bool:
    """Whether MONAI Label's ``train`` or ``scoring`` task is submitted or running (404: never ran)."""
    r = requests.get(f"{url}/{task}/", timeout=REQUEST_TIMEOUT_S)
    return r.status_code == 200 and r.json().get("status") in ("SUBMITTED", "RUNNING")


def quiet(url: str) -> bool:
    """No training run (manual or automatic, queued or going) and no scoring job: timings are idle."""
    s = model_state(url)
    busy = s["training_run"] is not None or s["trigger"]["running"] or s["trigger"]["queued"]
    return not busy and not task_running(url, "train") and not task_running(url, "scoring")


def train_first_version(server: ServerHandle, seconds: float, seed: int) -> Dict:
    """Train the segmentation model by ``POST /train`` within ``seconds`` (checked at epoch ends);
    returns the version it published. /infer answers 409 until a version serves."""
    url = server.url
    r = requests.post(f"{url}/train/segmentation", json={"max_seconds": seconds, "max_epochs": 100000, "seed": seed, "val_split": 0.0})
    r.raise_for_status()
    wait_for(lambda: quiet(url), timeout=seconds + 600, every=1.0, what="the first training run to end")
    state = model_state(url)
    if state["serving_version"] is None:
        raise HarnessError(f"the first training run published no version; server log ends:\n{server.log_tail(15)}")
    return state["versions"][-1]


def retraining_snapshot(url: str) -> Dict:
    """The automatic loop at one moment: versions (number, status), trigger counters, a run going."""
    s = model_state(url)
    return {
        "versions": [{"version": v["version"], "status": v["status"]} for v in s["versions"]],
        "serving_version": s["serving_version"],
        "runs_started": s["trigger"]["runs_started"],
        "run_in_progress": bool(s["training_run"] is not None or s["trigger"]["running"]),
    }


# ---- the two phases ------------------------------------------------------------------------------


def idle_phase(url: str, images: List[str], subs: List[Submission], infer_threads: int) -> List[Call]:
    """The same /infer traffic as under load, with nothing else: ``infer_threads`` clients send
    ``len(subs)`` /infer requests in all, back to back; then the submissions, one at a time. One
    untimed /infer first: the first request after a start loads the model (a one-off)."""
    timed_infer(url, images[-1])
    per_client = [list(range(i, len(subs), infer_threads)) for i in range(infer_threads)]
    with ThreadPoolExecutor(max_workers=infer_threads) as pool:
        infer_calls = pool.map(lambda ns: [timed_infer(url, images[n % len(images)]) for n in ns], per_client)
        calls = [c for client in infer_calls for c in client]
    return calls + [timed_submit(url, sub) for sub in subs]


def infer_loop(url: str, images: List[str], offset: int, stop: threading.Event, calls: List[Call]) -> None:
    """Call /infer back to back on the images in turn (from ``offset``) until ``stop`` is set."""
    n = offset
    while not stop.is_set():
        calls.append(timed_infer(url, images[n % len(images)]))
        n += 1


def annotate(url: str, subs: List[Submission]) -> List[Call]:
    """One annotator: its submissions back to back, in order."""
    return [timed_submit(url, sub) for sub in subs]


def load_phase(url: str, images: List[str], plans: List[List[Submission]], infer_threads: int) -> List[Call]:
    """All annotators at once beside ``infer_threads`` /infer loops, which stop when the annotators
    are done. One untimed /infer first, as in the idle phase (this is a freshly started server)."""
    timed_infer(url, images[-1])
    stop = threading.Event()
    infer_calls: List[List[Call]] = [[] for _ in range(infer_threads)]
    loops = [threading.Thread(target=infer_loop, args=(url, images, i * 7, stop, infer_calls[i]), daemon=True) for i in range(infer_threads)]
    for t in loops:
        t.start()
    try:
        with ThreadPoolExecutor(max_workers=len(plans)) as pool:
            label_calls = [c for calls in pool.map(lambda subs: annotate(url, subs), plans) for c in calls]
    finally:
        stop.set()
        for t in loops:
            t.join()
    return label_calls + [c for calls in infer_calls for c in calls]


# ---- checks and figures --------------------------------------------------------------------------


def stored_label(url: str, image: str, scratch: str) -> Optional[np.ndarray]:
    """The final label the server stores for ``image`` (``GET /datastore/label``), or None (404)."""
    r = requests.get(f"{url}/datastore/label", params={"label": image, "tag": "final"}, timeout=REQUEST_TIMEOUT_S)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    path = os.path.join(scratch, f"stored_{image}.nii.gz")
    with open(path, "wb") as f:
        f.write(r.content)
    return np.asarray(nib.load(path).dataobj)


def check_labels(url: str, subs: List[Submission], calls: List[Call], scratch: str) -> Dict:
    """For each image with a submission that got a 200, compare the stored final label with the
    last such submission (``subs`` and ``calls`` in submission order per image). ``lost``: nothing
    stored or an older submission stored; ``garbled``: matches none of the image's submissions."""
    status = {c.submission: c.status for c in calls if c.kind == "label"}
    by_image: Dict[str, List[Submission]] = {}
    for sub in subs:
        by_image.setdefault(sub.image, []).append(sub)
    lost, garbled, checked = [], [], 0
    for image, image_subs in sorted(by_image.items()):
        accepted = [s for s in image_subs if status.get(s.number) == 200]
        if not accepted:
            continue
        checked += 1
        stored = stored_label(url, image, scratch)
        expected = accepted[-1]
        if stored is None:
            lost.append({"image": image, "expected_submission": expected.number, "stored": None})
        elif not same_voxels(stored, expected.path):
            match = next((s.number for s in reversed(image_subs) if same_voxels(stored, s.path)), None)
            entry = {"image": image, "expected_submission": expected.number, "stored_submission": match}
            (lost if match is not None else garbled).append(entry)
    return {"images_checked": checked, "lost": lost, "garbled": garbled, "lost_count": len(lost), "garbled_count": len(garbled)}


def same_voxels(stored: np.ndarray, path: str) -> bool:
    """Whether ``stored`` has the shape and every voxel value of the label file at ``path``."""
    sent = np.asarray(nib.load(path).dataobj)
    return stored.shape == sent.shape and np.array_equal(stored, sent)


def latency(calls: List[Call], kind: str) -> Dict:
    """p50 / p95 / max seconds of the ``kind`` requests answered with a 2xx, and how many there were."""
    seconds = [c.seconds for c in calls if c.kind == kind and c.status is not None and 200 <= c.status < 300]
    if not seconds:
        return {"n": 0, "p50_s": None, "p95_s": None, "max_s": None}
    p50, p95 = np.percentile(seconds, [50, 95])
    return {"n": len(seconds), "p50_s": round(float(p50), 3), "p95_s": round(float(p95), 3), "max_s": round(max(seconds), 3)}


def status_counts(calls: List[Call]) -> Dict:
    """Per kind: requests by status class (``no_response``: connection error or timeout) and by code."""
    out = {}
    for kind in ("infer", "label"):
        codes = [c.status for c in calls if c.kind == kind]
        out[kind] = {
            "2xx": sum(1 for s in codes if s is not None and 200 <= s < 300),
            "4xx": sum(1 for s in codes if s is not None and 400 <= s < 500),
            "5xx": sum(1 for s in codes if s is not None and s >= 500),
            "no_response": sum(1 for s in codes if s is None),
            "by_code": {str(s): codes.count(s) for s in sorted(set(codes), key=str)},
        }
    return out


def failures(calls: List[Call], limit: int = 10) -> List[Dict]:
    """The first ``limit`` requests that got a 5xx or no answer, with the server's message."""
    bad = [c for c in calls if c.status is None or c.status >= 500]
    return [asdict(c) for c in bad[:limit]]


def infer_target(idle: Dict, load: Dict) -> Dict:
    """/infer p95 under load over idle, against TARGET_INFER_P95_RATIO."""
    ratio = load["p95_s"] / idle["p95_s"] if idle["p95_s"] and load["p95_s"] is not None else None
    return {
        "infer_p95_load_over_idle": None if ratio is None else round(ratio, 3),
        "target": TARGET_INFER_P95_RATIO,
        "met": ratio is not None and ratio <= TARGET_INFER_P95_RATIO,
    }


def retraining_between(before: Dict, after: Dict) -> Dict:
    """The automatic runs started and the versions added between two :func:`retraining_snapshot` s."""
    known = {v["version"] for v in before["versions"]}
    return {
        "before": before,
        "after": after,
        "runs_started": after["runs_started"] - before["runs_started"],
        "new_versions": [v for v in after["versions"] if v["version"] not in known],
    }


def outcome(idle_calls: List[Call], load_calls: List[Call], labels: Dict) -> Dict:
    """The report's figures: latencies, the target, status counts, failures, the label check, and
    ``passed``: no 5xx, every request answered, no label lost or garbled."""
    infer_idle, infer_load = latency(idle_calls, "infer"), latency(load_calls, "infer")
    counts = {"idle": status_counts(idle_calls), "load": status_counts(load_calls)}
    server_errors = sum(counts[p][k]["5xx"] + counts[p][k]["no_response"] for p in counts for k in counts[p])
    return {
        "latency": {
            "infer": {"idle": infer_idle, "load": infer_load},
            "label": {"idle": latency(idle_calls, "label"), "load": latency(load_calls, "label")},
        },
        "target": infer_target(infer_idle, infer_load),
        "status_counts": counts,
        "server_errors": server_errors,  # 5xx answers and requests with no answer
        "failed_requests": failures(idle_calls + load_calls),
        "labels": labels,
        "passed": server_errors == 0 and labels["lost_count"] == 0 and labels["garbled_count"] == 0,
    }


# ---- the benchmark -------------------------------------------------------------------------------


def server_conf(auto_train: bool, retrain_every: int, retrain_seconds: float) -> Dict[str, str]:
    """The app's ``--conf`` for one phase: the segmentation model only (CPU preset)."""
    return {
        "models": "segmentation",
        "network": "unetr_cpu",
        "auto_train": "true" if auto_train else "false",
        "retrain_every": str(retrain_every),
        "retrain_max_seconds": str(retrain_seconds),
        "first_run_max_seconds": str(retrain_seconds),
    }


def run_bench(
    work: str,
    out: str,
    annotators: int = 8,
    labels_per_annotator: int = 25,
    infer_threads: int = 2,
    idle_requests: int = 10,
    cases: int = 16,
    train_seconds: float = 60.0,
    retrain_seconds: float = 30.0,
    retrain_every: int = 1,
    seed: int = 0,
    shape: Optional[Tuple[int, int, int]] = None,
    spacing: Optional[Tuple[float, float, float]] = None,
    argv: Optional[list] = None,
) -> Dict:
    """Generate the data, run both phases, check the labels, write ``out``; returns the report.
    ``shape`` (voxels) / ``spacing`` (mm) fix every case's grid (default: the generator's varied
    grids); smaller volumes make every request and run faster, e.g. for a quick test."""
    started = time.time()
    labelled = min(LABELLED_AT_START, cases)
    write_sample_data(os.path.join(work, "data"), cases=cases, seed=seed, labelled=labelled, progress=None, shape=shape, spacing=spacing)
    studies, truth = os.path.join(work, "data", "studies"), os.path.join(work, "data", "ground_truth")
    images = [f"case_{i:03d}" for i in range(cases)]
    idle_subs = write_submissions(plan_submissions(images, 1, idle_requests, 0), truth, os.path.join(work, "submissions"))[0]
    plans = write_submissions(plan_submissions(images, annotators, labels_per_annotator, idle_requests), truth, os.path.join(work, "submissions"))
    conf = {"idle": server_conf(False, retrain_every, retrain_seconds), "load": server_conf(True, retrain_every, retrain_seconds)}

    idle_env = {"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}  # no scoring job beside the idle timings
    with running_server(studies, conf=conf["idle"], log_path=os.path.join(work, "server_idle.log"), env=idle_env) as server:
        print(f"training the first version ({train_seconds:g} s budget) ...", flush=True)
        first = train_first_version(server, train_seconds, seed)
        print(f"idle: {idle_requests} /infer from {infer_threads} client(s), then {idle_requests} label submissions one at a time ...", flush=True)
        idle_calls = idle_phase(server.url, images, idle_subs, infer_threads)

    with running_server(studies, conf=conf["load"], log_path=os.path.join(work, "server_load.log")) as server:
        before = retraining_snapshot(server.url)
        print(f"load: {annotators} annotators x {labels_per_annotator} labels beside {infer_threads} /infer loop(s) ...", flush=True)
        load_start = time.time()
        load_calls = load_phase(server.url, images, plans, infer_threads)
        load_seconds = time.time() - load_start
        after = retraining_snapshot(server.url)
        all_subs = idle_subs + [s for subs in plans for s in subs]
        labels = check_labels(server.url, all_subs, idle_calls + load_calls, work)

    report = {
        "scale": {
            "annotators": annotators, "labels_per_annotator": labels_per_annotator, "infer_threads": infer_threads,
            "idle_requests": idle_requests, "cases": cases, "labelled_at_start": labelled,
            "shape": shape, "spacing": spacing,
            "train_seconds": train_seconds, "retrain_seconds": retrain_seconds, "retrain_every": retrain_every, "seed": seed,
        },
        "conf": conf,
        "first_version": {k: first.get(k) for k in ("version", "status", "iterations")},
        **outcome(idle_calls, load_calls, labels),
        "retraining_during_load": retraining_between(before, after),
        "wall_seconds": {"load_phase": round(load_seconds, 1), "total": round(time.time() - started, 1)},
    }
    write_result(out, report, "the idle phase: the same model and datastore, one request at a time, no training or scoring job", argv)
    return report


def print_summary(report: Dict, out: str) -> None:
    """A few lines: latencies idle vs load, the target, errors, labels, retraining."""
    for kind in ("infer", "label"):
        idle, load = report["latency"][kind]["idle"], report["latency"][kind]["load"]
        print(f"{kind:>5}: idle p50 {idle['p50_s']} s p95 {idle['p95_s']} s (n={idle['n']}); "
              f"load p50 {load['p50_s']} s p95 {load['p95_s']} s max {load['max_s']} s (n={load['n']})")
    t = report["target"]
    print(f"/infer p95 load/idle {t['infer_p95_load_over_idle']} (target <= {t['target']:g}: {'met' if t['met'] else 'NOT met'})")
    r, labels = report["retraining_during_load"], report["labels"]
    print(f"5xx / no answer: {report['server_errors']}; labels checked {labels['images_checked']}, "
          f"lost {labels['lost_count']}, garbled {labels['garbled_count']}; "
          f"automatic runs started during the load: {r['runs_started']}, new versions {[v['version'] for v in r['new_versions']]}")
    print(f"Wrote {out}")


def main(args) -> int:
    work = args.work or tempfile.mkdtemp(prefix="segloop-load-")
    os.makedirs(work, exist_ok=True)
    report = run_bench(
        work, args.out, annotators=args.annotators, labels_per_annotator=args.labels_per_annotator,
        infer_threads=args.infer_threads, idle_requests=args.idle_requests, cases=args.cases,
        train_seconds=args.train_seconds, retrain_seconds=args.retrain_seconds, retrain_every=args.retrain_every,
        seed=args.seed,
    )
    print_summary(report, args.out)
    return 0 if report["passed"] else 1
