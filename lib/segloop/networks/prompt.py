"""The prompt-able (SegVol-style) network, assembled from MONAI blocks.

``PromptSegNet`` segments *one* structure per prompt:

* **image encoder** — MONAI ``SegResNetDS`` (the encoder family of VISTA3D) over the CT channel
  concatenated with the dense prompt channels below; it returns ``feature_size`` features per voxel;
* **prompt encoder** — spatial prompts are encoded densely, as MONAI's DeepGrow/DeepEdit
  guidance signals (see ``segloop.prompts.encoding``): channel 0 positive clicks and channel 1
  negative clicks (Gaussian blobs, peak 1), channel 2 the box (1 inside), channel 3 the previous
  mask (0..1; filled by training's simulated corrections only: inference leaves it empty, see
  ``segloop.prompts.zoom``). The label / text prompt is a class index (0 = "the structure under the clicks",
  1..N = the campaign's labels in ascending storage-index order);
* **mask decoder** — VISTA3D's ``ClassMappingClassify`` head: the class embedding of the label
  prompt, dotted with the post-mapped features, gives the mask logits.

Dense spatial prompts instead of SAM's sparse point tokens: convolutions see where a click is from
the first layer on, which is what makes the model learnable from a few dozen corrected cases in
minutes of CPU time (SAM-style sparse tokens need far more training to localise clicks).

Shapes: input ``x`` [B, 5, X, Y, Z] = the image (HU window mapped to 0..1) and the 4 prompt
channels; ``label`` [B] long (one query per image) or [B, K] (K class queries per image, from the
same features: training asks for every label at once when no spatial prompt is given); output
logits [B, K, X, Y, Z] (K = 1 for a [B] label). A negative class index is a padding query: its
channel holds class 0's logits and training ignores it. X, Y, Z must be multiples of
``size_multiple``. The label goes as a keyword so MONAI's inferers and ``PrepareBatchExtraInput``
can pass it.
"""

from dataclasses import dataclass
from typing import Dict, Tuple

import torch
from monai.networks.nets import SegResNetDS
from monai.networks.nets.vista3d import ClassMappingClassify

PROMPT_CHANNELS = 4  # positive clicks, negative clicks, box, previous mask


@dataclass(frozen=True)
class PromptPreset:
    name: str
    roi_size: Tuple[int, int, int]  # voxels per sliding window
    coarse_spacing: Tuple[float, float, float]  # mm, zoom-out pass over the whole volume
    fine_spacing: Tuple[float, float, float]  # mm, zoom-in pass on the region of interest
    init_filters: int
    blocks_down: Tuple[int, ...]
    feature_size: int
    lr: float  # AdamW learning rate of a training run


PROMPT_PRESETS: Dict[str, PromptPreset] = {
    # CPU default: 48^3 windows, 8 initial filters, sized for the latency target of a click under 1 s
    # on 2 CPU threads (timed by benchmarks/prompt_step_timing.py). Zoom-out at 6 mm (an adult
    # abdomen, 35 x 35 x 25 cm, in one 64 x 64 x 48 pass), zoom-in at 3 mm (a liver's region about
    # 72 x 64 x 64). Training views are the 2 x roi crop halved (the zoom-out scale) or roi windows
    # at full resolution, so coarse = 2 x fine spacing.
    "prompt_cpu": PromptPreset("prompt_cpu", (48, 48, 48), (6.0, 6.0, 6.0), (3.0, 3.0, 3.0), 8, (1, 2, 2, 4), 16, 3e-3),
    # GPU: VISTA3D-sized encoder (48 filters, five levels) on 128^3 windows, zoom-in at 1.5 mm.
    # 3e-4: at 3e-3 its loss diverges (benchmarks/trials.md, section "Earlier result
    # files", bench_prompt_gpu_h200).
    "prompt": PromptPreset("prompt", (128, 128, 128), (3.0, 3.0, 3.0), (1.5, 1.5, 1.5), 48, (1, 2, 2, 4, 4), 48, 3e-4),
}
DEFAULT_PROMPT_NETWORK = "prompt_cpu"


def get_prompt_preset(name: str) -> PromptPreset:
    if name not in PROMPT_PRESETS:
        raise ValueError(f"unknown prompt network {name!r}; choose one of {sorted(PROMPT_PRESETS)}")
    return PROMPT_PRESETS[name]


class PromptSegNet(torch.nn.Module):
    def __init__(self, num_labels: int, init_filters: int = 16, blocks_down=(1, 2, 2, 4), feature_size: int = 16):
        super().__init__()
        self.num_classes = num_labels + 1  # class 0: "the structure the spatial prompts point at"
        self.image_encoder = SegResNetDS(
            spatial_dims=3,
            in_channels=1 + PROMPT_CHANNELS,
            out_channels=feature_size,
            init_filters=init_filters,
            blocks_down=tuple(blocks_down),
            norm="instance",
            dsdepth=1,
        )
        self.class_head = ClassMappingClassify(n_classes=self.num_classes, feature_size=feature_size, use_mlp=True)

    @property
    def size_multiple(self) -> int:
        """Every input size must be a multiple of this (8 for four encoder levels, 16 for five)."""
        return int(max(self.image_encoder.shape_factor()))

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        features = self.image_encoder(x)
        labels = torch.as_tensor(label, device=x.device).long()
        labels = labels.reshape(-1, 1) if labels.dim() < 2 else labels
        labels = labels.expand(features.shape[0], labels.shape[1]).clamp(min=0)
        logits = []
        # ClassMappingClassify maps one image's features to one mask per entry of its class vector.
        for b in range(features.shape[0]):
            masks, _ = self.class_head(features[b : b + 1], labels[b].reshape(-1, 1))
            logits.append(masks[:, 0])  # [K, X, Y, Z]
        return torch.stack(logits)


def build_prompt_network(name: str, num_labels: int) -> PromptSegNet:
    preset = get_prompt_preset(name)
    return PromptSegNet(num_labels, preset.init_filters, preset.blocks_down, preset.feature_size)
