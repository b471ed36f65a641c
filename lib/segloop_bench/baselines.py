"""Baselines that learn nothing: what a quality figure must beat before it means anything.

* :func:`ball_at` / :func:`typical_radius_mm`: for a click, a ball of the structure's typical size
  (the median equivalent-sphere radius over the training labels) centred on the click;
* :func:`box_fill_dice`: for a box, the box itself;
* :func:`mean_label_dice`: for the automatic model, the training labels' per-voxel majority
  ("mean label") in a shared frame, each case in closest-RAS voxel order scaled to a fixed grid;
* :func:`hu_threshold_dice`: for the automatic model, each voxel given the label whose training
  HU range (5th-95th percentile) holds it, the narrowest range winning.
"""

from typing import Dict, Mapping, Sequence

import nibabel as nib
import numpy as np
from monai.transforms import Resize

from segloop.metrics.dice import dice, dice_per_label

ATLAS_GRID = (64, 64, 32)


def equivalent_radius_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Radius (mm) of the sphere with the mask's volume."""
    volume = float(mask.sum()) * float(np.prod(spacing))
    return (3 * volume / (4 * np.pi)) ** (1 / 3)


def typical_radius_mm(label_paths: Sequence[str], labels: Mapping[str, int]) -> Dict[str, float]:
    """Per label, the median equivalent-sphere radius over the label maps where it is present."""
    radii: Dict[str, list] = {name: [] for name in labels}
    for path in label_paths:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
        spacing = image.header.get_zooms()[:3]
        for name, index in labels.items():
            mask = data == index
            if mask.any():
                radii[name].append(equivalent_radius_mm(mask, spacing))
    return {name: float(np.median(r)) for name, r in radii.items() if r}


def ball_at(shape: Sequence[int], spacing: Sequence[float], centre: Sequence[int], radius_mm: float) -> np.ndarray:
    """Boolean ball of ``radius_mm`` around voxel ``centre`` on a grid of ``spacing`` mm."""
    axes = [(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    return (x**2 + y**2 + z**2) <= radius_mm**2


def ball_dice(target: np.ndarray, spacing: Sequence[float], click: Sequence[int], radius_mm: float) -> float:
    return dice(ball_at(target.shape, spacing, click, radius_mm), target)


def box_fill_dice(target: np.ndarray, low: Sequence[int], high: Sequence[int]) -> float:
    """Dice of the filled box (inclusive voxel corners) against the structure."""
    box = np.zeros(target.shape, bool)
    box[tuple(slice(int(a), int(b) + 1) for a, b in zip(low, high))] = True
    return dice(box, target)


def _canonical(path: str) -> np.ndarray:
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def _resize_nearest(data: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    return np.asarray(Resize(tuple(shape), mode="nearest")(data[None].astype(np.float32)))[0]


def mean_label_atlas(train_label_paths: Sequence[str], labels: Mapping[str, int]) -> np.ndarray:
    """The training labels' per-voxel majority (storage indices) on :data:`ATLAS_GRID`, RAS order."""
    votes = np.zeros((len(labels) + 1, *ATLAS_GRID), np.float32)
    indices = [0, *labels.values()]
    for path in train_label_paths:
        resized = _resize_nearest(_canonical(path), ATLAS_GRID)
        for k, index in enumerate(indices):
            votes[k] += resized == index
    return np.asarray(indices)[votes.argmax(0)]


def mean_label_dice(train_label_paths: Sequence[str], truth_path: str, labels: Mapping[str, int]) -> Dict[str, float]:
    """Dice per label of the mean-label atlas, scaled onto the held-out case's grid, against its truth."""
    truth = _canonical(truth_path)
    atlas = _resize_nearest(mean_label_atlas(train_label_paths, labels), truth.shape).astype(np.int64)
    return dice_per_label(atlas, truth, labels)


def hu_ranges(cases: Sequence[Dict[str, str]], labels: Mapping[str, int]) -> Dict[str, tuple]:
    """Per label, the 5th-95th HU percentile of its voxels over ``cases`` (``{"image", "label"}`` paths)."""
    values: Dict[str, list] = {name: [] for name in labels}
    for case in cases:
        image = np.asarray(nib.load(case["image"]).dataobj)
        label = np.asarray(nib.load(case["label"]).dataobj)
        for name, index in labels.items():
            values[name].append(image[label == index])
    return {
        name: tuple(float(v) for v in np.percentile(np.concatenate(v), (5, 95)))
        for name, v in values.items() if sum(len(x) for x in v)
    }


def hu_threshold_dice(ranges: Mapping[str, tuple], case: Dict[str, str], labels: Mapping[str, int]) -> Dict[str, float]:
    """Dice per label of the HU-threshold map (narrowest matching range wins) against the case's truth."""
    image = np.asarray(nib.load(case["image"]).dataobj)
    truth = np.asarray(nib.load(case["label"]).dataobj)
    prediction = np.zeros(image.shape, np.int64)
    for name in sorted(ranges, key=lambda n: ranges[n][1] - ranges[n][0], reverse=True):  # narrowest written last
        low, high = ranges[name]
        prediction[(image >= low) & (image <= high)] = labels[name]
    return dice_per_label(prediction, truth, labels)


def extruded_slice_dice(target: np.ndarray, axis: int, k: int) -> float:
    """Dice of the cross-section ``target`` has on slice ``k`` (along ``axis``) copied onto every slice
    of the structure's true extent along that axis: a drawn 2D prompt's baseline that learns
    nothing (it is told the extent, an oracle)."""
    present = np.flatnonzero(np.moveaxis(target, axis, 0).reshape(target.shape[axis], -1).any(1))
    cross = np.take(target, k, axis=axis)
    extruded = np.zeros(target.shape, bool)
    index = [slice(None)] * 3
    index[axis] = slice(int(present.min()), int(present.max()) + 1)
    extruded[tuple(index)] = np.expand_dims(cross, axis)
    return dice(extruded, target)
