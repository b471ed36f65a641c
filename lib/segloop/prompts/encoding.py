"""Prompts in model space and their dense encoding (the prompt encoder's input).

A :class:`Prompt` holds one structure's prompts in *voxel coordinates of some grid* (float, the
voxel centre of index ``i`` is ``i``): positive and negative clicks, an optional box (two opposite
corners, inclusive) and the class index of the label prompt (0 = none, "the structure under the
clicks"). :func:`to_grid` maps a prompt between grids through their affines (voxel -> world mm ->
voxel), so IJK clicks on an LPS-stored NIfTI land on the same anatomy in the model's RAS grid.

:func:`encode_prompts` turns a prompt into the four channels ``PromptSegNet`` reads: Gaussian click
blobs (MONAI ``GaussianFilter``, peak 1, ``sigma`` voxels), a filled box and the previous mask.
"""

from dataclasses import dataclass, field, replace
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.networks.layers import GaussianFilter

from segloop.networks.prompt import PROMPT_CHANNELS

Point = Tuple[float, float, float]
CLICK_SIGMA = 3.0  # voxels: 18 mm at the zoom-out, 9 mm at the zoom-in spacing of prompt_cpu


@dataclass
class Prompt:
    positive: List[Point] = field(default_factory=list)
    negative: List[Point] = field(default_factory=list)
    box: Optional[Tuple[Point, Point]] = None  # (low corner, high corner), inclusive voxel coords
    label: int = 0  # class index: 0 = no label prompt, 1..N = labels in ascending storage index

    @property
    def has_spatial(self) -> bool:
        return bool(self.positive or self.negative or self.box)

    def spatial_points(self) -> np.ndarray:
        """Every spatial location of the prompt (clicks and box corners), shape [K, 3]."""
        points = list(self.positive) + list(self.negative) + (list(self.box) if self.box else [])
        return np.asarray(points, dtype=float).reshape(-1, 3)


def transform_points(points: Sequence[Point], src_affine: np.ndarray, dst_affine: np.ndarray) -> List[Point]:
    """Voxel coordinates in the ``src`` grid -> voxel coordinates in the ``dst`` grid (4x4 affines)."""
    if not len(points):
        return []
    homogeneous = np.c_[np.asarray(points, dtype=float).reshape(-1, 3), np.ones(len(points))]
    mapped = (np.linalg.inv(np.asarray(dst_affine, float)) @ np.asarray(src_affine, float) @ homogeneous.T).T
    return [tuple(float(v) for v in p[:3]) for p in mapped]


def to_grid(prompt: Prompt, src_affine: np.ndarray, dst_affine: np.ndarray) -> Prompt:
    box = None
    if prompt.box is not None:
        # A box maps to the bounding box of its 8 mapped corners (axes may flip or permute).
        lo, hi = np.asarray(prompt.box[0]), np.asarray(prompt.box[1])
        corners = [tuple(np.where([i, j, k], hi, lo)) for i in (0, 1) for j in (0, 1) for k in (0, 1)]
        mapped = np.asarray(transform_points(corners, src_affine, dst_affine))
        box = (tuple(mapped.min(0)), tuple(mapped.max(0)))
    return replace(
        prompt,
        positive=transform_points(prompt.positive, src_affine, dst_affine),
        negative=transform_points(prompt.negative, src_affine, dst_affine),
        box=box,
    )


def _click_map(points: Sequence[Point], shape: Sequence[int], blur: GaussianFilter) -> torch.Tensor:
    """Gaussian blobs at ``points`` (voxel coordinates, rounded), peak 1; zeros if none is in the grid.

    Each blob is blurred on its own patch, as far around the click as the kernel reaches, not over
    the whole grid: the filter is linear and zero-padded, so the sum of the patches is the whole-grid
    blur of the clicks' impulses (to rounding), at a cost that follows the clicks, not the grid size.
    """
    smooth = torch.zeros(tuple(shape))
    reach = max(int(max(float(s) * blur.truncated, 0.5) + 0.5) for s in blur.sigma)  # MONAI's kernel tail
    clicks = {tuple(int(round(v)) for v in p) for p in points}  # a click twice on a voxel is one impulse
    for idx in clicks:
        if not all(0 <= i < s for i, s in zip(idx, shape)):
            continue
        lo = [max(0, i - reach) for i in idx]
        hi = [min(s, i + reach + 1) for i, s in zip(idx, shape)]
        impulse = torch.zeros((1, 1, *(b - a for a, b in zip(lo, hi))))
        impulse[(0, 0, *(i - a for i, a in zip(idx, lo)))] = 1.0
        smooth[tuple(slice(a, b) for a, b in zip(lo, hi))] += blur(impulse)[0, 0]
    peak = smooth.max()
    return smooth / peak if peak > 0 else smooth


def encode_prompts(
    prompt: Prompt, shape: Sequence[int], previous: Optional[torch.Tensor] = None, sigma: float = CLICK_SIGMA
) -> torch.Tensor:
    """Dense prompt channels [4, X, Y, Z] for a grid of ``shape`` voxels.

    Clicks outside the grid (e.g. in another sliding window) are left out; the box is clipped.
    ``previous`` is the previous mask on the same grid (0..1), or zeros.
    """
    shape = tuple(int(s) for s in shape)
    channels = torch.zeros((PROMPT_CHANNELS, *shape))
    blur = GaussianFilter(spatial_dims=3, sigma=sigma)
    channels[0] = _click_map(prompt.positive, shape, blur)
    channels[1] = _click_map(prompt.negative, shape, blur)
    if prompt.box is not None:
        lo = [max(0, int(np.floor(v))) for v in prompt.box[0]]
        hi = [min(s, int(np.ceil(v)) + 1) for v, s in zip(prompt.box[1], shape)]
        if all(a < b for a, b in zip(lo, hi)):
            channels[2, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1.0
    if previous is not None:
        channels[3] = torch.as_tensor(previous, dtype=torch.float32).reshape(shape).clamp(0, 1)
    return channels
