"""The campaign report: what a campaign lead reads every morning, as JSON (``GET /segloop/campaign``;
``segloop report`` draws it as an HTML page).

* ``throughput``: reads per annotator (with submissions, tools, review decisions received and
  reads waiting) and per day (UTC), and the final labels;
* ``review``: reads per current state, and every decision made (per reviewer; a rejection that a
  resubmission answered still counts);
* ``agreement``: per case with two or more reads, the mean pairwise Dice and HD95 per label and
  whether it waits for adjudication;
* per model (``models``): the learning curve (each version's validation mean Dice and per-label
  Dice on the campaign's fixed validation set, the labels it had seen, its status), the edit
  effort per version (how much annotators changed that version's proposals) and calibration
  (expected calibration error per version, before and after temperature scaling).
"""

import time
from collections import Counter, defaultdict
from typing import Any, Dict, List, Mapping

from segloop.campaign.reads import Reads
from segloop.campaign.registry import COMPLETED


def _day(ts: Any) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(float(ts))) if ts else "unknown"


def learning_curve(history: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    curve = []
    for v in history:
        if v.get("status") not in COMPLETED:
            continue
        dice = v.get("val_dice") or {}
        curve.append({
            "version": v.get("version"), "status": v.get("status"), "created": v.get("created"),
            "labels_seen": len(v.get("labels_seen") or {}), "validation_cases": len(v.get("validation_cases") or []),
            "val_mean_dice": dice.get("mean"), "val_dice": {k: d for k, d in dice.items() if k != "mean"},
            "serving": bool(v.get("serving")),
        })
    return curve


def calibration_by_version(history: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for v in history:
        cal = v.get("calibration")
        if cal:
            out.append({"version": v.get("version"), "temperature": cal.get("temperature"),
                        "ece_before": (cal.get("before") or {}).get("ece"), "ece_after": (cal.get("after") or {}).get("ece"),
                        "ece_foreground_before": (cal.get("before") or {}).get("ece_foreground"),
                        "ece_foreground_after": (cal.get("after") or {}).get("ece_foreground")})
    return out


def campaign_report(reads: Reads, loops: Mapping[str, Any]) -> Dict[str, Any]:
    """The report's JSON from the campaign's reads, final labels and each model's loop
    (``registry.history()``, ``effort.summary()``)."""
    datastore = reads.datastore_fn()
    all_reads = reads.all_reads()
    per_annotator: Dict[str, Counter] = defaultdict(Counter)
    per_day: Dict[str, Counter] = defaultdict(Counter)
    by_reviewer: Dict[str, Counter] = defaultdict(Counter)
    seconds: Dict[str, List[float]] = defaultdict(list)
    for r in all_reads:
        who = r["annotator"]
        per_annotator[who]["reads"] += 1
        per_annotator[who]["submissions"] += int(r.get("submissions", 1))
        per_annotator[who][f"tool_{r.get('tool', 'manual')}"] += 1
        if r.get("state", "submitted") == "submitted":
            per_annotator[who]["waiting"] += 1
        per_day[_day(r.get("submitted_ts") or r.get("ts"))][who] += 1
        for event in r.get("reviews", []):  # every decision, also those a resubmission answered
            by_reviewer[event["reviewer"]][event["decision"]] += 1
            per_annotator[who][event["decision"]] += 1
        if isinstance(r.get("time_spent_s"), (int, float)):
            seconds[who].append(float(r["time_spent_s"]))
    for who, values in seconds.items():
        per_annotator[who]["median_time_s"] = sorted(values)[len(values) // 2]
    images = datastore.list_images()
    labelled = datastore.get_labeled_images()
    agreement = {}
    for image_id in images:
        record = (datastore.get_image_info(image_id) or {}).get("segloop_agreement")
        if record:
            agreement[image_id] = {k: record.get(k) for k in ("reads", "mean_dice", "mean_hd95_mm", "min_mean_dice", "flagged")}
    states = Counter(reads.case_state(i)["state"] for i in images)
    models = {}
    for name, loop in loops.items():
        history = loop.registry.history()
        models[name] = {
            "serving_version": loop.registry.serving(),
            "learning_curve": learning_curve(history),
            "edit_effort_by_version": loop.effort.summary(),
            "calibration": calibration_by_version(history),
        }
    return {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rules": {"reads_per_case": reads.rules.reads_per_case, "review": reads.rules.review,
                  "agreement_threshold": reads.rules.agreement_threshold},
        "cases": {"images": len(images), "final": len(labelled), "by_state": dict(states)},
        "throughput": {
            "per_annotator": {k: dict(v) for k, v in sorted(per_annotator.items())},
            "per_day": {day: dict(v) for day, v in sorted(per_day.items())},
        },
        "review": {
            "states": dict(Counter(r.get("state", "submitted") for r in all_reads)),
            "decisions": dict(Counter(e["decision"] for r in all_reads for e in r.get("reviews", []))),
            "per_reviewer": {k: dict(v) for k, v in sorted(by_reviewer.items())},
            "waiting": len([r for r in all_reads if r.get("state") == "submitted"]) if reads.rules.review else 0,
        },
        "agreement": {"cases": agreement, "flagged": sorted(c for c, a in agreement.items() if a.get("flagged"))},
        "models": models,
    }
