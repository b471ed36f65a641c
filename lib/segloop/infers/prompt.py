"""Prompt model infer task: one structure from clicks, a box, a label name or free text.

Declared as MONAI Label ``deepgrow`` type, so the upstream Slicer plugin shows its point tools and
sends its usual request (see :mod:`segloop.prompts.request` for every accepted form). A previous
mask to refine can be uploaded as the ``label`` file of ``/infer`` (name the structure with
``text`` then, since ``label`` is taken by the file); for a client that resends all its clicks
instead (the plugin) the task remembers its last answer (:mod:`segloop.prompts.memory`). Either
way a correction click updates the mask locally around it (:mod:`segloop.prompts.refine`). The
result is a uint8 mask (1 = the structure) with exactly the input's shape and affine; its JSON
names the structure, the model version, where the previous mask came from and the zoom-out-zoom-in
details.
"""

import logging
import os
import tempfile
import time
from typing import Optional

import nibabel as nib
import numpy as np
import torch
from monai.transforms import LoadImage
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.utils.others.generic import strtobool

from segloop.errors import bad_request, unprocessable
from segloop.infers.segmentation import SegmentationInfer
from segloop.networks.prompt import PromptPreset
from segloop.prompts.memory import ClickMemory
from segloop.prompts.request import parse_prompt
from segloop.prompts.text import LabelMatcher
from segloop.prompts.zoom import ZoomOutZoomIn
from segloop.transforms import DEFAULT_HU_WINDOW
from segloop.validation import is_upload_tempfile

logger = logging.getLogger(__name__)


class PromptInfer(SegmentationInfer):
    def __init__(
        self,
        path,
        network: torch.nn.Module,
        labels,
        preset: PromptPreset,
        matcher: LabelMatcher,
        hu_window=DEFAULT_HU_WINDOW,
        model_name: str = "prompt",
        device: str = "cuda",
        amp: str = "auto",
    ):
        super().__init__(
            path=path,
            network=network,
            labels=labels,
            target_spacing=preset.fine_spacing,
            roi_size=preset.roi_size,
            hu_window=hu_window,
            model_name=model_name,
            device=device,
            description="Prompt-able segmentation (SegVol-style): clicks, box, label name or free text",
        )
        self.type = InferType.DEEPGROW
        self.preset = preset
        self.matcher = matcher
        self.memory = ClickMemory()
        self.amp = amp  # precision of the zoom passes (networks/precision.py)

    def _not_trained_message(self) -> str:
        return (
            f"Model '{self.model_name}' is not trained yet: submit a few final labels and train it "
            f"(POST /train/{self.model_name}) before prompting it."
        )

    def _previous_mask(self, request, shape) -> Optional[np.ndarray]:
        path = request.get("label")  # an uploaded mask's temporary file, or a segment name
        if not isinstance(path, str) or not os.path.isabs(path) or not is_upload_tempfile(path) or not os.path.isfile(path):
            return None
        try:
            previous = np.asarray(nib.load(path).dataobj)
        except Exception as e:
            raise bad_request(f"previous mask is not a readable NIfTI file: {e}") from None
        previous = previous.reshape(previous.shape[:3]) if previous.ndim == 4 and previous.shape[3] == 1 else previous
        if previous.shape != tuple(shape):
            raise unprocessable(f"previous mask has shape {list(previous.shape)}, the image {list(shape)}")
        return (previous > 0).astype(np.float32)

    def __call__(self, request, callbacks=None):
        start = time.time()
        checkpoint, image_path = self.check_request(request)
        image = LoadImage(image_only=True, ensure_channel_first=True)(image_path)
        shape = tuple(image.shape[1:])
        prompt, notes = parse_prompt(request, shape, self.labels, self.matcher)
        uploaded = self._previous_mask(request, shape)
        previous, source = uploaded, "uploaded" if uploaded is not None else None
        if strtobool(str(request.get("reset_state", False))):
            self.memory.forget(image_path)
        elif previous is None and prompt.has_spatial:
            previous = self.memory.previous(image_path, prompt)
            source = "remembered" if previous is not None else None

        device = self._config.get("device", "cpu")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        result: dict = {}
        network = self._get_network(device, {"result": result})  # fills result["model_version"]
        pipeline = ZoomOutZoomIn(
            network, self.preset.roi_size, self.preset.coarse_spacing, self.preset.fine_spacing, self.hu_window, device,
            amp=self.amp,
        )
        mask, details = pipeline(image, prompt, previous)
        self.memory.remember(image_path, prompt, mask)

        stored = nib.load(image_path)
        out = nib.Nifti1Image(mask.astype(np.uint8), stored.affine)
        out.set_qform(stored.get_qform(), code=int(stored.header["qform_code"]) or 1)
        out.set_sform(stored.get_sform(), code=int(stored.header["sform_code"]) or 1)
        result_file = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        nib.save(out, result_file)
        segment = request.get("label")  # the plugin's segment name, unless it is an uploaded previous mask
        name = notes.get("target") or (segment if isinstance(segment, str) and uploaded is None else None)
        result_json = {
            "model": self.model_name,
            "checkpoint": os.path.basename(checkpoint),
            "model_version": result.get("model_version"),
            "label_names": {str(name or "structure"): 1},
            "voxels": int(mask.sum()),
            "previous_mask": source,
            **notes,
            **details,
            "latencies": {"total": round(time.time() - start, 3)},
        }
        if result_json["voxels"] == 0:
            result_json["message"] = (
                f"found no {name or 'structure'} from these prompts: "
                "put a positive click on it or draw a box around it"
            )
        return result_file, result_json
