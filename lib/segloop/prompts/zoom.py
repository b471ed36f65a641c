"""Zoom-out-zoom-in inference of the prompt model (SegVol, Du et al. 2024), for one structure.

0. **A click without a label** is first given the label of the campaign structure under it, if
   any: one zoom-out pass asks for each candidate label by name alone (training's "all labels"
   mode), and the label most probable at the first positive click (at least 0.5) becomes the
   label prompt, as if the user had named the structure, if the clicked tissue looks like that
   structure's (its HU near the median under the label's zoom-out mask: a click on a lesion
   inside an organ is not a click on the organ). A click on no known structure stays
   class-agnostic ("the structure under the clicks"). The first positive click decides, so the
   answer's structure does not change while corrections are added. Why: the class-agnostic mode
   alone returns a blob around a click on an organ it knows (benchmarks/trials.md).
   Off with ``label_from_click=False``; the ``candidates`` argument narrows the labels (the server
   leaves out the segments a client already has).
1. **Zoom out**: the whole volume is resampled to a RAS grid at ``coarse_spacing`` mm (6 mm on
   the CPU preset: a 48^3 window sees 29 cm) and segmented, by sliding windows where it is
   large, with the prompts mapped onto it.
2. **Regions of interest**: the coarse mask, reduced to the components the prompts point at (the
   ones under a positive click or inside the box; with a label prompt, also every component at
   least a fifth of the largest, since the label asks for the whole class: both kidneys when the
   click is on one). Each component, click, the box and the previous mask (when one is sent, so a
   refinement can take back what it covered) gives a box, grown by ``margin_mm``; boxes that
   overlap merge. Two kidneys are then two regions, not one box across the spine.
3. **Zoom in**: each region alone is resampled from the original image at ``fine_spacing`` mm and
   segmented again from the prompts alone, with an empty mask channel, as training's first pass
   and half its corrections see it. The coarse result only places the regions: given as the mask
   prompt, its 6 mm probability, wider than the organ, is copied into the answer (see
   benchmarks/trials.md). The fine grid is centred on the region and at least one
   training window (``roi_size``) a side: the encoder's instance norms make its answer depend on
   the field of view, and a grid as small as a kidney's own 32 x 32 x 40 voxels marks only part of
   the kidney. The fine result is final inside the regions; outside them the structure is absent.
4. The fine probabilities are resampled onto the input's own grid (shape and affine; only the
   window each region covers) and thresholded at 0.5, so the mask lines up voxel for voxel with
   the image the client shows.
5. With a previous mask and clicks, that mask is updated **locally** around the clicks
   (:mod:`segloop.prompts.refine`, FocalClick-style) instead of being replaced.

A user's previous mask reaches the network only through the region and the clicks accumulated on
it, not as the mask channel: a sent binary mask in that channel makes positive clicks *shrink* the
result (see benchmarks/trials.md, section "Earlier result files",
bench_prompt_gpu_h200_recipe).

Every resampling is MONAI's ``SpatialResample`` between affines, so LPS- or RAS-stored inputs and
oblique spacings need no special case.
"""

import itertools
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import ScaleIntensityRange, SpatialResample
from monai.transforms.utils import generate_spatial_bounding_box
from scipy import ndimage

from segloop.networks.precision import inference_context
from segloop.prompts.encoding import Prompt, encode_prompts, to_grid
from segloop.prompts.refine import DEFAULT_RADIUS_MM, local_update
from segloop.transforms import DEFAULT_HU_WINDOW

# Step 0 (a click without a label): how sure the zoom-out pass must be that the click is on a known
# structure, and how close the clicked tissue must be to that structure's (robust z-score of the
# click's HU). 1.25 was set from the 16 training cases of `segloop-bench bench prompt` (seed 0):
# first clicks on their organs scored up to 1.01, on tumours inside them from 0.77 (one), then
# 1.16 and up (benchmarks/trials.md).
CLICK_LABEL_PROBABILITY = 0.5
CLICK_TISSUE_Z = 1.25
MIN_TISSUE_SPREAD_HU = 5.0  # a spread below this (a noiseless or constant image) counts as this


@dataclass
class Grid:
    """A RAS voxel grid: ``affine`` (voxel -> world mm, 4x4) and ``shape`` (voxels)."""

    affine: np.ndarray
    shape: Tuple[int, int, int]


def world_bounds(affine: np.ndarray, shape: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """World (mm) bounding box of the voxel centres of a grid."""
    return world_box(affine, np.zeros(3), np.asarray(shape) - 1)


def world_box(affine: np.ndarray, first: np.ndarray, last: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """World (mm) bounding box of the voxel box ``first..last`` (IJK, inclusive) of a grid."""
    corners = np.array([[i, j, k, 1.0] for i in (first[0], last[0]) for j in (first[1], last[1]) for k in (first[2], last[2])])
    world = (np.asarray(affine, float) @ corners.T).T[:, :3]
    return world.min(0), world.max(0)


def ras_grid(
    lo: np.ndarray, hi: np.ndarray, spacing: Sequence[float], multiple: int = 8, minimum: Sequence[int] = (0, 0, 0)
) -> Grid:
    """RAS grid at ``spacing`` centred on world box ``[lo, hi]`` and covering it, each size a multiple
    of ``multiple``, at least ``2 x multiple`` (the encoder's deepest level keeps 2 voxels a side,
    which instance normalisation needs) and at least ``minimum`` voxels."""
    spacing = np.asarray(spacing, float)
    size = np.ceil((hi - lo) / spacing + 1).astype(int)
    size = np.maximum(np.maximum(np.ceil(size / multiple) * multiple, 2 * multiple), minimum).astype(int)
    centre = (lo + hi) / 2
    origin = centre - (size - 1) / 2 * spacing  # keep the box centred in the padded grid
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return Grid(affine, tuple(int(s) for s in size))  # type: ignore[arg-type]


def inside(grid: Grid, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Boolean [X, Y, Z]: the voxels of ``grid`` whose centres lie in the world box ``[lo, hi]`` (mm)."""
    axes = [grid.affine[d, 3] + grid.affine[d, d] * np.arange(grid.shape[d]) for d in range(3)]
    tolerance = np.abs(np.diag(grid.affine)[:3]) / 2
    masks = [(a >= lo[d] - tolerance[d]) & (a <= hi[d] + tolerance[d]) for d, a in enumerate(axes)]
    return masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]


def click_tissue_hu(hu: torch.Tensor, click: Sequence[float]) -> float:
    """The HU of the tissue under a click: the median of the 3 x 3 x 3 voxels around it (``hu``
    [1, X, Y, Z] on the image's grid, ``click`` its IJK), so that noise does not decide."""
    idx = [int(np.clip(round(v), 0, s - 1)) for v, s in zip(click, hu.shape[1:])]
    return float(torch.median(hu[0][tuple(slice(max(0, i - 1), i + 2) for i in idx)]))


def merge_overlapping(boxes: Sequence[Tuple[np.ndarray, np.ndarray]]) -> List[Tuple[np.ndarray, np.ndarray]]:
    """World boxes ``(lo, hi)`` with every overlapping pair replaced by its union, until none overlap."""
    merged = [(np.asarray(a, float), np.asarray(b, float)) for a, b in boxes]
    changed = True
    while changed:
        changed = False
        for i, j in itertools.combinations(range(len(merged)), 2):
            (a_lo, a_hi), (b_lo, b_hi) = merged[i], merged[j]
            if np.all(a_lo <= b_hi) and np.all(b_lo <= a_hi):
                merged[i] = (np.minimum(a_lo, b_lo), np.maximum(a_hi, b_hi))
                del merged[j]
                changed = True
                break
    return merged


def sub_grid(affine: np.ndarray, shape: Sequence[int], lo: np.ndarray, hi: np.ndarray) -> Tuple[Tuple[slice, ...], Grid]:
    """The voxel window of a grid (``affine``, ``shape``) covering the world box ``[lo, hi]`` (mm), as
    slices and as a grid of its own: fine results are resampled onto that window, not the whole image."""
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = (np.linalg.inv(np.asarray(affine, float)) @ corners.T).T[:, :3]
    first = np.clip(np.floor(ijk.min(0)).astype(int) - 1, 0, np.asarray(shape) - 1)
    stop = np.clip(np.ceil(ijk.max(0)).astype(int) + 2, first + 1, np.asarray(shape))
    window_affine = np.asarray(affine, float).copy()
    window_affine[:3, 3] = (window_affine @ np.r_[first, 1.0])[:3]
    return tuple(slice(int(a), int(b)) for a, b in zip(first, stop)), Grid(window_affine, tuple(int(v) for v in stop - first))  # type: ignore[arg-type]


def resample(volume: torch.Tensor, src_affine: np.ndarray, grid: Grid, mode: str = "bilinear") -> torch.Tensor:
    """Resample a [C, X, Y, Z] volume from ``src_affine`` onto ``grid`` (zeros outside the source)."""
    src = MetaTensor(torch.as_tensor(volume, dtype=torch.float32), affine=torch.as_tensor(src_affine, dtype=torch.float64))
    out = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float32)(
        src, dst_affine=torch.as_tensor(grid.affine, dtype=torch.float64), spatial_size=grid.shape
    )
    return torch.as_tensor(out).float()


class ZoomOutZoomIn:
    def __init__(
        self,
        network: torch.nn.Module,
        roi_size: Sequence[int],
        coarse_spacing: Sequence[float],
        fine_spacing: Sequence[float],
        hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
        device: str = "cpu",
        margin_mm: float = 10.0,
        max_fine_voxels: int = 128**3,
        refine_radius_mm: float = DEFAULT_RADIUS_MM,
        amp: str = "auto",
        onednn: bool = True,
        label_from_click: bool = True,
    ):
        self.network = network
        self.roi_size = tuple(roi_size)
        self.coarse_spacing = tuple(coarse_spacing)
        self.fine_spacing = tuple(fine_spacing)
        self.normalize = ScaleIntensityRange(hu_window[0], hu_window[1], 0.0, 1.0, clip=True)
        self.device = torch.device(device)
        self.margin_mm = margin_mm
        self.max_fine_voxels = max_fine_voxels
        self.refine_radius_mm = refine_radius_mm
        self.amp = amp
        self.onednn = onednn  # float32 CPU passes: convolutions on oneDNN (networks/onednn.py)
        self.size_multiple = getattr(network, "size_multiple", 8)  # grids the encoder can take whole
        self.label_from_click = label_from_click  # step 0: a click without a label takes the label under it

    def _segment(self, image: torch.Tensor, prompt: Prompt, classes: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Logits [X, Y, Z] of one grid from the prompts (the mask channel empty): one forward pass
        if it is small enough, else sliding windows. With ``classes``, logits [K, X, Y, Z] of those
        K class queries from the same pass (the prompt's own label is then not used)."""
        channels = encode_prompts(prompt, image.shape[1:]).to(image.device)
        x = torch.cat([self.normalize(image), channels])[None].to(self.device)
        label = torch.tensor([list(classes) if classes is not None else [prompt.label]], device=self.device)
        with torch.no_grad(), inference_context(self.network, self.device, self.amp, self.onednn):
            if int(np.prod(image.shape[1:])) <= self.max_fine_voxels:
                logits = self.network(x, label=label)
            else:
                inferer = SlidingWindowInferer(self.roi_size, sw_batch_size=1, overlap=0.25, mode="gaussian")
                logits = inferer(x, self.network, label=label)
        return logits[0].float() if classes is not None else logits[0, 0].float()

    def _label_under_click(
        self, coarse_image: torch.Tensor, click: Sequence[float], candidates: Sequence[int], click_hu: float
    ) -> Tuple[int, Dict[str, Dict[int, float]]]:
        """(class index of the campaign structure under ``click``, or 0 for none; per candidate its
        probability at the click and, where asked, how far the click's tissue is from it). One
        zoom-out pass asks for every candidate by its label alone (no spatial prompt: training's
        "all labels" mode). The most probable candidate at the click's coarse voxel wins if that
        probability is at least ``CLICK_LABEL_PROBABILITY`` and the clicked tissue looks like it:
        ``click_hu`` (HU around the click) within ``CLICK_TISSUE_Z`` robust standard deviations of
        the median HU under the candidate's zoom-out mask. A click on a lesion inside an organ is
        on the organ's mask but not on its tissue; the next candidate is then tried, and with none
        left the click stays class-agnostic."""
        probabilities = torch.sigmoid(self._segment(coarse_image, Prompt(), classes=candidates)).cpu().numpy()
        idx = tuple(int(np.clip(round(v), 0, s - 1)) for v, s in zip(click, probabilities.shape[1:]))
        at_click = {int(c): float(p[idx]) for c, p in zip(candidates, probabilities)}
        tissue_z: Dict[int, float] = {}
        hu = coarse_image[0].cpu().numpy()
        for rank in np.argsort([-at_click[int(c)] for c in candidates]):
            c = int(candidates[rank])
            if at_click[c] < CLICK_LABEL_PROBABILITY:
                break
            values = hu[probabilities[rank] >= CLICK_LABEL_PROBABILITY]
            centre = float(np.median(values))
            spread = max(1.4826 * float(np.median(np.abs(values - centre))), MIN_TISSUE_SPREAD_HU)
            tissue_z[c] = abs(click_hu - centre) / spread
            if tissue_z[c] <= CLICK_TISSUE_Z:
                return c, {"probability": at_click, "tissue_z": tissue_z}
        return 0, {"probability": at_click, "tissue_z": tissue_z}

    def _region(self, coarse_mask: np.ndarray, prompt: Prompt) -> np.ndarray:
        """The coarse components the prompts point at (see module docstring, step 2): an int array
        [X, Y, Z], each kept component its own positive number, 0 elsewhere."""
        components, count = ndimage.label(coarse_mask)
        if count == 0:
            return components
        keep = np.zeros(count + 1, bool)
        if prompt.positive:
            for p in prompt.positive:
                idx = tuple(int(np.clip(round(v), 0, s - 1)) for v, s in zip(p, coarse_mask.shape))
                keep[components[idx]] = True
        if prompt.box is not None:
            lo = [max(0, int(np.floor(v))) for v in prompt.box[0]]
            hi = [int(np.ceil(v)) + 1 for v in prompt.box[1]]
            keep[np.unique(components[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])] = True
        if prompt.label or (not prompt.positive and prompt.box is None):
            # A label prompt asks for the whole class (both kidneys, though the click is on one).
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            keep |= sizes >= 0.2 * sizes.max()
        keep[0] = False
        return np.where(keep[components], components, 0)

    def _rois(
        self, parts: np.ndarray, coarse: Grid, prompt: Prompt, previous: Optional[np.ndarray],
        affine: np.ndarray, lo: np.ndarray, hi: np.ndarray,
    ) -> List[Tuple[np.ndarray, np.ndarray]]:
        """World boxes (mm) to zoom in on (module docstring, step 2): one per kept coarse component,
        click, box prompt and previous mask, grown by the margin, clipped to the image ``[lo, hi]``;
        overlapping boxes merge. ``parts`` and ``prompt`` are on the ``coarse`` grid, ``previous`` on
        the image's (``affine``)."""
        boxes = [
            world_box(coarse.affine, np.array([s.start for s in b]), np.array([s.stop - 1 for s in b]))
            for b in ndimage.find_objects(parts) if b is not None
        ]
        boxes += [world_box(coarse.affine, np.asarray(p), np.asarray(p)) for p in [*prompt.positive, *prompt.negative]]
        if prompt.box is not None:
            boxes.append(world_box(coarse.affine, np.asarray(prompt.box[0]), np.asarray(prompt.box[1])))
        if previous is not None and np.any(previous):
            first, end = generate_spatial_bounding_box(np.asarray(previous)[None] > 0)  # MONAI's box; end exclusive
            boxes.append(world_box(affine, np.asarray(first), np.asarray(end) - 1))
        grown = [(np.clip(a - self.margin_mm, lo, hi), np.clip(b + self.margin_mm, lo, hi)) for a, b in boxes]
        return merge_overlapping(grown)

    def _zoom_in(
        self, hu: torch.Tensor, affine: np.ndarray, coarse: Grid, coarse_logits: torch.Tensor, prompt: Prompt,
        coarse_prompt: Prompt, previous: Optional[np.ndarray] = None,
    ) -> Tuple[np.ndarray, List[Tuple[np.ndarray, np.ndarray]], List[List[int]]]:
        """Steps 2-4 (module docstring) from one structure's zoom-out logits [X, Y, Z] on the
        ``coarse`` grid: (its probability [X, Y, Z] on the image's grid, 0 outside the regions; the
        regions' world boxes, mm; each region's fine grid shape). ``prompt`` is on the image's grid
        (``hu`` [1, X, Y, Z], ``affine``), ``coarse_prompt`` on the coarse one."""
        shape = tuple(hu.shape[1:])
        lo, hi = world_bounds(affine, shape)
        # Only coarse voxels inside the image count: the grid is padded to whole windows, and a
        # false positive in that padding must not pull the region of interest off the image.
        parts = self._region((coarse_logits.numpy() > 0) & inside(coarse, lo, hi), coarse_prompt)
        rois = self._rois(parts, coarse, coarse_prompt, previous, affine, lo, hi)
        on_input = np.zeros(shape, np.float32)
        fine_grids = []
        for roi_lo, roi_hi in rois:
            fine = ras_grid(roi_lo, roi_hi, self.fine_spacing, self.size_multiple, minimum=self.roi_size)
            fine_logits = self._segment(resample(hu, affine, fine), to_grid(prompt, affine, fine.affine))
            window, part = sub_grid(affine, shape, roi_lo, roi_hi)
            on_part = resample(torch.sigmoid(fine_logits)[None], fine.affine, part)[0].cpu().numpy()
            on_input[window] = np.maximum(on_input[window], on_part)
            fine_grids.append(list(fine.shape))
        return on_input, rois, fine_grids

    def _zoom_out(self, image: MetaTensor) -> Tuple[torch.Tensor, np.ndarray, Grid, torch.Tensor]:
        """Step 1's grid: (HU [1, X, Y, Z] on the network's device, the image's affine, the coarse
        RAS grid over the whole image, the image resampled onto it)."""
        affine = np.asarray(image.affine, float)
        hu = torch.as_tensor(image).float().to(self.device)  # every resampling runs where the network does
        lo, hi = world_bounds(affine, tuple(image.shape[1:]))
        coarse = ras_grid(lo, hi, self.coarse_spacing, self.size_multiple)
        return hu, affine, coarse, resample(hu, affine, coarse)

    def segment_labels(self, image: MetaTensor, classes: Sequence[int]) -> Tuple[Dict[int, np.ndarray], Dict]:
        """Every class in ``classes`` from its label prompt alone (the automatic proposal,
        ``segloop.infers.prompt_proposal``): one zoom-out pass asks for all of them at once (the
        class head answers each query from the same features, as training's "all labels" mode),
        then each class zooms in on its own regions as :meth:`__call__` does for ``Prompt(label=c)``.
        Returns (class -> boolean mask [X, Y, Z] on the image's grid, timings)."""
        start = time.time()
        hu, affine, coarse, coarse_image = self._zoom_out(image)
        coarse_logits = self._segment(coarse_image, Prompt(), classes=list(classes)).cpu()
        coarse_seconds = time.time() - start
        masks, fine_seconds = {}, {}
        for c, logits in zip(classes, coarse_logits):
            began = time.time()
            prompt = Prompt(label=int(c))
            on_input, _, _ = self._zoom_in(hu, affine, coarse, logits, prompt, prompt)
            masks[int(c)] = on_input > 0.5
            fine_seconds[int(c)] = round(time.time() - began, 3)
        return masks, {"coarse_s": round(coarse_seconds, 3), "fine_s": fine_seconds}

    def __call__(
        self, image: MetaTensor, prompt: Prompt, previous: Optional[np.ndarray] = None,
        candidates: Optional[Sequence[int]] = None,
    ) -> Tuple[np.ndarray, Dict]:
        """Segment the prompted structure.

        ``image``: [1, X, Y, Z] HU with its ``affine``; ``prompt`` in the image's IJK grid;
        ``previous``: an optional previous mask [X, Y, Z] on the image's grid; ``candidates``: the
        class indices a click without a label may be resolved to (step 0; default every class,
        none when ``label_from_click`` is off).
        Returns a boolean mask [X, Y, Z] on the image's grid and timing / ROI details.
        """
        start = time.time()
        shape = tuple(image.shape[1:])
        hu, affine, coarse, coarse_image = self._zoom_out(image)
        coarse_prompt = to_grid(prompt, affine, coarse.affine)
        classes = getattr(self.network, "num_classes", 1)  # the label prompts the network knows
        if candidates is None:
            candidates = range(1, classes) if self.label_from_click else ()
        candidates = [c for c in candidates if 0 < c < classes]
        resolved: Dict = {}
        if prompt.label == 0 and coarse_prompt.positive and candidates:
            label, evidence = self._label_under_click(
                coarse_image, coarse_prompt.positive[0], candidates, click_tissue_hu(hu, prompt.positive[0])
            )
            resolved = {
                "label_from_click": label or None,
                "label_probability_at_click": evidence["probability"],
                "label_tissue_z_at_click": evidence["tissue_z"],
            }
            if label:
                prompt, coarse_prompt = replace(prompt, label=label), replace(coarse_prompt, label=label)
        coarse_logits = self._segment(coarse_image, coarse_prompt).cpu()
        coarse_seconds = time.time() - start

        on_input, rois, fine_grids = self._zoom_in(hu, affine, coarse, coarse_logits, prompt, coarse_prompt, previous)
        if not rois:
            return np.zeros(shape, bool), {**resolved, "roi_mm": None, "coarse_s": round(coarse_seconds, 3), "fine_s": 0.0}
        fine_seconds = time.time() - start - coarse_seconds

        mask = on_input > 0.5
        refined = previous is not None and bool(prompt.positive or prompt.negative)
        if refined:
            spacing = np.linalg.norm(affine[:3, :3], axis=0)  # voxel size along I, J, K (mm)
            mask = local_update(np.asarray(previous) > 0, mask, prompt, spacing, self.refine_radius_mm)
        details = {
            **resolved,
            "roi_mm": [[[round(float(v), 1) for v in c] for c in roi] for roi in rois],
            "fine_grids": fine_grids,
            "coarse_s": round(coarse_seconds, 3),
            "fine_s": round(fine_seconds, 3),
            "refinement": "local" if refined else None,
        }
        return mask, details
