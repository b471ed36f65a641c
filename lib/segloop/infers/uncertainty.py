"""Per-voxel uncertainty maps returned next to the automatic label map (``uncertainty: true``).

The infer task's probabilities (softmax of the logits divided by the serving version's fitted
temperature) are resampled back to the input grid; from them:

* the uncertainty map: normalised predictive entropy per voxel, float32 in [0, 1] (0 = certain),
  a NIfTI with exactly the input image's shape and affine, so a viewer overlays it directly;
* per-label confidence: the mean top-class probability over the voxels given that label.

Maps are kept under ``<folder>/<token>.nii.gz`` (the newest ``KEEP`` of them) and fetched with
``GET /segloop/uncertainty/{token}``.
"""

import os
import re
import uuid
from typing import Dict, Mapping, Optional

import nibabel as nib
import numpy as np
import torch

from segloop.io import atomic_path
from segloop.scoring.uncertainty import entropy_map

KEEP = 50
TOKEN = re.compile(r"^[0-9a-f]{32}$")


def label_confidence(probs: torch.Tensor, labels: Mapping[str, int]) -> Dict[str, Optional[float]]:
    """Mean top-class probability per label name over the voxels predicted as it (None: none predicted).

    ``probs [C, H, W, D]`` indexed by network channel; ``labels`` maps names to channels 1..C-1.
    """
    confidence, predicted = probs.max(dim=0)
    out: Dict[str, Optional[float]] = {}
    for name, channel in labels.items():
        mask = predicted == channel
        out[name] = round(float(confidence[mask].mean()), 4) if mask.any() else None
    return out


class UncertaintyMaps:
    def __init__(self, folder: str):
        self.folder = folder

    def write(self, probs: torch.Tensor, affine: np.ndarray) -> Dict:
        """Save the entropy map of ``probs [C, H, W, D]`` on a grid with ``affine``; returns its summary."""
        os.makedirs(self.folder, exist_ok=True)
        uncertainty = entropy_map(probs.float()).numpy().astype(np.float32)
        token = uuid.uuid4().hex
        image = nib.Nifti1Image(uncertainty, affine)
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        with atomic_path(self.path(token)) as tmp:
            nib.save(image, tmp)
        self._prune()
        return {
            "token": token,
            "url": f"/segloop/uncertainty/{token}",
            "mean": round(float(uncertainty.mean()), 5),
            "max": round(float(uncertainty.max()), 5),
            "shape": list(uncertainty.shape),
        }

    def path(self, token: str) -> str:
        return os.path.join(self.folder, f"{token}.nii.gz")

    @staticmethod
    def valid(token: str) -> bool:
        """Tokens are 32 hex digits: nothing else ever reaches the file system."""
        return bool(TOKEN.match(token or ""))

    def _prune(self) -> None:
        files = sorted(
            (os.path.join(self.folder, f) for f in os.listdir(self.folder) if f.endswith(".nii.gz")),
            key=os.path.getmtime,
        )
        for stale in files[:-KEEP]:
            os.unlink(stale)
