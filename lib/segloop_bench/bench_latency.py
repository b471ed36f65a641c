"""``segloop-bench bench latency``: the prompt model's click latency, through HTTP and in-process.

On a trained prompt model (``--studies``, the datastore whose serving model is used) and its held-out
cases, runs the click protocol's first ``--clicks`` clicks (:mod:`segloop.prompts.click_protocol`,
the label sent with each click as the Slicer plugin does):

* ``http``: what a user feels. The real server (``monailabel start_server``, ``--conf models
  prompt``, the default precision) and MONAI Label's own client (``MONAILabelClient.infer``, the
  DeepGrow form the Slicer plugin sends, every click resent): the client's round trip per click
  (request, inference, NIfTI encoding and gzip, download), beside the server task's own time;
* in-process, the zoom-out-zoom-in call alone, once per precision path, the paths interleaved per
  structure so that they share the machine's state:

* ``float32_native``: float32 with PyTorch's own choice of convolution kernel;
* ``float32_onednn``: float32 with every convolution on oneDNN (``segloop.networks.onednn``), what
  ``--conf amp=off`` and a CPU without native bfloat16 get;
* ``bfloat16``: bfloat16 autocast, what ``amp=auto`` gets on a CPU that computes it natively
  (skipped elsewhere).

Writes ``latency.json`` (per path and label: median / max seconds per interaction and Dice after
each click, which must agree between the float32 paths) and ``latency.png`` (median and max per
label and path against the 1 s target).
"""

import os
import tempfile
import time
from typing import Dict, List

import nibabel as nib
import numpy as np
import torch

from segloop.networks.precision import native_bfloat16
from segloop.prompts.click_protocol import case_structures, click_session, first_click
from segloop.prompts.simulation import next_click
from segloop.metrics.dice import dice
from segloop_bench.interactive import build_pipeline, held_out_cases
from segloop_bench.provenance import write_result
from segloop_bench.server import running_server

PATHS = {  # name -> (amp mode, oneDNN convolutions)
    "float32_native": ("off", False),
    "float32_onednn": ("off", True),
    "bfloat16": ("auto", True),
}
TARGET_S = 1.0


def measure(pipeline, cases, labels, clicks: int, paths: List[str], progress=None) -> Dict:
    """Per path and label: the click sessions' latencies and Dice curves."""
    rows: Dict[str, Dict[str, Dict[str, list]]] = {p: {n: {"latency_s": [], "curves": []} for n in labels} for p in paths}
    for image, name, c, target in case_structures(cases, labels, progress):
        for path in paths:
            pipeline.amp, pipeline.onednn = PATHS[path]
            session = click_session(pipeline, image, target, c, clicks)
            rows[path][name]["latency_s"].extend(session["latency_s"])
            rows[path][name]["curves"].append(session["dice"])
    report: Dict = {"paths": {}, "clicks": clicks, "cases": [c["id"] for c in cases], "target_s": TARGET_S}
    for path, per_label in rows.items():
        out = report["paths"][path] = {"labels": {}}
        everything = []
        for name, row in per_label.items():
            if not row["latency_s"]:
                continue
            everything += row["latency_s"]
            out["labels"][name] = {
                "latency_s_median": round(float(np.median(row["latency_s"])), 3),
                "latency_s_max": round(float(np.max(row["latency_s"])), 3),
                "dice_after_clicks": [round(float(v), 4) for v in np.mean(row["curves"], axis=0)],
            }
        out["latency_s_median"] = round(float(np.median(everything)), 3)
        out["latency_s_max"] = round(float(np.max(everything)), 3)
        out["interactions"] = len(everything)
    if "float32_native" in report["paths"]:
        base = report["paths"]["float32_native"]["latency_s_median"]
        report["speedup_of_median_vs_float32_native"] = {
            p: round(base / v["latency_s_median"], 2) for p, v in report["paths"].items() if p != "float32_native"
        }
    return report


def http_sessions(url: str, cases, labels, clicks: int, tmpdir: str, progress=None, with_label: bool = True) -> Dict:
    """Per label: the client's round trip and the server task's time per click, and Dice after each
    click. ``with_label`` False: the clicks alone (the server gives the first click the label under it)."""
    from monailabel.client import MONAILabelClient

    client = MONAILabelClient(url, tmpdir=tmpdir)
    rows: Dict[str, Dict[str, list]] = {n: {"round_trip_s": [], "server_s": [], "curves": []} for n in labels}
    for n, case in enumerate(cases, start=1):
        truth = np.asarray(nib.load(case["label"]).dataobj)
        for name, index in labels.items():
            target = truth == index
            if not target.any():
                continue
            request = {"foreground": [[int(v) for v in first_click(target)]], "background": [], "reset_state": True}
            if with_label:
                request["label"] = name
            prediction, curve = None, []
            for k in range(clicks):
                if k:
                    click = next_click(prediction, target)
                    if click is None:
                        curve.append(curve[-1])
                        continue
                    request["foreground" if click[1] else "background"].append([int(v) for v in click[0]])
                    request["reset_state"] = False
                start = time.perf_counter()
                path, params = client.infer("prompt", case["id"], request)
                rows[name]["round_trip_s"].append(time.perf_counter() - start)
                rows[name]["server_s"].append(float(params["latencies"]["total"]))
                prediction = np.asarray(nib.load(path).dataobj) > 0
                os.unlink(path)
                curve.append(dice(prediction, target))
            rows[name]["curves"].append(curve)
        if progress:
            progress(n, len(cases))
    out: Dict = {"labels": {}}
    everything, server = [], []
    for name, row in rows.items():
        if not row["round_trip_s"]:
            continue
        everything += row["round_trip_s"]
        server += row["server_s"]
        out["labels"][name] = {
            "latency_s_median": round(float(np.median(row["round_trip_s"])), 3),
            "latency_s_max": round(float(np.max(row["round_trip_s"])), 3),
            "server_task_s_median": round(float(np.median(row["server_s"])), 3),
            "dice_after_clicks": [round(float(v), 4) for v in np.mean(row["curves"], axis=0)],
        }
    out.update(
        latency_s_median=round(float(np.median(everything)), 3),
        latency_s_p95=round(float(np.percentile(everything, 95)), 3),
        latency_s_max=round(float(np.max(everything)), 3),
        server_task_s_median=round(float(np.median(server)), 3),
        server_task_s_p95=round(float(np.percentile(server, 95)), 3),
        interactions=len(everything),
    )
    return out


def http_latency(studies: str, cases, labels, clicks: int, progress=None, clicks_only: bool = False) -> Dict:
    """:func:`http_sessions` against a real server on ``studies`` (its serving prompt model, no
    training), after one warm-up click that loads the model; with ``clicks_only`` also the same
    sessions without the label (``clicks_only``: that arm's own figures)."""
    conf = {"models": "prompt", "auto_train": "false"}
    with tempfile.TemporaryDirectory() as tmpdir, running_server(
        studies, conf=conf, log_path=os.path.join(tmpdir, "server.log")
    ) as server:
        http_sessions(server.url, cases[:1], labels, 1, tmpdir)  # warm-up: the server loads the model
        report = http_sessions(server.url, cases, labels, clicks, tmpdir, progress=progress)
        if clicks_only:
            report["clicks_only"] = http_sessions(server.url, cases, labels, clicks, tmpdir, with_label=False)
    report["server_precision"] = "bfloat16" if native_bfloat16(torch.device("cpu")) else "float32_onednn"
    return report


def write_png(report: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = list(report["paths"])
    labels = list(report["paths"][paths[0]]["labels"])
    width = 0.8 / len(paths)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, p in enumerate(paths):
        rows = report["paths"][p]["labels"]
        x = np.arange(len(labels)) + (i - (len(paths) - 1) / 2) * width
        ax.bar(x, [rows[n]["latency_s_max"] for n in labels], width, color=f"C{i}", alpha=0.35)
        ax.bar(x, [rows[n]["latency_s_median"] for n in labels], width, color=f"C{i}", label=f"{p} (median; pale: max)")
    ax.axhline(report["target_s"], color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(np.arange(len(labels)), labels)
    ax.set_ylabel("seconds per click")
    if "http" in report:
        x = np.arange(len(labels)) + (len(paths) / 2 + 0.2) * width
        rows = report["http"]["labels"]
        ax.scatter(x, [rows[n]["latency_s_median"] for n in labels], color="black", marker="s", label="HTTP round trip (median)", zorder=3)
        ax.scatter(x, [rows[n]["latency_s_max"] for n in labels], color="black", marker="^", label="HTTP round trip (max)", zorder=3)
    ax.set_title(f"Prompt model click latency, {torch.get_num_threads()} CPU threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    pipeline, _, labels = build_pipeline(args.studies)
    pipeline.device = torch.device("cpu")
    pipeline.network.to("cpu")
    cases = held_out_cases(args.studies, args.ground_truth, labels, args.cases.split(",") if args.cases else None)
    paths = [p for p in PATHS if p != "bfloat16" or native_bfloat16(torch.device("cpu"))]
    progress = lambda n, total: print(f"progress: {n}/{total} cases", flush=True)  # noqa: E731
    print(f"timing {len(cases)} held-out case(s), {args.clicks} click(s) per structure, paths: {', '.join(paths)}", flush=True)
    measure(pipeline, cases[:1], labels, 1, paths)  # warm-up: first-call allocations and kernel selection
    report = measure(pipeline, cases, labels, args.clicks, paths, progress=progress)
    if not args.skip_http:
        print("timing the same clicks through the real server and MONAI Label's client ...", flush=True)
        report["http"] = http_latency(args.studies, cases, labels, args.clicks, progress)
    os.makedirs(args.out, exist_ok=True)
    json_path, png_path = os.path.join(args.out, "latency.json"), os.path.join(args.out, "latency.png")
    write_result(json_path, report, "float32 with PyTorch's own kernel choice (float32_native), in-process; target 1 s a click")
    write_png(report, png_path)
    for p, row in report["paths"].items():
        per_label = "  ".join(f"{n} {v['latency_s_median']}/{v['latency_s_max']} s" for n, v in row["labels"].items())
        print(f"{p:>15}: median {row['latency_s_median']} s, max {row['latency_s_max']} s  ({per_label})")
    if "http" in report:
        h = report["http"]
        print(f"{'http':>15}: median {h['latency_s_median']} s, max {h['latency_s_max']} s round trip "
              f"(server task median {h['server_task_s_median']} s, {h['server_precision']})")
    print(f"speed-up of the median: {report.get('speedup_of_median_vs_float32_native')}")
    print(f"wrote {json_path} and {png_path}")
    return 0
