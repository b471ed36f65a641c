"""``segloop-bench summarize prompt-seeds``: issue-21 target figures over several ``bench prompt`` runs.

Each run is one training seed of the same recipe on the same generated cases (``interactive.json``
in its own folder). For every target measure this writes the per-seed values, their mean and
standard deviation, the target and whether the mean meets it; baselines sit beside the measures
they bound. Measures (held-out cases, per structure type; ``@k``: Dice after k clicks):

* ``clicks_only@1`` per organ (liver, spleen, kidney) and its margin over ``baseline_ball``;
* ``novel@3``: clicks only on structures never labelled, beside ``baseline_ball_oracle``;
* ``clicks_only_noc@90`` per organ: ``None`` ("not reached") where a held-out case never reached
  0.9 within the run's clicks, and then the target is not met;
* ``gain_1_to_5``: Dice after 5 clicks minus after 1, averaged over the structure types not
  already at 0.9 after one click, for each click arm on its own;
* ``text``: free phrases through the sentence embeddings, organs;
* ``latency_http_p95``: the click protocol through the real server and client, with the label
  and (where the run timed it) without it;
* ``clicks_only_agnostic@1``: beside ``clicks_only@1``, the model's answer when the server does not
  give the first click the label under it.
"""

import json
import os
from typing import Dict, List, Sequence

import numpy as np

from segloop_bench.provenance import write_result

ORGANS = ("liver", "spleen", "kidney")
TARGETS = {
    "clicks_only@1": (">=", 0.85),
    "clicks_only@1_minus_ball": (">=", 0.2),
    "novel@3": (">=", 0.8),
    "clicks_only_noc@90": ("<=", 5),
    "gain_1_to_5": (">=", 0.05),
    "text": (">=", 0.85),
    "latency_http_p95_s": ("<=", 1.0),
}


def figures(report: Dict) -> Dict[str, Dict[str, float]]:
    """The target measures of one run's ``interactive.json``: ``{measure: {structure or arm: value}}``."""
    rows, novel = report["labels"], report.get("novel_structures", {})
    at = lambda curve, k: curve[min(k, len(curve)) - 1]  # noqa: E731
    out: Dict[str, Dict[str, float]] = {
        "clicks_only@1": {o: at(rows[o]["clicks_only"]["dice_after_clicks"], 1) for o in ORGANS},
        "baseline_ball": {o: rows[o]["baseline_ball_dice"] for o in ORGANS},
        # None where a held-out case never reached 0.9 within the run's clicks: the usual convention
        # counts it as the click budget, which would read as "5 <= 5, met" with a budget of 5.
        "clicks_only_noc@90": {
            o: None if None in rows[o]["clicks_only"]["noc@90_per_case"] else rows[o]["clicks_only"]["noc@90"] for o in ORGANS
        },
        "text": {o: rows[o]["text_dice"] for o in ORGANS},
        "label_and_clicks@1": {o: at(rows[o]["label_and_clicks"]["dice_after_clicks"], 1) for o in ORGANS},
        "label_only": {o: rows[o]["label_only_dice"] for o in ORGANS},
        "novel@3": {n: at(r["clicks_only"]["dice_after_clicks"], 3) for n, r in novel.items()},
        "baseline_ball_oracle": {n: r["baseline_ball_oracle_dice"] for n, r in novel.items()},
    }
    out["clicks_only@1_minus_ball"] = {o: out["clicks_only@1"][o] - out["baseline_ball"][o] for o in ORGANS}
    for optional in ("box_2d_dice", "lasso_dice", "baseline_extruded_slice_oracle_dice"):
        if all(optional in rows[o] for o in ORGANS):
            out[optional.replace("_dice", "")] = {o: rows[o][optional] for o in ORGANS}
    if all("clicks_only_agnostic" in rows[o] for o in ORGANS):  # the model's class-agnostic answer
        out["clicks_only_agnostic@1"] = {o: at(rows[o]["clicks_only_agnostic"]["dice_after_clicks"], 1) for o in ORGANS}
    arms = [a for a in ("clicks_only", "clicks_only_agnostic", "label_and_clicks") if all(a in rows[o] for o in ORGANS)]
    curves = {f"{arm}:{o}": rows[o][arm]["dice_after_clicks"] for arm in arms for o in ORGANS}
    curves.update({f"clicks_only:{n}": r["clicks_only"]["dice_after_clicks"] for n, r in novel.items()})
    gains: Dict[str, List[float]] = {}
    for key, curve in curves.items():
        if len(curve) >= 5 and curve[0] < 0.9:
            gains.setdefault(key.split(":")[0], []).append(curve[4] - curve[0])
    out["gain_1_to_5"] = {arm: float(np.mean(values)) for arm, values in gains.items()}
    if "latency_http" in report:
        http = {"label_and_clicks": report["latency_http"]}
        if "clicks_only" in report["latency_http"]:
            http["clicks_only"] = report["latency_http"]["clicks_only"]
        out["latency_http_p95_s"] = {arm: h["latency_s_p95"] for arm, h in http.items()}
        out["latency_http_median_s"] = {arm: h["latency_s_median"] for arm, h in http.items()}
        out["server_task_p95_s"] = {arm: h["server_task_s_p95"] for arm, h in http.items()}
    return out


def summarize(reports: Sequence[Dict]) -> Dict:
    """Per measure and structure: the seeds' values, mean, sd; per target measure whether every
    structure's mean meets it."""
    per_run = [figures(r) for r in reports]
    summary: Dict = {"seeds": [r["training"]["request"].get("seed") for r in reports], "measures": {}}
    for measure in per_run[0]:
        keys = [k for k in per_run[0][measure] if all(k in run.get(measure, {}) for run in per_run)]
        entry = {}
        for key in keys:
            raw = [run[measure][key] for run in per_run]
            if any(v is None for v in raw):  # not reached in some run
                entry[key] = {"values": raw, "mean": None, "sd": None}
                continue
            values = [float(v) for v in raw]
            entry[key] = {"values": [round(v, 4) for v in values], "mean": round(float(np.mean(values)), 4),
                          "sd": round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else None}
        if measure in TARGETS:
            sense, bound = TARGETS[measure]
            met = [e["mean"] is not None and ((e["mean"] >= bound) if sense == ">=" else (e["mean"] <= bound)) for e in entry.values()]
            entry["target"] = {"bound": f"{sense} {bound}", "met": bool(met) and all(met)}
        summary["measures"][measure] = entry
    return summary


def main(args) -> int:
    reports = []
    for folder in args.runs:
        with open(os.path.join(folder, "interactive.json")) as f:
            reports.append(json.load(f))
    summary = summarize(reports)
    summary["runs"] = [{"folder": folder, "commit": r["provenance"]["commit"], "dirty": r["provenance"]["dirty"],
                        "training_commit": r["training"].get("provenance", {}).get("commit", r["provenance"]["commit"]),
                        "iterations": r["training"]["iterations"]} for folder, r in zip(args.runs, reports)]
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "summary.json")
    write_result(path, summary, "baseline_ball (clicks), baseline_ball_oracle (novel structures), "
                 "baseline_extruded_slice_oracle (2D box, lasso): see each run's interactive.json")
    for measure, entry in summary["measures"].items():
        target = entry.get("target")
        cells = ", ".join(
            f"{k} " + ("not reached" if v["mean"] is None else f"{v['mean']:.3f}±{v['sd'] or 0:.3f}") for k, v in entry.items() if k != "target"
        )
        print(f"{measure:>28}: {cells}" + (f"   target {target['bound']}: {'met' if target['met'] else 'NOT met'}" if target else ""))
    print(f"wrote {path}")
    return 0
