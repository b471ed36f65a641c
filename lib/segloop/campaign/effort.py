"""Edit effort: how much the annotator changed the model's proposal before submitting it.

The server keeps the last proposal it served for each datastore image (label map + the model
version that produced it). When the final label for that image arrives, it records per label the
Dice between proposal and final label and the fraction of the label's voxels that changed, and
the fraction of all voxels that changed. A falling effort across model versions is the evidence
that the model helps the annotators.

Files under ``<model_dir>/<model>/``: ``proposals/<image id>.nii.gz`` (+ ``.json`` with the
version), and ``effort.json`` (a list of records, rewritten atomically).
"""

import json
import os
import statistics
import time
from typing import Any, Dict, List, Mapping, Optional

import nibabel as nib
import numpy as np
from filelock import FileLock

from segloop.metrics.dice import dice_from_counts, label_confusion
from segloop.io import atomic_copy, atomic_write_json, json_safe


def edit_effort(proposal: np.ndarray, final: np.ndarray, labels: Mapping[str, int]) -> Dict[str, Any]:
    """Per label: Dice(proposal, final) and the fraction of the union of both masks that changed."""
    if proposal.shape != final.shape:
        raise ValueError(f"proposal {proposal.shape} and final label {final.shape} differ in shape")
    counts = label_confusion(proposal, final, labels.values())  # rows of (tp, fp, tn, fn)
    dice = dice_from_counts(counts)
    changed = counts[:, 1] + counts[:, 3]
    union = counts[:, 0] + changed
    return {
        "dice": {name: float(d) for name, d in zip(labels, dice)},
        "changed_fraction": {name: float(c / u) if u else float("nan") for name, c, u in zip(labels, changed, union)},
        "changed_voxels_fraction": float(np.count_nonzero(proposal != final)) / proposal.size,
    }


class EffortTracker:
    def __init__(self, folder: str, labels: Mapping[str, int]):
        self.labels = dict(labels)
        self.proposals = os.path.join(folder, "proposals")
        self.path = os.path.join(folder, "effort.json")
        os.makedirs(self.proposals, exist_ok=True)
        self._lock = FileLock(self.path + ".lock")

    def save_proposal(self, image_id: str, label_file: str, version: Optional[int]) -> None:
        atomic_copy(label_file, os.path.join(self.proposals, f"{image_id}.nii.gz"))
        atomic_write_json(os.path.join(self.proposals, f"{image_id}.json"), {"version": version, "ts": time.time()})

    def proposal(self, image_id: str) -> Optional[Dict[str, Any]]:
        meta = os.path.join(self.proposals, f"{image_id}.json")
        if not os.path.exists(meta):
            return None
        with open(meta) as f:
            return dict(json.load(f), file=os.path.join(self.proposals, f"{image_id}.nii.gz"))

    def records(self) -> List[Dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return json.load(f)

    def record_final(self, image_id: str, final_file: str, label_ts: Any, annotator: Optional[str]) -> Optional[Dict]:
        """Compare the stored proposal with the submitted final label; None if no proposal was served."""
        proposal = self.proposal(image_id)
        if proposal is None or not os.path.exists(proposal["file"]):
            return None
        with self._lock:
            records = self.records()
            if any(r["image"] == image_id and r["label_ts"] == label_ts for r in records):
                return None  # already recorded for this submission
            effort = edit_effort(
                np.asarray(nib.load(proposal["file"]).dataobj), np.asarray(nib.load(final_file).dataobj), self.labels
            )
            record = {
                "image": image_id,
                "version": proposal["version"],
                "label_ts": label_ts,
                "annotator": annotator,
                "time": time.time(),
                **effort,
            }
            records.append(record)
            atomic_write_json(self.path, json_safe(records))
        return json_safe(record)

    def summary(self) -> Dict[str, Dict[str, Any]]:
        """Per model version: number of submissions, median mean-Dice and median changed fraction."""
        by_version: Dict[str, List[Dict]] = {}
        for r in self.records():
            by_version.setdefault(str(r["version"]), []).append(r)
        summary = {}
        for version, records in by_version.items():
            mean_dice = [_nanmean(r["dice"].values()) for r in records]
            summary[version] = {
                "submissions": len(records),
                "median_dice_proposal_vs_final": _median(mean_dice),
                "median_changed_voxels_fraction": _median([r["changed_voxels_fraction"] for r in records]),
            }
        return summary


def _nanmean(values) -> Optional[float]:
    vals = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _median(values) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 4) if vals else None
