"""``segloop-bench bench loop``: the live loop measured end to end, SegLoop vs upstream, same run.

(b) Learning curve: a SegLoop server starts with no labels; ground-truth labels of generated cases
    are submitted one at a time (as an annotator would), each automatic run is awaited, and the
    serving version is scored on held-out cases through ``/infer`` (Dice per label, input grid).
(a) Loop time: for each submission, seconds from ``PUT /datastore/label`` until the new version
    serves. Upstream: MONAI Label's radiology app ``segmentation_spleen``: the same label (spleen
    only, as that model is binary) is submitted, then ``POST /train`` with as many epochs as
    SegLoop's first run made, and the time until that run is DONE (its model published) is taken.
(c) ``/infer`` latency while a training run is going vs idle, on the SegLoop server.

Writes ``benchmarks/results/bench_loop/loop.json`` and ``loop_learning_curve.png``; prints a table.
"""

import os
import shutil
import statistics
import tempfile
import time
from typing import Dict, List

import nibabel as nib
import numpy as np
import requests

from segloop.data.sample import save_nifti, write_sample_data
from segloop_bench.upstream import radiology_app
from segloop.metrics.dice import dice_per_label
from segloop_bench.provenance import write_result
from segloop_bench.server import running_server, wait_for
from segloop.labels import DEFAULT_LABELS


def model_state(url: str) -> Dict:
    return requests.get(f"{url}/segloop/models/segmentation", timeout=60).json()


def held_out_dice(url: str, truth_dir: str, cases: List[str], scratch: str) -> Dict[str, float]:
    scores = []
    for case in cases:
        r = requests.post(f"{url}/infer/segmentation", params={"image": case, "output": "image"}, timeout=600)
        r.raise_for_status()
        path = os.path.join(scratch, f"{case}_pred.nii.gz")
        with open(path, "wb") as f:
            f.write(r.content)
        pred = np.asarray(nib.load(path).dataobj)
        truth = np.asarray(nib.load(os.path.join(truth_dir, f"{case}.nii.gz")).dataobj)
        scores.append(dice_per_label(pred, truth, DEFAULT_LABELS))
    mean = {k: float(np.nanmean([s[k] for s in scores])) for k in DEFAULT_LABELS}
    mean["mean"] = float(np.mean([mean[k] for k in DEFAULT_LABELS]))
    return {k: round(v, 4) for k, v in mean.items()}


def timed_infer(url: str, model: str, image: str, n: int) -> List[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        r = requests.post(f"{url}/infer/{model}", params={"image": image, "output": "image"}, timeout=600)
        r.raise_for_status()
        out.append(round(time.perf_counter() - start, 3))
    return out


def segloop_phase(work: str, pool: List[str], held: List[str], truth: str, budget_s: float, requests_n: int) -> Dict:
    studies = os.path.join(work, "segloop_studies")
    shutil.copytree(os.path.join(work, "data", "studies"), studies)
    conf = {"models": "segmentation", "retrain_max_seconds": str(budget_s), "first_run_max_seconds": str(budget_s), "retrain_debounce_s": "0"}
    curve, loop_times = [], []
    with running_server(studies, conf=conf, log_path=os.path.join(work, "segloop_server.log")) as server:
        url = server.url
        for n, case in enumerate(pool, start=1):
            before = len(model_state(url)["versions"])
            start = time.time()
            with open(os.path.join(truth, f"{case}.nii.gz"), "rb") as f:
                r = requests.put(f"{url}/datastore/label", params={"image": case, "tag": "final"}, files={"label": f})
            r.raise_for_status()
            state = wait_for(lambda: (s := model_state(url)) and len(s["versions"]) > before and s, timeout=900)
            version = state["versions"][-1]
            seconds = round(time.time() - start, 1)
            wait_for(lambda: not model_state(url)["trigger"]["running"], timeout=300)
            dice = held_out_dice(url, truth, held, work)
            curve.append({"labels": n, "version": version["version"], "status": version["status"],
                          "iterations": version["iterations"], "seconds_to_serve": seconds, "held_out_dice": dice})
            if version["status"] == "promoted":
                loop_times.append(seconds)
            print(f"  {n} label(s): v{version['version']} {version['status']} after {seconds} s; held-out {dice}", flush=True)
        first_epochs = model_state(url)["versions"][0]["iterations"]  # one labelled case: 1 iteration per epoch

        # (c) /infer latency idle vs during a training run
        idle = timed_infer(url, "segmentation", held[0], requests_n)
        requests.post(f"{url}/train/segmentation", json={"max_seconds": 600, "max_epochs": 100000}).raise_for_status()
        wait_for(lambda: model_state(url)["training_run"], timeout=120)
        time.sleep(5)  # past the run's start-up, into training iterations
        busy = timed_infer(url, "segmentation", held[0], requests_n)
        requests.delete(f"{url}/train/")
    return {
        "curve": curve,
        "loop_seconds": loop_times,
        "first_run_epochs": first_epochs,
        "infer_latency_idle_s": idle,
        "infer_latency_training_s": busy,
    }


def upstream_phase(work: str, case: str, truth: str, epochs: int) -> Dict:
    studies = os.path.join(work, "upstream_studies")
    shutil.copytree(os.path.join(work, "data", "studies"), studies)
    app = os.path.join(work, "radiology_app")
    shutil.copytree(radiology_app(), app)
    label = nib.load(os.path.join(truth, f"{case}.nii.gz"))
    spleen = os.path.join(work, f"{case}_spleen.nii.gz")
    save_nifti((np.asarray(label.dataobj) == DEFAULT_LABELS["spleen"]).astype(np.uint8), label.affine, spleen)
    conf = {"models": "segmentation_spleen", "use_pretrained_model": "false", "sam2": "false", "scribbles": "false"}
    with running_server(studies, app=app, conf=conf, log_path=os.path.join(work, "upstream_server.log")) as server:
        url = server.url
        start = time.time()
        with open(spleen, "rb") as f:
            requests.put(f"{url}/datastore/label", params={"image": case, "tag": "final"}, files={"label": f}).raise_for_status()
        requests.post(f"{url}/train/segmentation_spleen", json={"max_epochs": epochs}).raise_for_status()
        status = wait_for(
            lambda: (s := requests.get(f"{url}/train/").json())["status"] not in ("SUBMITTED", "RUNNING") and s,
            timeout=1800,
        )
        seconds = round(time.time() - start, 1)
        published = os.path.exists(os.path.join(app, "model", "segmentation_spleen.pt"))
    return {"seconds_label_to_model": seconds, "epochs": epochs, "status": status["status"], "model_published": published}


def plot_curve(curve: List[Dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [c["labels"] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name in list(DEFAULT_LABELS) + ["mean"]:
        ax.plot(x, [c["held_out_dice"][name] for c in curve], marker="o", lw=2.5 if name == "mean" else 1.2, label=name)
    ax.set_xlabel("labels submitted (one automatic run each)")
    ax.set_ylabel("held-out Dice")
    ax.set_ylim(0, 1)
    ax.set_xticks(x)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("SegLoop: the serving model improves as corrections arrive")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(args) -> int:
    work = args.work or tempfile.mkdtemp(prefix="segloop-loop-")
    os.makedirs(work, exist_ok=True)
    n_pool, n_held = args.labels, 3
    write_sample_data(os.path.join(work, "data"), cases=n_pool + n_held, seed=303, progress=None)
    truth = os.path.join(work, "data", "ground_truth")
    pool = [f"case_{i:03d}" for i in range(n_pool)]
    held = [f"case_{i:03d}" for i in range(n_pool, n_pool + n_held)]

    print(f"SegLoop: submitting {n_pool} labels one by one (run budget {args.run_seconds:g} s) ...", flush=True)
    seg = segloop_phase(work, pool, held, truth, args.run_seconds, args.requests)
    report = {"run_budget_s": args.run_seconds,
              "held_out_cases": held, "segloop": seg}
    if not args.skip_upstream:
        print(f"Upstream: one label, then /train with {seg['first_run_epochs']} epochs ...", flush=True)
        report["upstream"] = upstream_phase(work, pool[0], truth, seg["first_run_epochs"])
        segloop_first = seg["curve"][0]["seconds_to_serve"]
        report["loop_time_ratio_first_label"] = round(segloop_first / report["upstream"]["seconds_label_to_model"], 3)
    report["infer_latency_ratio_training_over_idle"] = round(
        statistics.median(seg["infer_latency_training_s"]) / statistics.median(seg["infer_latency_idle_s"]), 3
    )
    write_result(
        args.out, report,
        "upstream radiology app segmentation_spleen: one label, then a manual POST /train of as many epochs as "
        "SegLoop's first run; /infer latency while idle",
    )
    png = os.path.splitext(args.out)[0] + "_learning_curve.png"
    plot_curve(seg["curve"], png)

    print()
    print(f"{'labels':>6} {'version':>8} {'status':>9} {'s to serve':>11} {'held-out mean Dice':>19}")
    for c in seg["curve"]:
        print(f"{c['labels']:>6} {c['version']:>8} {c['status']:>9} {c['seconds_to_serve']:>11} {c['held_out_dice']['mean']:>19}")
    if "upstream" in report:
        u = report["upstream"]
        print(f"first label -> model serving: SegLoop {seg['curve'][0]['seconds_to_serve']} s (automatic) vs "
              f"upstream {u['seconds_label_to_model']} s (manual /train, {u['epochs']} epochs): "
              f"ratio {report['loop_time_ratio_first_label']} (target <= 0.5)")
    print(f"/infer median latency idle {statistics.median(seg['infer_latency_idle_s'])} s, during training "
          f"{statistics.median(seg['infer_latency_training_s'])} s: ratio "
          f"{report['infer_latency_ratio_training_over_idle']} (target <= 2)")
    print(f"Wrote {args.out} and {png}")
    return 0
