"""Training geometry planned from a dataset fingerprint (nnU-Net's rule-based planning, CPU-aware).

Given a network preset (its compute budget: the voxels of one window and the finest spacing it
can afford) and the fingerprint of the labelled cases (``segloop.planning.fingerprint``):

* **target spacing**: fine enough that the thinnest tenth of the smallest structure's instances
  still spans ``MIN_VOXELS_ACROSS`` voxels (so a tumour is more than a speck), never finer than the
  preset's ``finest_spacing_mm`` (the budget) nor than the data's median spacing on that axis
  (no invented resolution), and never coarser than the preset's own spacing;
* **window (roi) size**: the preset's voxel count, shaped like the median case at that spacing
  (a thin axis gets fewer voxels), rounded to the network's size multiple;
* **intensity window**: the 0.5 and 99.5 percentiles of the labelled voxels (nnU-Net's CT
  normalisation), mapped to [0, 1].

A plan is a plain dict written next to the model (``plan.json``); every version record carries
its geometry and reasons (``geometry``), so a served version says what it was trained at.
"""

import json
import logging
import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from segloop.io import atomic_write_json
from segloop.networks import NetworkPreset, dynunet_topology
from segloop.planning.fingerprint import dataset_fingerprint

logger = logging.getLogger(__name__)

PLAN_VERSION = 1
MIN_VOXELS_ACROSS = 6.0  # voxels across the thinnest 10% of the smallest structure's instances
SPACING_DECIMALS = 2


def _round_multiple(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def planned_spacing(fingerprint: Mapping, preset: NetworkPreset) -> List[float]:
    """Target spacing (mm per axis): see the module doc."""
    coarsest = max(preset.target_spacing)
    thinnest = [s["thinnest_mm"]["p10"] for s in fingerprint["structures"].values() if s["cases"]]
    wanted = min(thinnest) / MIN_VOXELS_ACROSS if thinnest else coarsest
    isotropic = min(coarsest, max(preset.finest_spacing_mm, wanted))
    return [round(max(isotropic, float(median)), SPACING_DECIMALS) for median in fingerprint["spacing_mm"]]


def planned_roi(fingerprint: Mapping, spacing: Sequence[float], preset: NetworkPreset) -> List[int]:
    """Window size (voxels per axis): the preset's voxel budget shaped like the median case."""
    budget = math.prod(preset.roi_size)
    extent = [max(size / step, preset.size_multiple) for size, step in zip(fingerprint["size_mm"], spacing)]
    scale = (budget / math.prod(extent)) ** (1 / 3)
    roi = [_round_multiple(v * scale, preset.size_multiple) for v in extent]
    while math.prod(roi) > budget * 1.15:  # rounding up on every axis can overshoot the budget
        axis = max(range(3), key=lambda i: roi[i])
        roi[axis] -= preset.size_multiple
    return roi


def plan_training(fingerprint: Mapping, preset: NetworkPreset) -> Dict:
    """The plan for ``preset`` on a dataset with ``fingerprint``: geometry, intensities and why."""
    spacing = planned_spacing(fingerprint, preset)
    roi = planned_roi(fingerprint, spacing, preset)
    hu = fingerprint["foreground_hu"]
    window = [hu["percentile_00_5"], hu["percentile_99_5"]]
    if not window[0] < window[1]:
        window = None
    smallest = min(fingerprint["structures"].items(), key=lambda kv: kv[1]["thinnest_mm"]["p10"], default=None)
    plan = {
        "version": PLAN_VERSION,
        "network": preset.name,
        "target_spacing": spacing,
        "roi_size": roi,
        "hu_window": window,
        "why": {
            "smallest_structure": smallest[0] if smallest else None,
            "smallest_thinnest_p10_mm": smallest[1]["thinnest_mm"]["p10"] if smallest else None,
            "min_voxels_across": MIN_VOXELS_ACROSS,
            "median_spacing_mm": list(fingerprint["spacing_mm"]),
            "median_size_mm": list(fingerprint["size_mm"]),
            "finest_spacing_mm": preset.finest_spacing_mm,
            "window_voxels_budget": math.prod(preset.roi_size),
        },
        "fingerprint": dict(fingerprint),
    }
    if preset.name.startswith("dynunet"):
        kernels, strides = dynunet_topology(roi, spacing)
        plan["dynunet"] = {"kernel_size": kernels, "strides": strides}
    return plan


PLAN_FILE = "plan.json"
MAX_FINGERPRINT_CASES = 16  # a larger campaign is fingerprinted on an even sample of its labels
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def labelled_pairs(studies: str) -> List[Tuple[str, str]]:
    """(image, final label) paths of a local datastore folder, sorted by case id."""
    final = os.path.join(studies, "labels", "final")
    if not os.path.isdir(final):
        return []
    images = {}
    for name in os.listdir(studies):
        for suffix in IMAGE_SUFFIXES:
            if name.endswith(suffix):
                images[name[: -len(suffix)]] = os.path.join(studies, name)
    pairs = []
    for name in sorted(os.listdir(final)):
        for suffix in IMAGE_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in images:
                pairs.append((images[name[: -len(suffix)]], os.path.join(final, name)))
    return pairs


def even_sample(items: Sequence, count: int) -> List:
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def load_or_make_plan(
    folder: str,
    preset: NetworkPreset,
    pairs: Sequence[Tuple[str, str]],
    labels: Mapping[str, int],
    trained: bool,
    may_create: bool = True,
) -> Optional[Dict]:
    """The model's plan: the one written in ``folder`` if any (a plan is frozen with the model it
    shaped); else, for a model not trained yet and where ``may_create``, one made now from
    ``pairs`` and written; else None (no labels yet, weights trained before planning, or a process
    that must not plan: the preset's geometry stays). Only the server plans: a training process it
    starts reads the plan, so the server's own network and its runs' always share one geometry."""
    path = os.path.join(folder, PLAN_FILE)
    if os.path.exists(path):
        with open(path) as f:
            plan = json.load(f)
        if plan.get("network") == preset.name:
            return plan
        logger.warning(f"{path} plans {plan.get('network')!r}, not {preset.name!r}: the preset's geometry is used")
        return None
    if trained or not pairs or not may_create:
        return None
    sample = even_sample(list(pairs), MAX_FINGERPRINT_CASES)
    logger.info(f"Planning {preset.name} from the fingerprint of {len(sample)} labelled case(s)")
    plan = plan_training(dataset_fingerprint(sample, labels), preset)
    os.makedirs(folder, exist_ok=True)
    atomic_write_json(path, plan)
    logger.info(f"Plan: spacing {plan['target_spacing']} mm, window {plan['roi_size']}, HU {plan['hu_window']}")
    return plan
