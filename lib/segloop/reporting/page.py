"""``segloop report``: the campaign report (``GET /segloop/campaign``, see
``segloop.campaign.report``) as one HTML page with PNG plots, for a campaign lead to open every
morning.

``write_report(report, out)`` writes ``out/index.html``, ``out/report.json`` and the plots
(``throughput.png``, ``review.png``, ``agreement.png``, ``learning_curve.png``, ``effort.png``,
``calibration.png``); a plot with nothing to show yet is replaced by a sentence saying so.
"""

import html
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from segloop.io import atomic_write_json

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return os.path.basename(path)


def _stacked_bars(out: str, name: str, categories: List[str], series: List[tuple], ylabel: str, title: str) -> str:
    """One stacked bar per category; ``series``: (label, colour, {category: value})."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    bottom = np.zeros(len(categories))
    for label, colour, counts in series:
        values = np.array([counts.get(c, 0) for c in categories], float)
        ax.bar(categories, values, bottom=bottom, label=label, color=colour)
        bottom += values
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, os.path.join(out, name))


def plot_throughput(report: Dict, out: str) -> Optional[str]:
    per_day = report["throughput"]["per_day"]
    if not per_day:
        return None
    people = sorted({p for counts in per_day.values() for p in counts})
    series = [(who, COLOURS[i % len(COLOURS)], {d: per_day[d].get(who, 0) for d in per_day}) for i, who in enumerate(people)]
    return _stacked_bars(out, "throughput.png", list(per_day), series, "reads submitted", "Throughput per day and annotator")


def plot_review(report: Dict, out: str) -> Optional[str]:
    people = report["throughput"]["per_annotator"]
    if not people:
        return None
    series = [(label, colour, {n: people[n].get(state, 0) for n in people})
              for state, label, colour in (("approved", "approved", "#2ca02c"), ("waiting", "waiting / not reviewed", "#bbbbbb"),
                                           ("rejected", "rejected (then resubmitted or not)", "#d62728"))]
    return _stacked_bars(out, "review.png", list(people), series, "decisions / reads", "Review outcomes per annotator")


def plot_agreement(report: Dict, out: str) -> Optional[str]:
    cases = report["agreement"]["cases"]
    if not cases:
        return None
    plt = _plt()
    names = sorted({n for a in cases.values() for n in (a.get("mean_dice") or {})})
    ids = sorted(cases)
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [(cases[c].get("mean_dice") or {}).get(name, np.nan) for c in ids]
        ax.bar(np.arange(len(ids)) + i * width, values, width, label=name, color=COLOURS[i % len(COLOURS)])
    threshold = report["rules"]["agreement_threshold"]
    ax.axhline(threshold, color="k", linestyle="--", linewidth=1, label=f"adjudication below {threshold:g}")
    ax.set_xticks(np.arange(len(ids)) + 0.4 - width / 2, [c + (" (flagged)" if cases[c].get("flagged") else "") for c in ids],
                  rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean pairwise Dice")
    ax.set_title("Agreement between reads, per case and label")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, os.path.join(out, "agreement.png"))


def plot_learning(report: Dict, out: str) -> Optional[str]:
    curves = {m: [p for p in r["learning_curve"] if p.get("val_mean_dice") is not None] for m, r in report["models"].items()}
    curves = {m: c for m, c in curves.items() if c}
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for i, (model, points) in enumerate(curves.items()):
        x = [p["labels_seen"] for p in points]
        ax.plot(x, [p["val_mean_dice"] for p in points], "o-", color=COLOURS[i % len(COLOURS)], label=f"{model} (validation mean Dice)")
        for p in points:
            ax.annotate(f"v{p['version']}" + ("" if p["status"] == "promoted" else " kept"), (p["labels_seen"], p["val_mean_dice"]),
                        fontsize=7, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("labels the version had seen")
    ax.set_ylim(0, 1)
    ax.set_title("Learning curve on the campaign's fixed validation cases")
    ax.legend(fontsize=8)
    return _save(fig, os.path.join(out, "learning_curve.png"))


def plot_effort(report: Dict, out: str) -> Optional[str]:
    rows = [(m, v, e) for m, r in report["models"].items() for v, e in r["edit_effort_by_version"].items()]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    labels = [f"{m} v{v}\n({e['submissions']} reads)" for m, v, e in rows]
    changed = [e.get("median_changed_voxels_fraction") or 0 for _, _, e in rows]
    dice = [e.get("median_dice_proposal_vs_final") or 0 for _, _, e in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, dice, 0.4, label="median Dice, proposal vs submitted", color="#2ca02c")
    ax2 = ax.twinx()
    ax2.bar(x + 0.2, changed, 0.4, label="median share of voxels changed", color="#d62728")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax2.set_ylabel("voxels changed")
    ax.set_title("Edit effort per model version (lower change = the model helps more)")
    handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=7, loc="upper left")
    return _save(fig, os.path.join(out, "effort.png"))


def plot_calibration(report: Dict, out: str) -> Optional[str]:
    rows = [(m, c) for m, r in report["models"].items() for c in r["calibration"]]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [c.get("ece_foreground_before") or 0 for _, c in rows], 0.4, label="before temperature scaling", color="#7f7f7f")
    ax.bar(x + 0.2, [c.get("ece_foreground_after") or 0 for _, c in rows], 0.4, label="after (what /infer serves)", color="#1f77b4")
    ax.set_xticks(x, [f"{m} v{c['version']}" for m, c in rows], fontsize=7)
    ax.set_ylabel("expected calibration error\n(foreground voxels)")
    ax.set_title("Calibration per model version")
    ax.legend(fontsize=8)
    return _save(fig, os.path.join(out, "calibration.png"))


def _table(headers: List[str], rows: List[List[Any]]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


SECTIONS = [
    ("Throughput", "throughput.png", plot_throughput),
    ("Review", "review.png", plot_review),
    ("Agreement", "agreement.png", plot_agreement),
    ("Learning curve", "learning_curve.png", plot_learning),
    ("Edit effort", "effort.png", plot_effort),
    ("Calibration", "calibration.png", plot_calibration),
]

STYLE = """body{font-family:sans-serif;margin:24px;max-width:1100px;color:#222}h1{margin-bottom:4px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:18px}.card{border:1px solid #ddd;border-radius:6px;padding:10px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f2f2f2}.flag{color:#b00;font-weight:bold}.muted{color:#777}img{max-width:100%}"""


def write_report(report: Dict[str, Any], out: str, source: str = "", with_json: bool = True) -> str:
    """Write the page and its plots in ``out`` (and ``report.json`` unless ``with_json`` is off: a
    benchmark keeps the report inside its own result file, with provenance); returns the path of
    ``index.html``."""
    os.makedirs(out, exist_ok=True)
    if with_json:
        atomic_write_json(os.path.join(out, "report.json"), report)
    cases = report["cases"]
    people = report["throughput"]["per_annotator"]
    flagged = report["agreement"]["flagged"]
    rules = report["rules"]
    parts = [
        f"<h1>SegLoop campaign</h1><p class='muted'>{html.escape(source)} &middot; generated {html.escape(report['generated'])}"
        f" &middot; {rules['reads_per_case']} read(s) per case, review {'on' if rules['review'] else 'off'}</p>",
        "<p><b>{final}</b> of {images} cases have a final label; ".format(**cases)
        + ", ".join(f"{html.escape(k)}: {v}" for k, v in sorted(cases["by_state"].items()))
        + (f"; <span class='flag'>waiting for adjudication: {', '.join(map(html.escape, flagged))}</span>" if flagged else "")
        + (f"; reads waiting for review: {report['review']['waiting']}" if rules["review"] else "") + "</p>",
        _table(["annotator", "cases read", "submissions", "approved", "rejected", "waiting", "automatic", "prompts", "manual",
                "median time (s)"],
               [[n, p.get("reads", 0), p.get("submissions", 0), p.get("approved", 0), p.get("rejected", 0), p.get("waiting", 0),
                 p.get("tool_automatic", 0),
                 p.get("tool_prompts", 0), p.get("tool_manual", 0), p.get("median_time_s")] for n, p in people.items()]),
        "<div class='grid'>",
    ]
    for title, _, draw in SECTIONS:
        name = draw(report, out)
        body = f"<img src='{name}' alt='{html.escape(title)}'>" if name else "<p class='muted'>Nothing to show yet.</p>"
        parts.append(f"<div class='card'><h3>{html.escape(title)}</h3>{body}</div>")
    parts.append("</div>")
    for model, r in report["models"].items():
        rows = [[p["version"], p["status"], p["labels_seen"], p["val_mean_dice"], "yes" if p["serving"] else ""] for p in r["learning_curve"]]
        parts.append(f"<h3>{html.escape(model)}: versions</h3>" + _table(["version", "status", "labels seen", "validation mean Dice", "serving"], rows))
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>SegLoop campaign</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    path = os.path.join(out, "index.html")
    with open(path + ".tmp", "w") as f:
        f.write(page)
    os.replace(path + ".tmp", path)
    return path


def fetch_report(server: str, token: str = "") -> Dict[str, Any]:
    """``GET /segloop/campaign`` of a running server (with a bearer token when auth is on)."""
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(server.rstrip("/") + "/segloop/campaign", headers=headers, timeout=120)
    if r.status_code != 200:
        raise ValueError(f"{server} answered {r.status_code}: {r.text[:300]}")
    return json.loads(r.text)
