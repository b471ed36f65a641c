"""``segloop bench latency``: the prompt model's click latency under each CPU precision path, side by side.

On a trained prompt model (``--studies``, the datastore whose serving model is used) and its held-out
cases, runs the interactive protocol's first ``--clicks`` clicks (``segloop.evaluation.interactive``)
on every case and label once per precision path, the paths interleaved per structure so that they
share the machine's state:

* ``float32_native``: float32 with PyTorch's own choice of convolution kernel;
* ``float32_onednn``: float32 with every convolution on oneDNN (``segloop.networks.onednn``), what
  ``--conf amp=off`` and a CPU without native bfloat16 get;
* ``bfloat16``: bfloat16 autocast, what ``amp=auto`` gets on a CPU that computes it natively
  (skipped elsewhere).

Writes ``latency.json`` (per path and label: median / max seconds per interaction and Dice after
each click, which must agree between the float32 paths) and ``latency.png`` (median and max per
label and path against the 1 s target).
"""

import json
import os
import platform
from typing import Dict, List

import numpy as np
import torch

from segloop.evaluation.interactive import build_pipeline, case_structures, click_session, held_out_cases
from segloop.networks.precision import native_bfloat16

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
    ax.set_title(f"Prompt model click latency, {report['machine']['torch_threads']} CPU threads")
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
    print(f"timing {len(cases)} held-out case(s), {args.clicks} click(s) per structure, paths: {', '.join(paths)}", flush=True)
    measure(pipeline, cases[:1], labels, 1, paths)  # warm-up: first-call allocations and kernel selection
    report = measure(
        pipeline, cases, labels, args.clicks, paths, progress=lambda n, total: print(f"progress: {n}/{total} cases", flush=True)
    )
    report["machine"] = {
        "cpu_threads": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_bfloat16": native_bfloat16(torch.device("cpu")),
        "platform": platform.platform(),
        "torch": torch.__version__,
    }
    os.makedirs(args.out, exist_ok=True)
    json_path, png_path = os.path.join(args.out, "latency.json"), os.path.join(args.out, "latency.png")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    write_png(report, png_path)
    for p, row in report["paths"].items():
        per_label = "  ".join(f"{n} {v['latency_s_median']}/{v['latency_s_max']} s" for n, v in row["labels"].items())
        print(f"{p:>15}: median {row['latency_s_median']} s, max {row['latency_s_max']} s  ({per_label})")
    print(f"speed-up of the median: {report.get('speedup_of_median_vs_float32_native')}")
    print(f"wrote {json_path} and {png_path}")
    return 0
