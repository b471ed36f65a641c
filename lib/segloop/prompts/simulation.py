"""Simulated annotators: where a clinician would click next, and what box they would draw.

Used by prompt training (clicks in the current error) and by ``segloop-bench eval interactive``.
The next click follows the IMIS-Bench / SAM-Med3D protocol: the centre (the voxel farthest from
the region's border) of the largest error region; positive in a false negative, negative in a
false positive. Masks are boolean numpy arrays [X, Y, Z]; points are voxel indices.
"""

from typing import Optional, Tuple

import numpy as np
from monai.transforms.utils import distance_transform_edt, generate_spatial_bounding_box, get_largest_connected_component_mask

Click = Tuple[Tuple[int, int, int], bool]  # (voxel, is_positive)


def region_centre(region: np.ndarray) -> Tuple[int, int, int]:
    """The voxel of ``region`` farthest from its border (inside the region, even when concave).

    The distance transform runs on the region's bounding box with one background voxel around it,
    not the whole volume: the nearest border voxel of any inside voxel lies in that box (clipping a
    farther one to the box only brings it closer, and the box's shell is background), so the
    distances, and the first maximum in C order, are the whole volume's, at a cost that follows the
    region's size rather than the volume's.
    """
    if not region.any():
        return tuple(int(v) for v in np.unravel_index(0, region.shape))  # type: ignore
    first, last = (np.asarray(c) for c in bounding_box(region))
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(first, last))
    padded = np.pad(region[box], 1)  # the box's shell (and the volume edge) counts as border
    distance = np.asarray(distance_transform_edt(padded[None].astype(np.float32)))[0][1:-1, 1:-1, 1:-1]
    inner = np.unravel_index(np.argmax(distance), distance.shape)
    return tuple(int(a + v) for a, v in zip(first, inner))  # type: ignore


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
    """First and last voxel (inclusive) of a non-empty ``mask``'s bounding box."""
    first, end = generate_spatial_bounding_box(np.asarray(mask)[None])  # MONAI's box; end exclusive
    return tuple(int(v) for v in first), tuple(int(v) - 1 for v in end)


def jittered_box(mask: np.ndarray, rng: np.random.Generator, jitter: float = 0.1):
    """The bounding box of ``mask`` with each face moved by up to ``jitter`` x the box extent."""
    lo, hi = (np.asarray(c, dtype=float) for c in bounding_box(mask))
    extent = hi - lo + 1
    lo = np.clip(lo + rng.uniform(-jitter, jitter, 3) * extent, 0, np.asarray(mask.shape) - 1)
    hi = np.clip(hi + rng.uniform(-jitter, jitter, 3) * extent, lo, np.asarray(mask.shape) - 1)
    return tuple(float(v) for v in lo), tuple(float(v) for v in hi)
