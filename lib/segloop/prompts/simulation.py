"""Simulated annotators: where a clinician would click next, and what box they would draw.

Used by prompt training (clicks in the current error) and by ``segloop eval interactive``.
The next click follows the IMIS-Bench / SAM-Med3D protocol: the centre (the voxel farthest from
the region's border) of the largest error region; positive in a false negative, negative in a
false positive. Masks are boolean numpy arrays [X, Y, Z]; points are voxel indices.
"""

from typing import Optional, Tuple

import numpy as np
from monai.transforms.utils import distance_transform_edt, get_largest_connected_component_mask

Click = Tuple[Tuple[int, int, int], bool]  # (voxel, is_positive)


def region_centre(region: np.ndarray) -> Tuple[int, int, int]:
    """The voxel of ``region`` farthest from its border (inside the region, even when concave)."""
    padded = np.pad(region, 1)  # the volume edge counts as border
    distance = np.asarray(distance_transform_edt(padded[None].astype(np.float32)))[0][1:-1, 1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(np.argmax(distance), region.shape))  # type: ignore


def largest_component(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    return np.asarray(get_largest_connected_component_mask(mask.astype(np.uint8))).astype(bool)


def next_click(prediction: np.ndarray, target: np.ndarray) -> Optional[Click]:
    """The click at the centre of the largest error region, or None when there is no error."""
    misses = largest_component(target & ~prediction)
    extras = largest_component(prediction & ~target)
    if not misses.any() and not extras.any():
        return None
    positive = misses.sum() >= extras.sum()
    return region_centre(misses if positive else extras), bool(positive)


def random_click(region: np.ndarray, rng: np.random.Generator) -> Tuple[int, int, int]:
    """A uniformly random voxel of ``region`` (training: annotators do not click the exact centre)."""
    voxels = np.argwhere(region)
    return tuple(int(v) for v in voxels[rng.integers(len(voxels))])  # type: ignore


def bounding_box(mask: np.ndarray) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    voxels = np.argwhere(mask)
    return tuple(int(v) for v in voxels.min(0)), tuple(int(v) for v in voxels.max(0))


def jittered_box(mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.1):
    """The bounding box of ``mask`` with each face moved by up to ``jitter`` x the box extent."""
    lo, hi = (np.asarray(c, dtype=float) for c in bounding_box(mask))
    extent = hi - lo + 1
    lo = np.clip(lo + rng.uniform(-jitter, jitter, 3) * extent, 0, np.asarray(mask.shape) - 1)
    hi = np.clip(hi + rng.uniform(-jitter, jitter, 3) * extent, lo, np.asarray(mask.shape) - 1)
    return tuple(float(v) for v in lo), tuple(float(v) for v in hi)
