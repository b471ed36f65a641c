"""Automatic multi-label segmentation infer task (MONAI Label ``BasicInferTask``).

Request: ``image`` (datastore id or uploaded NIfTI), optionally ``uncertainty: true``. Response:
a label map (uint8, storage indices of the label map, 0 = background) with exactly the input's
shape and affine, and a JSON result naming the model, its version and checkpoint. With
``uncertainty`` the JSON also holds ``label_confidence`` (per label name) and ``uncertainty``
(summary and URL of a per-voxel entropy map on the input grid; see ``infers/uncertainty.py``).
Probabilities are softmax(logits / T) with the serving version's fitted temperature T.
"""

import copy
import logging
import os
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
import nibabel as nib
from monai.transforms import AsDiscreted, EnsureTyped, SqueezeDimd
from monailabel.utils.others.generic import strtobool

from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.transform.writer import Writer

from segloop.campaign.registry import VERSION_KEY, ModelRegistry
from segloop.infers.uncertainty import UncertaintyMaps, label_confidence
from segloop.labels import channel_map
from segloop.networks import copy_network
from segloop.networks.onednn import register_onednn_convolutions
from segloop.errors import bad_request, conflict
from segloop.validation import read_header
from segloop.transforms import DEFAULT_HU_WINDOW, ChannelsInnermostd, channels_to_storage, load_and_normalize

logger = logging.getLogger(__name__)


def _file_key(path: str) -> Tuple[int, int]:
    """(mtime, size) of a checkpoint: a change means the file was replaced."""
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


class SegmentationInfer(BasicInferTask):
    def __init__(
        self,
        path: Sequence[str],
        network: torch.nn.Module,
        labels: Mapping[str, int],
        target_spacing: Sequence[float],
        roi_size: Sequence[int],
        hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
        model_name: str = "segmentation",
        device: str = "cuda",
        description: str = "Automatic CT segmentation (UNETR-style) trained on this campaign's labels",
        registry: Optional[ModelRegistry] = None,
        uncertainty_maps: Optional[UncertaintyMaps] = None,
        **kwargs,
    ):
        super().__init__(
            path=list(path),
            network=network,
            type=InferType.SEGMENTATION,
            labels=dict(labels),
            dimension=3,
            description=description,
            roi_size=tuple(roi_size),
            config={"device": device, "result_dtype": "uint8", "sw_batch_size": 1, "sw_overlap": 0.25},
            **kwargs,
        )
        self.target_spacing = tuple(target_spacing)
        self.hu_window = tuple(hu_window)
        self.model_name = model_name
        self.registry = registry
        self.uncertainty_maps = uncertainty_maps

    def is_valid(self) -> bool:
        # Listed in /info even before the first training; requests then get a clear 409.
        return True

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return load_and_normalize(self.target_spacing, self.hu_window)

    def inferer(self, data=None) -> Inferer:
        data = data or {}
        return SlidingWindowInferer(
            roi_size=self.roi_size,
            sw_batch_size=int(data.get("sw_batch_size", 1)),
            overlap=float(data.get("sw_overlap", 0.25)),
            mode="gaussian",
        )

    def inverse_transforms(self, data=None):
        return []  # invert every invertible pre-transform (Spacingd, Orientationd) on the probabilities

    def post_transforms(self, data=None) -> Sequence[Callable]:
        transforms = [
            EnsureTyped(keys="pred", device="cpu"),
            self._uncertainty_output,
            ChannelsInnermostd(keys="pred"),  # the argmax over channels on its fast path
            AsDiscreted(keys="pred", argmax=True),
            SqueezeDimd(keys="pred", dim=0),
        ]
        to_storage = channels_to_storage(self.labels)
        return transforms + ([to_storage] if to_storage else [])

    def writer(self, data: Dict, extension=None, dtype=None):
        """MONAI Label's label writer, through nibabel (its ``nibabel`` option) instead of ITK: ITK
        loads its wrapped image types on first use, once per process, which every server's first
        proposal (and every batch-inference worker) would wait for."""
        if extension is not None:
            data["result_extension"] = extension
        if dtype is not None:
            data["result_dtype"] = dtype
        data["labels"] = self.labels
        return Writer(label=self.output_label_key, json=self.output_json_key, nibabel=True)(data)

    def _get_network(self, device, data):
        """Load the serving checkpoint (weights only), reloading when its file is replaced.

        The publisher replaces the file atomically, so a request either uses the network it already
        holds or loads the new version whole; the version number stored in the checkpoint goes into
        the result JSON of the request that used it. Each (re)load first checks the file against
        the registry's recorded sha256; a replaced or corrupted file is restored to the last good
        version (or removed: 409) before loading.
        """
        path = self.get_path()
        if not path:
            raise conflict(self._not_trained_message())
        cached = self._networks.get(device)
        if not cached or cached[1] != _file_key(path):
            path = self._verified_path()
            key = _file_key(path)
            checkpoint = torch.load(path, map_location=torch.device(device), weights_only=True)
            network = copy_network(self.network).to(torch.device(device))
            network.load_state_dict(checkpoint.get("model", checkpoint))
            network.eval()
            if torch.device(device).type == "cpu":
                register_onednn_convolutions(network)  # float32 CPU windows on oneDNN's kernel (networks/onednn.py)
            version = checkpoint.get(VERSION_KEY)
            temperature = self.registry.temperature(version) if self.registry else 1.0
            cached = (network, key, version, temperature)
            self._networks[device] = cached
            logger.info(f"{self.model_name}: loaded {os.path.basename(path)} (version {cached[2]})")
        if data is not None:
            data.setdefault("result", {})["model_version"] = cached[2]
            data["temperature"] = cached[3]
        return cached[0]

    def portable(self, data: Optional[Dict] = None) -> "SegmentationInfer":
        """A copy of this task to run in another process (a Ray worker, ``infers/batch_ray.py``):
        the serving network checked and loaded here, on the CPU (``data`` gets its version, as for a
        request); no registry and no uncertainty-map writer, which write files: the calling process
        is their only writer. A worker on another device loads the serving file itself."""
        self._get_network("cpu", data)
        twin = copy.copy(self)
        twin.registry, twin.uncertainty_maps = None, None
        twin._networks = {"cpu": self._networks["cpu"]}
        return twin

    def _verified_path(self) -> str:
        """The serving file after the registry's integrity check (which may restore or remove it)."""
        if self.registry is not None:
            event = self.registry.verify_serving()
            if event:
                logger.warning(f"{self.model_name}: {event['reason']}")
        path = self.get_path()
        if not path:
            raise conflict(self._not_trained_message())
        return path

    def _not_trained_message(self) -> str:
        return (
            f"Model '{self.model_name}' is not trained yet: submit a few final labels and train it "
            f"(POST /train/{self.model_name}) before asking for automatic segmentation."
        )

    def run_inferer(self, data: Dict, convert_to_batch=True, device="cuda"):
        data = super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)
        image = data[self.input_key]
        # Softmax before inverting, so resampling interpolates probabilities, not logits; keep the
        # image's transform history on the output so Spacingd/Orientationd can be inverted.
        logits = torch.as_tensor(data[self.output_label_key]).float()
        probs = torch.softmax(logits / float(data.get("temperature", 1.0)), dim=0)
        data[self.output_label_key] = MetaTensor(
            probs.cpu(), meta=dict(image.meta), applied_operations=list(image.applied_operations)
        )
        return data

    def _uncertainty_output(self, data: Dict) -> Dict:
        """With ``uncertainty: true``: write the entropy map and per-label confidence (probabilities
        are on the input grid here, after the inverse transforms)."""
        if not strtobool(str(data.get("uncertainty", False))) or self.uncertainty_maps is None:
            return data
        probs = torch.as_tensor(data["pred"]).float()
        channels = channel_map(self.labels)
        result = data.setdefault("result", {})
        result["label_confidence"] = label_confidence(probs, {n: channels[i] for n, i in self.labels.items()})
        result["uncertainty"] = self.uncertainty_maps.write(probs, nib.load(data["image_path"]).affine)
        result["temperature"] = data.get("temperature", 1.0)
        return data

    def check_request(self, request) -> Tuple[str, str]:
        """(serving checkpoint, image path) of a request: 409 before any training, 400 without a readable NIfTI."""
        checkpoint = self.get_path()
        if not checkpoint:
            raise conflict(self._not_trained_message())
        image = request.get("image")
        if not isinstance(image, str) or not os.path.isfile(image):
            raise bad_request("No image to segment: give a datastore image id or upload a NIfTI file.")
        read_header(image)
        return checkpoint, image

    def __call__(self, request, callbacks=None):
        checkpoint, _ = self.check_request(request)
        result_file, result_json = super().__call__(request, callbacks)
        result_json.update({"model": self.model_name, "checkpoint": os.path.basename(checkpoint)})
        return result_file, result_json
