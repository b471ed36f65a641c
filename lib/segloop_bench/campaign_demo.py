"""``segloop-bench campaign-demo``: a sample multi-annotator campaign through the real server, and
its report page.

1. The ``make serve`` sample cases (seed 0), generated with no labels; ``monailabel start_server``
   with ``reads_per_case 2``, ``review true`` and short automatic runs.
2. Two simulated annotators ask ``/activelearning/random`` in turn and submit reads made from the
   ground truth in their own style, so the reads differ the way two people's do:
   ``dr_tight`` draws each organ one voxel inside its boundary on a random share of the boundary
   slices; ``dr_generous`` one voxel outside, and misses every tumour smaller than ``--missed-ml``
   (so cases with small tumours disagree, and wait for adjudication).
3. A reviewer approves every read except the first of ``dr_generous``'s, rejected with a comment;
   the annotator gets it back and resubmits; the server makes each case's STAPLE consensus, or flags
   it for adjudication when the reads disagree, and trains on the consensus.
4. ``segloop report`` writes the page; headless chromium screenshots it.

Writes ``campaign_demo.json`` (the agreement per case and label, the review outcomes, the whole
report, with provenance) and the page (``report/index.html`` and its PNGs) in ``--out`` and the screenshot to ``--screenshot``. The baseline: the agreement of the two
styles with the ground truth itself (what STAPLE can at best recover).
"""

import json
import os
import tempfile
import time
from typing import Dict

import nibabel as nib
import numpy as np
import requests
from scipy import ndimage

from segloop.data.sample import write_sample_data
from segloop.labels import DEFAULT_LABELS
from segloop.metrics.dice import dice_per_label
from segloop_bench.provenance import write_result
from segloop_bench.server import running_server, wait_for

BASELINE = "each annotator style's Dice against the ground truth (what a consensus can at best recover)"


def styled_read(truth: np.ndarray, spacing, style: str, rng: np.random.Generator, missed_ml: float) -> np.ndarray:
    """The ground truth as ``style`` draws it: each organ eroded (tight) or dilated (generous) by one
    voxel in-plane on a random 60% of its slices, and tumours under ``missed_ml`` left out."""
    read = truth.copy()
    plane = np.zeros((3, 3, 1), bool)
    plane[:, :, 0] = ndimage.generate_binary_structure(2, 1)
    for name in ("liver", "spleen", "kidney"):
        value = DEFAULT_LABELS[name]
        mask = truth == value
        changed = ndimage.binary_erosion(mask, plane) if style == "tight" else ndimage.binary_dilation(mask, plane) & (truth == 0)
        slices = rng.uniform(size=truth.shape[2]) < 0.6
        if style == "tight":
            read[mask & ~changed & slices[None, None, :]] = 0
        else:
            read[changed & slices[None, None, :]] = value
    tumours, count = ndimage.label(truth == DEFAULT_LABELS["tumor"])
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for i in range(1, count + 1):
        part = tumours == i
        if part.sum() * voxel_ml < missed_ml:
            host = ndimage.binary_dilation(part, iterations=2) & ~part & (truth != DEFAULT_LABELS["tumor"])
            values = truth[host]
            read[part] = np.bincount(values[values > 0]).argmax() if (values > 0).any() else 0
    return read


def main(args) -> int:
    work = args.work or tempfile.mkdtemp(prefix="segloop-campaign-")
    root = os.path.join(work, "data")
    write_sample_data(root, cases=args.cases, seed=0, labelled=0, progress=None)
    studies, truth_dir = os.path.join(root, "studies"), os.path.join(root, "ground_truth")
    rng = np.random.default_rng(args.seed)
    conf = {"models": "segmentation", "reads_per_case": "2", "review": "true", "agreement_threshold": str(args.threshold),
            "first_run_max_seconds": "30", "retrain_max_seconds": "20"}
    styles = {"dr_tight": "tight", "dr_generous": "generous"}
    outcome: Dict = {"reads": [], "rejected": [], "baseline_dice_vs_truth": {}}
    with running_server(studies, conf=conf, log_path=os.path.join(work, "server.log"),
                        env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}) as server:
        url = server.url

        def submit(who, case):
            img = nib.load(os.path.join(truth_dir, f"{case}.nii.gz"))
            truth = np.asarray(img.dataobj)
            missed = args.missed_ml if styles[who] == "generous" else 0.0
            read = styled_read(truth, img.header.get_zooms()[:3], styles[who], rng, missed).astype(np.uint8)
            outcome["baseline_dice_vs_truth"].setdefault(who, []).append(dice_per_label(read, truth, DEFAULT_LABELS))
            path = os.path.join(work, f"{who}_{case}.nii.gz")
            nib.save(nib.Nifti1Image(read, img.affine), path)
            with open(path, "rb") as f:
                r = requests.put(f"{url}/datastore/label", params={"image": case}, timeout=120,
                                 data={"params": json.dumps({"annotator": who, "client": "campaign-demo"})},
                                 files={"label": (f"{case}.nii.gz", f)})
            r.raise_for_status()
            outcome["reads"].append({"annotator": who, "image": case, "state": r.json()["case"]["state"]})

        def review(case, who, approve, comment=""):
            r = requests.post(f"{url}/segloop/review", timeout=120, json={"image": case, "annotator": who, "approve": approve,
                                                                          "comment": comment, "reviewer": "rev"})
            r.raise_for_status()
            return r.json()

        for _ in range(args.cases):
            for who in styles:
                case = requests.post(f"{url}/activelearning/random", json={"client_id": who}, timeout=120).json().get("id")
                if case:
                    submit(who, case)
            queue = requests.get(f"{url}/segloop/review", timeout=60).json()["queue"]
            for read in queue:
                first_rejection = read["annotator"] == "dr_generous" and not outcome["rejected"]
                if first_rejection:
                    review(read["image"], read["annotator"], False, "boundary drawn too wide: follow the organ edge")
                    outcome["rejected"].append(read["image"])
                    submit("dr_generous", requests.post(f"{url}/activelearning/random", json={"client_id": "dr_generous"},
                                                        timeout=120).json()["id"])
                else:
                    review(read["image"], read["annotator"], True)
            for read in requests.get(f"{url}/segloop/review", timeout=60).json()["queue"]:
                review(read["image"], read["annotator"], True)
        status = lambda: requests.get(f"{url}/segloop/models/segmentation", timeout=60).json()  # noqa: E731
        wait_for(lambda: status()["serving_version"] and not status()["training_run"], 900, 2.0, "a version trained on the consensus labels")
        time.sleep(2)
        report = requests.get(f"{url}/segloop/campaign", timeout=120).json()
        from segloop.reporting.page import write_report

        page = write_report(report, os.path.join(args.out, "report"), source=url, with_json=False)
    from segloop_bench.browser import screenshot_page

    seen = screenshot_page(page, args.screenshot)
    outcome["baseline_dice_vs_truth"] = {
        who: {k: round(float(np.nanmean([d[k] for d in dices])), 4) for k in DEFAULT_LABELS} for who, dices in outcome["baseline_dice_vs_truth"].items()
    }
    result = {"cases": args.cases, "seed": args.seed, "missed_ml": args.missed_ml, "threshold": args.threshold,
              "agreement": report["agreement"], "review": report["review"], "cases_by_state": report["cases"]["by_state"],
              "throughput": report["throughput"], "browser": seen, "outcome": outcome,
              "learning_curve": report["models"]["segmentation"]["learning_curve"], "report": report}
    write_result(os.path.join(args.out, "campaign_demo.json"), result, BASELINE)
    print(json.dumps({"agreement": report["agreement"], "by_state": report["cases"]["by_state"],
                      "baseline": outcome["baseline_dice_vs_truth"], "browser": seen}, indent=1))
    return 0
