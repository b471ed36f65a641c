"""Interactive evaluation of the prompt model (``segloop eval interactive``).

Protocol (IMIS-Bench / SAM-Med3D style), per held-out case and label, on the image's own grid:

* **clicks**: click 1 at the centre of the largest component of the structure, every next click
  at the centre of the largest error region of the previous result (positive in a miss, negative
  in a false positive), the previous result sent back as the previous mask, and the label name
  sent with the clicks as the upstream Slicer plugin does; Dice after each of 1..N clicks;
* **NoC@85 / NoC@90**: the first click count reaching Dice 0.85 / 0.90 (``None``: not within N);
* **box**: the structure's bounding box alone, no label; **text**: a synonym of the label as free
  text alone (resolved by the text matcher);
* **latency**: seconds per interaction of the zoom-out-zoom-in pipeline, model loaded.

Writes ``interactive.json`` and ``interactive.png`` (mean Dice against clicks, one line per label).
"""

import itertools
import json
import os
import time
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from monai.transforms import LoadImage

from segloop.evaluation.metrics import dice
from segloop.prompts.encoding import Prompt
from segloop.prompts.simulation import bounding_box, largest_component, next_click, region_centre
from segloop.prompts.text import LabelMatcher
from segloop.prompts.zoom import ZoomOutZoomIn

NOC_LEVELS = (0.85, 0.90)


def load_case(image_path: str, label_path: str):
    """The image as a MetaTensor [1, X, Y, Z] (HU, stored orientation) and its label map [X, Y, Z]."""
    image = LoadImage(image_only=True, ensure_channel_first=True)(image_path)
    label = np.asarray(LoadImage(image_only=True)(label_path)).astype(np.int64)
    return image, label


def click_session(
    pipeline: ZoomOutZoomIn, image, target: np.ndarray, class_index: int, clicks: int
) -> Dict[str, List[float]]:
    """Dice and latency after each of ``clicks`` simulated clicks on one structure."""
    prompt = Prompt(label=class_index)
    prediction = np.zeros(target.shape, bool)
    previous: Optional[np.ndarray] = None
    scores, latencies = [], []
    for k in range(clicks):
        click = (region_centre(largest_component(target)), True) if k == 0 else next_click(prediction, target)
        if click is None:  # perfect already
            scores.append(scores[-1])
            continue
        (prompt.positive if click[1] else prompt.negative).append(click[0])
        start = time.time()
        prediction, _ = pipeline(image, prompt, previous)
        latencies.append(time.time() - start)
        previous = prediction.astype(np.float32)
        scores.append(dice(prediction, target))
    return {"dice": scores, "latency_s": latencies}


def number_of_clicks(curve: Sequence[float], level: float) -> Optional[int]:
    return next((k + 1 for k, d in enumerate(curve) if d >= level), None)


def _class_indices(labels: Mapping[str, int]) -> Dict[str, int]:
    return {name: c for c, name in enumerate(sorted(labels, key=labels.get), start=1)}


def case_structures(cases: Sequence[Dict[str, str]], labels: Mapping[str, int], progress=None):
    """Each structure present in ``cases``: ``(image, label name, class index, target mask)``;
    ``progress(n, total)`` after each case."""
    classes = _class_indices(labels)
    for n, case in enumerate(cases, start=1):
        image, truth = load_case(case["image"], case["label"])
        for name, c in classes.items():
            target = truth == labels[name]
            if target.any():
                yield image, name, c, target
        if progress:
            progress(n, len(cases))


def score_prompt_weights(network, datalist, labels, roi_size, coarse_spacing, fine_spacing, hu_window, device, amp="auto"):
    """Promotion score: per label, mean Dice of one click (with the label) and of the label alone."""
    pipeline = ZoomOutZoomIn(network, roi_size, coarse_spacing, fine_spacing, hu_window, device, amp=amp)
    per_label: Dict[str, List[float]] = {}
    for image, name, c, target in case_structures(datalist, labels):
        one_click = click_session(pipeline, image, target, c, 1)["dice"][0]
        label_only, _ = pipeline(image, Prompt(label=c))
        per_label.setdefault(name, []).extend([one_click, dice(label_only, target)])
    scores = {name: float(np.mean(v)) for name, v in per_label.items()}
    scores["mean"] = float(np.mean(list(scores.values()))) if scores else float("nan")
    return scores


def evaluate_interactive(
    pipeline: ZoomOutZoomIn,
    matcher: LabelMatcher,
    cases: Sequence[Dict[str, str]],
    labels: Mapping[str, int],
    clicks: int = 10,
    progress=None,
) -> Dict:
    """The full report over ``cases`` (each ``{"id", "image", "label"}``); see the module docstring."""
    classes = _class_indices(labels)
    rows: Dict[str, Dict[str, list]] = {name: {"curves": [], "box": [], "text": [], "latency_s": []} for name in labels}
    for image, name, c, target in case_structures(cases, labels, progress):
        session = click_session(pipeline, image, target, c, clicks)
        row = rows[name]
        row["curves"].append(session["dice"])
        row["latency_s"].extend(session["latency_s"])
        lo, hi = bounding_box(target)
        boxed, _ = pipeline(image, Prompt(box=(tuple(map(float, lo)), tuple(map(float, hi)))))
        row["box"].append(dice(boxed, target))
        phrase = matcher.vocabulary[name]["synonyms"][0] if matcher.vocabulary[name]["synonyms"] else name
        texted, _ = pipeline(image, Prompt(label=classes[matcher.resolve(phrase)]))
        row["text"].append(dice(texted, target))
    report: Dict = {"cases": [c["id"] for c in cases], "clicks": clicks, "labels": {}}
    for name, row in rows.items():
        if not row["curves"]:
            continue
        curves = np.asarray(row["curves"])
        noc = {f"noc@{int(level * 100)}": [number_of_clicks(c, level) for c in curves] for level in NOC_LEVELS}
        report["labels"][name] = {
            "dice_after_clicks": [round(float(v), 4) for v in curves.mean(0)],
            **{key: _mean_noc(values, clicks) for key, values in noc.items()},
            **{f"{key}_per_case": values for key, values in noc.items()},
            "box_dice": round(float(np.mean(row["box"])), 4),
            "text_dice": round(float(np.mean(row["text"])), 4),
            "latency_s_median": round(float(np.median(row["latency_s"])), 3),
            "latency_s_max": round(float(np.max(row["latency_s"])), 3),
        }
    return report


def _mean_noc(values: Sequence[Optional[int]], clicks: int) -> Optional[float]:
    """Mean NoC, a case that never reached the level counting as ``clicks`` (the usual convention)."""
    return round(float(np.mean([clicks if v is None else v for v in values])), 2) if values else None


def write_report(report: Dict, out_dir: str) -> Dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "interactive.json")
    with open(json_path, "w") as f:
        json.dump(report, f, indent=2)
    fig, ax = plt.subplots(figsize=(6, 4))
    for (name, row), marker in zip(report["labels"].items(), itertools.cycle("osD^v")):  # markers tell overlapping curves apart
        curve = row["dice_after_clicks"]
        reached = [v for v in row["noc@90_per_case"] if v is not None]
        noc = f"{row['noc@90']:.2f}" if reached else "not reached"
        legend = f"{name} (NoC@90 {noc}, box {row['box_dice']:.2f}, text {row['text_dice']:.2f})"
        ax.plot(range(1, len(curve) + 1), curve, marker=marker, label=legend)
    ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("simulated clicks")
    ax.set_ylabel("mean Dice on held-out cases")
    ax.set_ylim(0, 1)
    ax.set_title(f"Prompt model: Dice after each click ({len(report['cases'])} cases)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    png_path = os.path.join(out_dir, "interactive.png")
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return {"json": json_path, "png": png_path}


def held_out_cases(
    studies: str, ground_truth: str, labels: Mapping[str, int], case_ids: Optional[Sequence[str]] = None
) -> List[Dict[str, str]]:
    """Cases with ground truth, by default those without a final label in the datastore (never trained on)."""
    from segloop.datastore import SegLoopDatastore

    datastore = SegLoopDatastore(studies, labels=labels)
    labelled = set(datastore.get_labeled_images())
    ids = list(case_ids) if case_ids else sorted(
        f[: -len(".nii.gz")] for f in os.listdir(ground_truth) if f.endswith(".nii.gz") and f[: -len(".nii.gz")] not in labelled
    )
    cases = []
    for case_id in ids:
        image, label = datastore.get_image_uri(case_id), os.path.join(ground_truth, f"{case_id}.nii.gz")
        if not image or not os.path.isfile(label):
            raise SystemExit(f"case {case_id!r}: image or ground truth missing")
        cases.append({"id": case_id, "image": image, "label": label})
    if not cases:
        raise SystemExit("no held-out cases: every case with ground truth is labelled in the datastore; pass --cases")
    return cases


def build_pipeline(studies: str, conf: Optional[Mapping[str, str]] = None, name: str = "prompt"):
    """The serving prompt model of ``studies`` as the server would load it, plus its text matcher."""
    import torch

    from segloop.evaluation.training import build_task_config

    config = build_task_config(studies, conf, name)
    if not os.path.exists(config.registry.serving_path):
        raise SystemExit(f"the {name} model of {studies} is not trained yet (no {config.registry.serving_path})")
    checkpoint = torch.load(config.registry.serving_path, map_location="cpu", weights_only=True)
    network = config.network
    network.load_state_dict(checkpoint.get("model", checkpoint))
    network.to(config.device).eval()
    preset = config.preset
    pipeline = ZoomOutZoomIn(
        network, preset.roi_size, preset.coarse_spacing, preset.fine_spacing, config.options.hu_window, config.device,
        amp=config.options.amp,
    )
    return pipeline, config.matcher, config.labels


def main(args) -> int:
    pipeline, matcher, labels = build_pipeline(args.studies)
    cases = held_out_cases(args.studies, args.ground_truth, labels, args.cases.split(",") if args.cases else None)
    print(f"evaluating {len(cases)} held-out case(s), {args.clicks} clicks per structure", flush=True)
    report = evaluate_interactive(
        pipeline, matcher, cases, labels, clicks=args.clicks,
        progress=lambda n, total: print(f"progress: {n}/{total} cases", flush=True),
    )
    paths = write_report(report, args.out)
    for name, row in report["labels"].items():
        print(
            f"{name:>8}: Dice after 1/3/{args.clicks} clicks {row['dice_after_clicks'][0]:.3f}/"
            f"{row['dice_after_clicks'][min(2, args.clicks - 1)]:.3f}/{row['dice_after_clicks'][-1]:.3f}  "
            f"NoC@85 {row['noc@85']}  NoC@90 {row['noc@90']}  box {row['box_dice']:.3f}  text {row['text_dice']:.3f}  "
            f"latency median {row['latency_s_median']} s"
        )
    print(f"wrote {paths['json']} and {paths['png']}")
    return 0
