"""Prompt model infer task: one structure from clicks, a box, a label name or free text.

Declared as MONAI Label ``deepgrow`` type, so the upstream Slicer plugin shows its point tools and
sends its usual request (see :mod:`segloop.prompts.request` for every accepted form). A previous
mask to refine can be uploaded as the ``label`` file of ``/infer`` (name the structure with
``text`` then, since ``label`` is taken by the file), or, with ``label_map``, the case's whole
label map: then the target's voxels are the previous mask and every other segment's voxels are
never claimed (multi-label consistency); or, with ``scribbles_mask``, a scribble mask (voxels of
value 3 positive, 2 negative: MONAI Label's scribbles convention). As a ``scribbles`` task (the
upstream plugin's scribbles panel) the upload is the plugin's whole segmentation with its
``label_info``: the ``foreground_scribbles`` / ``background_scribbles`` segments are the scribbles,
the ``selected_label_name`` segment the previous mask and target, the other segments excluded. For a
client that resends all its clicks
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
from typing import Any, Dict, Optional

import nibabel as nib
import numpy as np
import torch
from monai.transforms import LoadImage
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.utils.others.generic import strtobool

from segloop.errors import bad_request, unprocessable
from segloop.infers.segmentation import SegmentationInfer
from segloop.networks.prompt import PromptPreset
from segloop.prompts.click_protocol import class_indices
from segloop.prompts.memory import ClickMemory
from segloop.prompts.request import PROMPT_FORMS, parse_prompt, scribble_mask_clicks
from segloop.prompts.text import LabelMatcher
from segloop.prompts.zoom import ZoomOutZoomIn
from segloop.transforms import DEFAULT_HU_WINDOW
from segloop.validation import check_label_values, is_upload_tempfile

logger = logging.getLogger(__name__)

SCRIBBLES_FOREGROUND, SCRIBBLES_BACKGROUND = "foreground_scribbles", "background_scribbles"  # the plugin's segment names


def save_on_input_grid(volume: np.ndarray, image_path: str) -> str:
    """Write ``volume`` (the image's voxel grid) as a temporary NIfTI with the stored image's affine
    and q/s-form codes; returns its path."""
    stored = nib.load(image_path)
    out = nib.Nifti1Image(volume, stored.affine)
    out.set_qform(stored.get_qform(), code=int(stored.header["qform_code"]) or 1)
    out.set_sform(stored.get_sform(), code=int(stored.header["sform_code"]) or 1)
    result_file = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
    nib.save(out, result_file)
    return result_file


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
        infer_type: str = InferType.DEEPGROW,
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
        self.type = infer_type  # DEEPGROW: the plugin's point tools; SCRIBBLES: its scribbles panel
        self.preset = preset
        self.matcher = matcher
        self.memory = ClickMemory()
        self.amp = amp  # precision of the zoom passes (networks/precision.py)

    prompt_forms = PROMPT_FORMS  # the request forms this task takes (none for an automatic proposal)

    def info(self) -> Dict[str, Any]:
        """MONAI Label's model info plus ``prompts``: the request forms this model takes, if any."""
        info = super().info()
        return dict(info, prompts=list(self.prompt_forms)) if self.prompt_forms else info

    def _pipeline(self, result: Dict) -> ZoomOutZoomIn:
        """The zoom-out-zoom-in pipeline on the serving version (its number goes into ``result``)."""
        device = self._config.get("device", "cpu")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        network = self._get_network(device, {"result": result})  # fills result["model_version"]
        return ZoomOutZoomIn(
            network, self.preset.roi_size, self.preset.coarse_spacing, self.preset.fine_spacing, self.hu_window, device,
            amp=self.amp,
        )

    def _not_trained_message(self) -> str:
        return (
            f"Model '{self.model_name}' is not trained yet: submit a few final labels and train it "
            f"(POST /train/{self.model_name}) before prompting it."
        )

    def _uploaded_label(self, request, shape) -> Optional[np.ndarray]:
        """The uploaded ``label`` file's voxels (a previous mask or, with ``label_map``, the case's
        label map), checked against the image's shape; None when nothing was uploaded."""
        path = request.get("label")  # an uploaded mask's temporary file, or a segment name
        if not isinstance(path, str) or not os.path.isabs(path) or not is_upload_tempfile(path) or not os.path.isfile(path):
            return None
        try:
            uploaded = np.asarray(nib.load(path).dataobj)
        except Exception as e:
            raise bad_request(f"previous mask is not a readable NIfTI file: {e}") from None
        uploaded = uploaded.reshape(uploaded.shape[:3]) if uploaded.ndim == 4 and uploaded.shape[3] == 1 else uploaded
        if uploaded.shape != tuple(shape):
            raise unprocessable(f"previous mask has shape {list(uploaded.shape)}, the image {list(shape)}")
        return uploaded

    def _scribbles(self, request, uploaded: Optional[np.ndarray]):
        """(request, (positive, negative) clicks, previous mask, excluded voxels) of a scribble upload,
        or None when the request is not one (module docstring)."""
        plugin = self.type == InferType.SCRIBBLES
        if not plugin and not strtobool(str(request.get("scribbles_mask", False))):
            return None
        if uploaded is None:
            raise bad_request("a scribbles request needs the scribble mask uploaded as the 'label' file")
        ids = {SCRIBBLES_FOREGROUND: 3, SCRIBBLES_BACKGROUND: 2}
        if plugin:
            info = request.get("label_info") or []
            if not isinstance(info, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), int) for e in info):
                raise bad_request("label_info must be a list of {\"name\": ..., \"id\": <int>} segments")
            ids = {e.get("name"): e["id"] for e in info}
            if not ({SCRIBBLES_FOREGROUND, SCRIBBLES_BACKGROUND} & set(ids)):
                raise bad_request(f"label_info names no {SCRIBBLES_FOREGROUND} or {SCRIBBLES_BACKGROUND} segment")
        clicks = tuple(
            scribble_mask_clicks(uploaded, ids[name]) if name in ids else []
            for name in (SCRIBBLES_FOREGROUND, SCRIBBLES_BACKGROUND)
        )
        request = dict(request, label=None)  # the upload is not a previous mask
        previous = excluded = None
        if plugin:
            target = request.get("selected_label_name")
            request["label"] = target if isinstance(target, str) else None  # a known label's name adds the label prompt
            mine = uploaded == ids[target] if target in ids else np.zeros(uploaded.shape, bool)
            scribbled = np.isin(uploaded, [ids.get(SCRIBBLES_FOREGROUND, -1), ids.get(SCRIBBLES_BACKGROUND, -1)])
            previous = mine.astype(np.float32) if mine.any() else None
            excluded = (uploaded > 0) & ~mine & ~scribbled
        if not clicks[0] and not clicks[1]:
            raise unprocessable("the scribble mask has no foreground or background scribble voxels")
        return request, clicks, previous, excluded

    def _previous_and_excluded(self, request, uploaded: Optional[np.ndarray], target: Optional[str]):
        """(previous mask, voxels never to claim) from the upload. A plain upload is the previous
        mask. With ``label_map`` the upload is the case's label map (storage indices): the target's
        voxels are the previous mask, every other segment's are excluded (multi-label consistency)."""
        if not strtobool(str(request.get("label_map", False))):
            return (None if uploaded is None else (uploaded > 0).astype(np.float32)), None
        if uploaded is None:
            raise bad_request("label_map is set but no label map was uploaded: send it as the 'label' file")
        check_label_values(uploaded, self.labels, what="label_map: the uploaded label map")
        index = self.labels.get(target) if target else None
        mine = uploaded == index if index else np.zeros(uploaded.shape, bool)
        return (mine.astype(np.float32) if mine.any() else None), (uploaded > 0) & ~mine

    def __call__(self, request, callbacks=None):
        start = time.time()
        checkpoint, image_path = self.check_request(request)
        image = LoadImage(image_only=True, ensure_channel_first=True)(image_path)
        shape = tuple(image.shape[1:])
        uploaded = self._uploaded_label(request, shape)
        scribbles = self._scribbles(request, uploaded)
        taken = set()  # storage indices of the segments the client already has: no click resolves to them
        if scribbles is not None:
            request, scribbled, uploaded, excluded = scribbles
            prompt, notes = parse_prompt(request, shape, self.labels, self.matcher, scribbled)
            notes["scribble_clicks"] = [len(scribbled[0]), len(scribbled[1])]
            if self.type == InferType.SCRIBBLES:  # the plugin's segments (label_info checked by _scribbles)
                taken = {self.labels[e["name"]] for e in request["label_info"] if e.get("name") in self.labels}
        else:
            prompt, notes = parse_prompt(request, shape, self.labels, self.matcher)
            if uploaded is not None and strtobool(str(request.get("label_map", False))):
                taken = set(np.unique(uploaded).tolist())
            uploaded, excluded = self._previous_and_excluded(request, uploaded, notes.get("target"))
        classes = class_indices(self.labels)
        candidates = [c for name, c in classes.items() if self.labels[name] not in taken]
        if not strtobool(str(request.get("label_from_click", True))):
            candidates = []
        previous, source = uploaded, "uploaded" if uploaded is not None else None
        if strtobool(str(request.get("reset_state", False))):
            self.memory.forget(image_path)
        elif previous is None and prompt.has_spatial:
            previous = self.memory.previous(image_path, prompt)
            source = "remembered" if previous is not None else None

        result: dict = {}
        pipeline = self._pipeline(result)
        mask, details = pipeline(image, prompt, previous, candidates=candidates)
        if details.get("label_from_click"):
            details["label_from_click"] = next(n for n, c in classes.items() if c == details["label_from_click"])
        for key in ("label_probability_at_click", "label_tissue_z_at_click"):
            if key in details:
                details[key] = {n: round(details[key][c], 3) for n, c in classes.items() if c in details[key]}
        if excluded is not None:  # other segments' voxels are never claimed
            mask &= ~excluded
            details["excluded_voxels"] = int(excluded.sum())
        self.memory.remember(image_path, prompt, mask)

        result_file = save_on_input_grid(mask.astype(np.uint8), image_path)
        segment = request.get("label")  # the plugin's segment name, unless it is an uploaded file
        name = (
            notes.get("target")
            or (segment if isinstance(segment, str) and not is_upload_tempfile(segment) else None)
            or details.get("label_from_click")
        )
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
