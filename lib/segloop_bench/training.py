"""Train the served model in-process on a studies folder and score it on held-out ground truth.

Uses the very ``TaskConfig``, trainer and infer task the server builds, so a figure measured
here is the figure the app gets. Used by the learning test and ``segloop-bench bench auto``.
"""

import logging
import os
import time
from typing import Dict, List, Mapping, Optional

import nibabel as nib
import numpy as np

from segloop.configs import TASK_CONFIGS
from segloop.server.datastore import SegLoopDatastore
from segloop.metrics.dice import dice_per_label

logger = logging.getLogger(__name__)


def build_task_config(studies: str, conf: Optional[Mapping[str, str]] = None, name: str = "segmentation"):
    config = TASK_CONFIGS[name]()
    config.init(name, os.path.join(studies, ".segloop", "model"), dict(conf or {}), None, studies=studies)
    return config


def train(studies: str, request: Mapping, conf: Optional[Mapping[str, str]] = None, name: str = "segmentation") -> Dict:
    """One training run of model ``name`` on the datastore's final labels; returns its stats and wall time."""
    config = build_task_config(studies, conf, name)
    datastore = SegLoopDatastore(studies, labels=config.labels)
    start = time.time()
    stats = config.trainer()(dict(request), datastore)
    return {"stats": stats, "seconds": round(time.time() - start, 1)}


def evaluate(
    studies: str,
    ground_truth: str,
    case_ids: List[str],
    conf: Optional[Mapping[str, str]] = None,
    images: Optional[str] = None,
) -> Dict[str, Dict[str, float]]:
    """Run the published model of ``studies`` on each case (``<images or studies>/<case>.nii.gz``)
    and return Dice per label per case (input geometry)."""
    config = build_task_config(studies, conf)
    task = config.infer()
    scores: Dict[str, Dict[str, float]] = {}
    for case_id in case_ids:
        result_file, _ = task({"image": os.path.join(images or studies, f"{case_id}.nii.gz")})
        pred = np.asarray(nib.load(result_file).dataobj)
        truth = np.asarray(nib.load(os.path.join(ground_truth, f"{case_id}.nii.gz")).dataobj)
        os.unlink(result_file)
        scores[case_id] = dice_per_label(pred, truth, config.labels)
    return scores


def mean_per_label(scores: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    labels = next(iter(scores.values())).keys()
    return {k: float(np.nanmean([s[k] for s in scores.values()])) for k in labels}
