"""Class sampling planned from the labelled structures' sizes: crop centres and loss weights.

nnU-Net draws a share of its training patches around foreground of a random class, so a small
class is seen as often as a large one. SegLoop's trainer does the same (MONAI's
``RandCropByLabelClassesd``, one ratio per class), and this module adds what a tumour needs on a
CPU budget: a structure much smaller than the campaign's typical labelled structure is a crop
centre more often and weighs more in the loss, so it is learnt within the run instead of losing
every voxel to its host organ.

The rule, per label with its median volume ``v`` over the cases that hold it (from the label
files' own spacing) and ``m`` the median of those volumes over all labels: a label with
``v < SMALL_FRACTION * m`` is a *small structure*. It is a crop centre ``SMALL_CROP_RATIO`` times
as often as each other class and weighs ``SMALL_LOSS_WEIGHT`` in the loss; every other class,
background included, keeps ratio 1 and weight 1, and so does a label that no case holds.

With the generated phantoms (liver about 0.7 l, spleen and kidneys 0.1 l, tumours 3-16 ml) only
the tumour is small, and the rule gives the recipe measured in ``benchmarks/trials.md``
("Tumour-directed crops and loss weight": crops x4, weight 3).
"""

import logging
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from segloop.planning.plan import even_sample

logger = logging.getLogger(__name__)

SMALL_FRACTION = 0.1  # a label under a tenth of the typical labelled structure's volume is small
SMALL_CROP_RATIO = 4.0  # crops centred on a small structure, relative to any other class
SMALL_LOSS_WEIGHT = 3.0  # its Dice + cross-entropy weight
MAX_LABEL_FILES = 16  # label files read to estimate the sizes (evenly spread over the cases)


def label_volumes_ml(label_paths: Sequence[str], labels: Mapping[str, int]) -> Dict[str, float]:
    """Median volume in ml of each label over the label files that hold it (labels no file holds
    are left out). Files that cannot be read are skipped with a warning."""
    from monai.transforms import LoadImage  # MONAI's reader: NIfTI, NRRD, MHA like the datastore

    reader = LoadImage(image_only=True)
    per_label: Dict[str, List[float]] = {name: [] for name in labels}
    for path in label_paths:
        try:
            label = reader(path)
        except Exception as e:  # a broken file is the quarantine's business, not the sampler's
            logger.warning(f"class sampling: cannot read {path}: {e}")
            continue
        voxel_ml = abs(float(np.linalg.det(np.asarray(label.affine, dtype=float)[:3, :3]))) / 1000.0
        counts = np.bincount(np.asarray(label, dtype=np.int64).ravel())
        for name, index in labels.items():
            if index < len(counts) and counts[index] > 0:
                per_label[name].append(float(counts[index]) * voxel_ml)
    return {name: round(float(np.median(v)), 3) for name, v in per_label.items() if v}


def class_sampling(volumes_ml: Mapping[str, float], labels: Mapping[str, int]) -> Dict:
    """Crop ratios and loss weights (background first, then labels in index order) from the
    labels' median volumes (see module doc), with the volumes they came from."""
    names = sorted(labels, key=labels.get)
    typical = float(np.median([volumes_ml[n] for n in names if n in volumes_ml])) if volumes_ml else 0.0
    small = [n for n in names if n in volumes_ml and volumes_ml[n] < SMALL_FRACTION * typical]
    return {
        "crop_ratios": [1.0] + [SMALL_CROP_RATIO if n in small else 1.0 for n in names],
        "class_weights": [1.0] + [SMALL_LOSS_WEIGHT if n in small else 1.0 for n in names],
        "small_structures": small,
        "volumes_ml": dict(volumes_ml),
        "typical_ml": round(typical, 3),
    }


def plan_class_sampling(label_paths: Sequence[str], labels: Mapping[str, int]) -> Optional[Dict]:
    """:func:`class_sampling` from at most ``MAX_LABEL_FILES`` of ``label_paths`` (evenly
    spread), or None when none can be read (the trainer then samples classes equally)."""
    paths = even_sample(list(label_paths), MAX_LABEL_FILES)
    volumes = label_volumes_ml(paths, labels)
    if not volumes:
        return None
    sampling = class_sampling(volumes, labels)
    sampling["label_files"] = len(paths)
    return sampling
