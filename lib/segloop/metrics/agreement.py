"""Agreement between several annotators' label maps of one case, and their consensus.

* :func:`pairwise_agreement`: for every pair of reads and every label, Dice and the 95th-percentile
  Hausdorff distance in mm, both from MONAI's metrics (``compute_dice``,
  ``compute_hausdorff_distance``), then per label the mean over pairs.
* :func:`staple_consensus`: SimpleITK's multi-label STAPLE (Warfield et al. 2004, the multi-label
  form of Rohlfing et al.), with a majority vote (``LabelVoting``) where STAPLE leaves a voxel
  undecided and background where the vote ties too.

Label maps are integer arrays of one shape (I, J, K) holding the campaign's label values; spacing
is (I, J, K) in mm.
"""

from itertools import combinations
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

UNDECIDED = 255  # a value no campaign label uses (label values are 1..254)


def _one_hot(label_map: np.ndarray, values: Sequence[int]) -> torch.Tensor:
    """[1, len(values), I, J, K] float masks of ``values``."""
    return torch.from_numpy(np.stack([label_map == v for v in values])[None].astype(np.float32))


def _finite(value: float) -> Optional[float]:
    return round(float(value), 4) if np.isfinite(value) else None


def pair_agreement(a: np.ndarray, b: np.ndarray, labels: Mapping[str, int], spacing: Sequence[float]) -> Dict[str, Dict]:
    """Per label present in ``a`` or ``b``: Dice and HD95 (mm; None when one map lacks the label)."""
    if a.shape != b.shape:
        raise ValueError(f"reads differ in shape: {a.shape} vs {b.shape}")
    present = [name for name, v in labels.items() if (a == v).any() or (b == v).any()]
    if not present:
        return {"dice": {}, "hd95_mm": {}}
    values = [labels[n] for n in present]
    pa, pb = _one_hot(a, values), _one_hot(b, values)
    dice = compute_dice(pa, pb, include_background=True, ignore_empty=False)[0]
    both = [bool((a == v).any() and (b == v).any()) for v in values]
    hd = torch.full((len(values),), float("nan"))
    if any(both):
        keep = [i for i, ok in enumerate(both) if ok]
        hd[keep] = compute_hausdorff_distance(
            pa[:, keep], pb[:, keep], include_background=True, percentile=95, spacing=[float(s) for s in spacing]
        )[0].float()
    return {
        "dice": {n: round(float(d), 4) for n, d in zip(present, dice.tolist())},
        "hd95_mm": {n: _finite(h) for n, h in zip(present, hd.tolist())},
    }


def pairwise_agreement(
    reads: Mapping[str, np.ndarray], labels: Mapping[str, int], spacing: Sequence[float]
) -> Dict[str, object]:
    """Agreement of two or more reads ({annotator: label map}): every pair's Dice and HD95 per
    label, per label the mean over pairs (Dice counts 0 for a pair where only one read has the
    label; HD95 averages the pairs where both have it), and ``min_mean_dice``, the lowest of those
    means: the figure an adjudication threshold is held against."""
    if len(reads) < 2:
        raise ValueError("agreement needs at least two reads")
    pairs: List[Dict] = []
    for (name_a, a), (name_b, b) in combinations(sorted(reads.items()), 2):
        pairs.append({"reads": [name_a, name_b], **pair_agreement(a, b, labels, spacing)})
    names = [n for n in labels if any(n in p["dice"] for p in pairs)]
    mean_dice = {n: round(float(np.mean([p["dice"].get(n, 1.0) for p in pairs])), 4) for n in names}
    mean_hd = {}
    for n in names:
        finite = [p["hd95_mm"][n] for p in pairs if p["hd95_mm"].get(n) is not None]
        mean_hd[n] = round(float(np.mean(finite)), 3) if finite else None
    return {
        "pairs": pairs,
        "mean_dice": mean_dice,
        "mean_hd95_mm": mean_hd,
        "min_mean_dice": min(mean_dice.values()) if mean_dice else None,
    }


def staple_consensus(label_maps: Sequence[np.ndarray]) -> np.ndarray:
    """The multi-label STAPLE consensus of two or more integer label maps of one shape (uint8)."""
    if len(label_maps) < 2:
        raise ValueError("a consensus needs at least two reads")
    shapes = {m.shape for m in label_maps}
    if len(shapes) != 1:
        raise ValueError(f"reads differ in shape: {sorted(shapes)}")
    if max(int(m.max()) for m in label_maps) >= UNDECIDED:
        raise ValueError(f"label values must be below {UNDECIDED}")
    images = [sitk.GetImageFromArray(np.ascontiguousarray(m, dtype=np.uint8)) for m in label_maps]
    staple = sitk.GetArrayFromImage(sitk.MultiLabelSTAPLE(images, UNDECIDED))
    undecided = staple == UNDECIDED
    if undecided.any():
        vote = sitk.GetArrayFromImage(sitk.LabelVoting(images, UNDECIDED))
        staple[undecided] = np.where(vote[undecided] == UNDECIDED, 0, vote[undecided])
    return staple.astype(np.uint8)
