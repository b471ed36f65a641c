"""Training-time prompt simulation: turn labelled crops into prompted one-structure tasks.

An ``iteration_update`` for MONAI's ``SupervisedTrainer`` (the role DeepEdit's ``Interaction``
plays upstream). Each batch item is a crop of ``2 x roi`` voxels at the fine spacing with its
multi-label map (network channels: 0 background, 1..N labels). For each item:

1. a **view**: the whole crop halved (the zoom-out scale) or a window at full resolution around
   a random voxel of a structure (the zoom-in scale), 2/3..4/3 x ``roi`` a side, drawn per batch;
2. a **prompt** and its **targets**:

   * a click inside one component, that component's jittered box, or the label alone, each
     with or without the label. Without a label prompt the target is the clicked / boxed
     component; with one, the whole class;
   * with ``region_share`` > 0 (training option, 0 by default), that share of the label-free
     clicks goes to an **image region** outside every labelled structure instead: the
     connected voxels within ``REGION_TOLERANCE`` of the clicked voxel's intensity (3^3 median),
     the self-supervision SAM-style models draw from the image itself, to teach clicks alone to
     segment a structure nobody labelled: a vessel, a bone, a gas pocket. Not the default: at the
     tests' 296 steps each share tried cost the label + click or the box arm its margin over its
     baseline (benchmarks/trials.md);
   * **all labels**: no spatial prompt, and the network is asked for every label at once from
     the same features, each against its own mask (empty where the label is absent from the
     view). One forward pass then teaches what every label looks like, and where it is not,
     which the label / text prompt and the first click rely on;

3. up to ``max_interactions`` **simulated corrections** (one-structure items only) without
   gradients: the model predicts, the next click goes to the centre of the largest error
   (positive in a miss, negative in a false positive) and, for half of the items, the prediction
   becomes the previous-mask prompt (DeepEdit / SAM-Med3D). The other half accumulate their clicks
   with the mask channel empty, which is what inference sends (see ``segloop.prompts.zoom``), so
   that a second or third click without a mask is an input training shows (see
   benchmarks/trials.md, "Changes that were kept").

The returned batch is ``image`` [B, 5, X, Y, Z] (CT + prompt channels; X, Y, Z the batch's view
size), ``class_index`` [B, N] (the label queries: one-structure items use slot 0 and pad the rest
with -1) and ``label`` [B, N, X, Y, Z] (one binary target per query; a padding query's target is all -1, which
:class:`segloop.trainers.prompt.PromptLoss` skips), trained by the engine's own step.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from segloop.prompts.encoding import Prompt, encode_prompts
from segloop.prompts.simulation import jittered_box, next_click, random_click, region_centre

MODES = ("click", "click+label", "box", "box+label", "label", "all labels")
# Clicks with the label: what the Slicer plugin sends. "all labels" supervises every label per pass.
MODE_WEIGHTS = (0.15, 0.3, 0.15, 0.05, 0.05, 0.3)
REGION_TOLERANCE = 0.075  # intensity (0..1 after the HU window): 30 HU in the default 400 HU window
REGION_DRAWS = 8  # seeds tried per item before falling back to a labelled structure's click
REGION_VOXELS = (64, 0.1)  # an image region's size: at least this many voxels, at most this share of the view
PADDING = -1  # class index / target value of an unused label query
ZOOM_OUT_SHARE = 0.4  # the zoom-in view is the harder one (less context): it gets more of the steps
MASKLESS_SHARE = 0.5  # corrected items whose clicks accumulate without the previous-mask channel


def _block_sums(mask: np.ndarray) -> np.ndarray:
    """Voxels set in each 2 x 2 x 2 block of a boolean array of even sides (uint8, halved shape)."""
    b = mask.view(np.uint8)
    b = b[0::2] + b[1::2]
    b = b[:, 0::2] + b[:, 1::2]
    return b[:, :, 0::2] + b[:, :, 1::2]


def present_classes(label: np.ndarray) -> List[int]:
    """The structures (class > 0) in an integer label map, ascending (a count, not a sort: linear
    time, where ``np.unique`` sorts the whole crop)."""
    counts = np.bincount(np.asarray(label).ravel())
    return [int(c) for c in np.flatnonzero(counts[1:]) + 1]


class PromptInteraction:
    def __init__(
        self,
        roi_size: Sequence[int],
        num_labels: int,
        max_interactions: int = 2,
        seed: Optional[int] = None,
        size_multiple: int = 8,
        region_share: float = 0.0,
    ):
        self.roi_size = tuple(int(v) for v in roi_size)
        self.size_multiple = int(size_multiple)
        self.num_labels = int(num_labels)
        self.max_interactions = max_interactions
        self.rng = np.random.default_rng(seed)
        self.region_share = float(region_share)

    # -- views and targets ---------------------------------------------------------------------
    def view_size(self, zoom_out: bool) -> Tuple[int, int, int]:
        """The batch's view size: ``roi`` at the zoom-out scale; at the zoom-in scale each side drawn
        from 2/3..4/3 x roi (multiples of ``size_multiple``), since the zoom-in region of interest
        is as large as the structure (a kidney about 32 x 32 x 40 voxels, a liver 56 x 64 x 80) and
        the encoder's instance norms make its answer depend on the field of view: a model trained on
        one window size misjudges a structure's extent in the others."""
        if zoom_out:
            return self.roi_size
        m = self.size_multiple
        sides = [self.rng.integers(int(np.ceil(2 * r / 3 / m)), int(4 * r / 3 // m) + 1) * m for r in self.roi_size]
        return tuple(int(max(m, s)) for s in sides)  # type: ignore[return-value]

    def view(self, image: torch.Tensor, label: torch.Tensor, size: Sequence[int], zoom_out: bool) -> Tuple[torch.Tensor, np.ndarray]:
        """Zoom-out (halved crop) or zoom-in (a ``size`` window at full resolution around a structure)."""
        lab = label[0].cpu().numpy().astype(np.int64)
        if zoom_out or not (lab > 0).any():
            small = F.avg_pool3d(image[None].float(), 2)[0]
            return self._fit(small, size), self._fit_label(self._halve_label(lab), size)
        # Centre on a random voxel of one class, so the window holds a good part of that structure
        # (as the zoom-in region does at inference) rather than a sliver at its border.
        cls = self.rng.choice(present_classes(lab))
        centre = np.asarray(random_click(lab == cls, self.rng))
        jitter = self.rng.integers(-8, 9, 3)
        extent = np.asarray(size)
        start = np.clip(centre + jitter - extent // 2, 0, np.maximum(np.asarray(lab.shape) - extent, 0))
        window = tuple(slice(int(a), int(a) + int(s)) for a, s in zip(start, extent))
        return self._fit(image[(slice(None), *window)], size), self._fit_label(lab[window], size)

    def _halve_label(self, label: np.ndarray) -> np.ndarray:
        """The label map at the zoom-out scale, on the averaged image's voxel centres: each 2 x 2 x 2
        block gets the class holding most of it, a structure winning a tie with background, the lower
        class a tie between structures. (Every other voxel, ``label[::2]``, put the labels half a
        fine voxel, 1.5 mm, off the image.) Odd trailing planes are dropped, as ``avg_pool3d`` drops
        them from the image."""
        even = label[tuple(slice(0, s - s % 2) for s in label.shape)]
        votes = np.stack([_block_sums(even == c) for c in range(self.num_labels + 1)]).astype(np.int8)
        votes[0] -= 1  # background needs a strict majority over each structure: 4 - 4 goes to the structure
        return votes.argmax(0)

    @staticmethod
    def _fit(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        pad = [p for s, r in zip(reversed(image.shape[1:]), reversed(size)) for p in (0, max(0, r - s))]
        return F.pad(image, pad)[(slice(None), *(slice(0, r) for r in size))]

    def _fit_label(self, label: np.ndarray, size: Sequence[int]) -> np.ndarray:
        return self._fit(torch.as_tensor(label)[None], size)[0].numpy()

    def image_region(self, image: np.ndarray, label: np.ndarray) -> Optional[np.ndarray]:
        """An unlabelled structure of the view [X, Y, Z] (intensities 0..1): the connected voxels
        of similar intensity (after a 3^3 median) around a random voxel outside every labelled
        structure, if one of a plausible size turns up in a few draws (else None)."""
        free = label == 0
        if not free.any():
            return None
        smooth = ndimage.median_filter(image.astype(np.float32), 3)  # noise down, edges kept
        low, high_share = REGION_VOXELS
        for _ in range(REGION_DRAWS):
            seed = random_click(free, self.rng)
            components, _ = ndimage.label(free & (np.abs(smooth - smooth[seed]) < REGION_TOLERANCE))
            region = components == components[seed]
            if low <= int(region.sum()) <= high_share * region.size:
                return region
        return None

    def prompt(self, label: np.ndarray, image: Optional[np.ndarray] = None) -> Tuple[Prompt, List[int], np.ndarray]:
        """A random prompt on ``label`` (class channels) or on a region of ``image`` (the view's
        intensities), its label queries and their targets.

        Returns the spatial prompt, ``num_labels`` class indices (padded with -1) and targets
        [num_labels, X, Y, Z] float (1 / 0; all -1 for a padding query).
        """
        targets = np.full((self.num_labels, *label.shape), PADDING, np.float32)
        present = present_classes(label)
        mode = MODES[self.rng.choice(len(MODES), p=MODE_WEIGHTS)]
        # (no draw at all at region_share 0: the default recipe's random sequence stays as it was)
        if mode == "click" and image is not None and self.region_share > 0 and self.rng.random() < self.region_share:
            region = self.image_region(image, label)
            if region is not None:
                prompt = Prompt(positive=[region_centre(region) if self.rng.random() < 0.5 else random_click(region, self.rng)])
                targets[0] = region
                return prompt, [0] + [PADDING] * (self.num_labels - 1), targets
        if mode == "all labels" or not present:
            classes = list(range(1, self.num_labels + 1))
            targets[:] = label[None] == np.asarray(classes).reshape(-1, 1, 1, 1)
            return Prompt(), classes, targets
        cls = int(self.rng.choice(present))
        whole = label == cls
        components, _ = ndimage.label(whole)
        # The component under a random voxel of the class: large parts are prompted more often than
        # the slivers a crop border leaves of a structure.
        component = components == components[random_click(whole, self.rng)]
        with_label = mode.endswith("label")
        prompt = Prompt(label=cls if with_label else 0)
        if mode.startswith("click"):
            centre = self.rng.random() < 0.5
            prompt.positive.append(region_centre(component) if centre else random_click(component, self.rng))
        elif mode.startswith("box"):
            prompt.box = jittered_box(component, self.rng)
        targets[0] = whole if with_label else component
        return prompt, [prompt.label] + [PADDING] * (self.num_labels - 1), targets

    # -- the iteration -------------------------------------------------------------------------
    def __call__(self, engine, batchdata: Dict) -> Dict:
        images, labels = batchdata["image"], batchdata["label"]
        views, prompts, queries, targets = [], [], [], []
        zoom_out = bool(self.rng.random() < ZOOM_OUT_SHARE)  # one scale and size per batch: items stack
        size = self.view_size(zoom_out)
        for b in range(images.shape[0]):
            image, label = self.view(images[b], labels[b], size, zoom_out)
            # The view's intensities only when image regions are drawn: no copy per item otherwise.
            intensities = image[0].float().cpu().numpy() if self.region_share > 0 else None
            prompt, classes, target = self.prompt(label, intensities)
            views.append(image)
            prompts.append(prompt)
            queries.append(classes)
            targets.append(target)
        single = [p.has_spatial or p.label > 0 for p in prompts]  # one-structure items get corrections
        previous: List = [None] * len(views)
        # Inference sends every click so far with an empty mask channel: half the corrected items
        # train that input, the rest keep the model's last answer as the mask prompt.
        keeps_mask = self.rng.random(len(views)) >= MASKLESS_SHARE
        device = engine.state.device if hasattr(engine.state, "device") else images.device
        for _ in range(int(self.rng.integers(0, self.max_interactions + 1)) if any(single) else 0):
            x = self._inputs(views, prompts, previous, size)
            first = torch.tensor([q[0] for q in queries], dtype=torch.long)
            with torch.no_grad():  # the engine's inferer: its precision (bfloat16 on a CPU that has it)
                logits = engine.inferer(x.to(device), engine.network, label=first.to(device))
            for b, target in enumerate(targets):
                if not single[b]:
                    continue
                prediction = (logits[b, 0] > 0).cpu().numpy()
                click = next_click(prediction, target[0] > 0)
                if click is not None:
                    (prompts[b].positive if click[1] else prompts[b].negative).append(click[0])
                if keeps_mask[b]:
                    previous[b] = torch.sigmoid(logits[b, 0].float()).cpu()
        batch = {
            "image": self._inputs(views, prompts, previous, size),
            "label": torch.as_tensor(np.stack(targets)),
            "class_index": torch.tensor(queries, dtype=torch.long),
        }
        return engine._iteration(engine, batch)

    def _inputs(self, views, prompts, previous, size) -> torch.Tensor:
        return torch.stack(
            [torch.cat([v.float().cpu(), encode_prompts(p, size, prev)]) for v, p, prev in zip(views, prompts, previous)]
        )
