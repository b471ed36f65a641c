"""The prompt model's label-only answers as an automatic proposal (``--conf prompt_proposal true``).

Served as ``<prompt model>_seg``, of MONAI Label's ``segmentation`` type, the way MONAI Label's
DeepEdit app serves its interactive model in automatic mode (``deepedit_seg``): one zoom-out-
zoom-in per campaign label with the label prompt alone, no clicks (one zoom-out pass asks for every
label at once; each label then zooms in on its own regions), and the masks merged into one label
map on the input grid. Where two masks overlap, the smaller structure keeps the voxel (a
tumour inside the liver stays a tumour). How it compares with the automatic model on the same
labels and CPU budget: ``segloop-bench bench auto --arms ...,prompt`` (README, Benchmarks).
"""

import os
import time
from typing import Dict, Mapping

import numpy as np
from monai.transforms import LoadImage
from monailabel.interfaces.tasks.infer_v2 import InferType

from segloop.infers.prompt import PromptInfer, save_on_input_grid
from segloop.prompts.click_protocol import class_indices

PROPOSAL_SUFFIX = "_seg"  # task name: the prompt model's name + this (MONAI Label's deepedit_seg)


def merge_structure_masks(masks: Mapping[int, np.ndarray]) -> np.ndarray:
    """One uint8 label map from binary masks keyed by storage label value: painted largest first,
    so where masks overlap the smaller structure keeps the voxel (ties: the lower value first)."""
    first = next(iter(masks.values()))
    merged = np.zeros(first.shape, np.uint8)
    for value in sorted(masks, key=lambda v: (-int(masks[v].sum()), v)):
        merged[masks[value] > 0] = value
    return merged


class PromptProposalInfer(PromptInfer):
    prompt_forms = ()  # an automatic model: the image alone

    def __init__(self, *args, **kwargs):
        super().__init__(*args, infer_type=InferType.SEGMENTATION, **kwargs)
        self.description = "The prompt model's label-only answer for every label, merged: an automatic proposal"

    def __call__(self, request, callbacks=None):
        start = time.time()
        checkpoint, image_path = self.check_request(request)
        image = LoadImage(image_only=True, ensure_channel_first=True)(image_path)
        result: Dict = {}
        classes = class_indices(self.labels)  # label name -> the network's class index
        by_class, timings = self._pipeline(result).segment_labels(image, list(classes.values()))
        label_map = merge_structure_masks({self.labels[name]: by_class[c] for name, c in classes.items()})
        result_file = save_on_input_grid(label_map, image_path)
        return result_file, {
            "model": self.model_name,
            "checkpoint": os.path.basename(checkpoint),
            "model_version": result.get("model_version"),
            "label_names": dict(self.labels),
            "voxels": {name: int((label_map == value).sum()) for name, value in self.labels.items()},
            "latencies": {
                "total": round(time.time() - start, 3),
                "zoom_out": timings["coarse_s"],  # one pass for every label
                "zoom_in_per_label": {name: timings["fine_s"][c] for name, c in classes.items()},
            },
        }
