"""Training augmentation: each labelled structure's intensity moved on its own.

Between contrast phases, scanners and patients an organ's enhancement changes independently of
the tissue around it: a spleen can be 40 HU brighter than the fat and muscle beside it in one scan
and as dense as them in another. MONAI's intensity augmentations (``RandShiftIntensityd``,
``RandScaleIntensityd``, ``RandHistogramShiftd``) change the whole image at once or through one
monotonic curve, so the contrast between a structure and its surroundings, relative to the noise,
stays what the training cases happened to have. This transform draws, for each foreground label of
a sample, an offset added to that label's voxels only: the network sees the same shapes and places
at other contrasts and has to rely on them too.
"""

from typing import Hashable, Mapping, Sequence, Tuple

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform


class RandLabelIntensityShiftd(RandomizableTransform, MapTransform):
    """For each foreground label present in ``data[label_key]`` (a (1, H, W, D) map of channel
    indices, 0 = background), with probability ``prob``, add one offset drawn uniformly from
    ``offsets`` (image units: after the HU window is mapped to [0, 1], ``hu / window width``) to
    every voxel of ``keys`` ((C, H, W, D), same grid) inside that label. Background and the other labels are unchanged; the
    result is not clipped (a shifted structure may leave the window, as real enhancement can)."""

    backend = [torch.Tensor, np.ndarray]

    def __init__(self, keys: KeysCollection, label_key: str, offsets: Tuple[float, float], prob: float = 0.25,
                 allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=prob)
        low, high = (float(v) for v in offsets)
        if low > high:
            raise ValueError(f"offsets must be (low, high) with low <= high, got {offsets}")
        self.label_key, self.offsets = label_key, (low, high)

    def draws(self, labels: Sequence[int]) -> dict:
        """label -> offset for the labels this call shifts (each independently with ``prob``)."""
        shifts = {}
        for label in labels:
            if self.R.rand() < self.prob:
                shifts[int(label)] = float(self.R.uniform(*self.offsets))
        return shifts

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        label = torch.as_tensor(d[self.label_key])
        present = [int(v) for v in torch.unique(label).tolist() if int(v) != 0]
        shifts = self.draws(present)
        if not shifts:
            return d
        offset_map = torch.zeros(label.shape, dtype=torch.float32)
        for value, offset in shifts.items():
            offset_map[label == value] = offset
        for key in self.key_iterator(d):  # (C, H, W, D) images: every channel moves alike
            image = d[key]
            d[key] = image + (offset_map.to(image.device, image.dtype) if isinstance(image, torch.Tensor) else offset_map.numpy())
        return d
