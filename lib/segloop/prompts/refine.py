"""Local refinement: a correction click changes the mask near that click only.

When a previous mask is sent with clicks, the new proposal of the zoom-out-zoom-in pipeline is
not taken whole. As in FocalClick (Chen et al., CVPR 2022), the update is local: what the
proposal *adds* is taken where it is connected to a positive click, what it *removes* where it is
connected to a negative click, in both cases within ``radius_mm`` of that click (connected inside
that neighbourhood). Everything else keeps the previous mask: a clinician's accepted result does
not move where nobody clicked.

Why: a single negative click on a trained-from-scratch model can shrink the whole organ, the
global proposal being worse than the previous mask away from the click; the local update keeps the
mask there (the global proposal against the local update: benchmarks/trials.md).

Masks are boolean [X, Y, Z] on the image grid; clicks are IJK voxel indices; ``spacing_mm`` the
voxel size along I, J, K (mm).
"""

from typing import Sequence, Tuple

import numpy as np
from scipy import ndimage

from segloop.prompts.encoding import Prompt

DEFAULT_RADIUS_MM = 30.0


def ball(
    shape: Sequence[int], centre: Sequence[int], spacing_mm: Sequence[float], radius_mm: float
) -> Tuple[Tuple[slice, ...], np.ndarray]:
    """The box of voxels around ``centre`` within ``radius_mm`` and the ball inside it (boolean)."""
    box = tuple(
        slice(max(0, c - int(radius_mm // s)), min(n, c + int(radius_mm // s) + 1)) for c, s, n in zip(centre, spacing_mm, shape)
    )
    axes = [(np.arange(b.start, b.stop) - c) * s for b, c, s in zip(box, centre, spacing_mm)]
    distance2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
    return box, distance2 <= radius_mm**2


def local_update(
    previous: np.ndarray,
    proposal: np.ndarray,
    prompt: Prompt,
    spacing_mm: Sequence[float],
    radius_mm: float = DEFAULT_RADIUS_MM,
) -> np.ndarray:
    """The previous mask with the proposal's changes taken around the clicks (see module docstring)."""
    result = previous.copy()
    for clicks, change, value in ((prompt.positive, proposal & ~previous, True), (prompt.negative, previous & ~proposal, False)):
        for click in clicks:
            voxel = tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(click, previous.shape))
            if not change[voxel]:  # the proposal did not change the mask under this click
                continue
            # Connected components within the click's box only: a click's reach is local anyway,
            # and labelling a whole CT on every click would cost about a second.
            box, near = ball(previous.shape, voxel, spacing_mm, radius_mm)
            components, _ = ndimage.label(change[box])
            local = tuple(v - b.start for v, b in zip(voxel, box))
            result[box][(components == components[local]) & near] = value
    return result
