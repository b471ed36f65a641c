"""Checks on what clients send: ids, uploaded volumes and label maps.

Each check raises a ``ClientError`` (HTTP 4xx) naming the problem; nothing is written before
every check has passed.
"""

import os
import re
from dataclasses import dataclass
from typing import Mapping

import nibabel as nib
import numpy as np

from segloop.errors import bad_request, unprocessable

ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
AFFINE_TOLERANCE_MM = 1e-3


def check_id(value: str, what: str = "image id") -> str:
    """An id is a plain file-name stem: letters, digits, '.', '_' and '-', not '.' or '..'."""
    if not isinstance(value, str) or not ID_PATTERN.match(value) or set(value) == {"."}:
        raise bad_request(f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-' only")
    return value


@dataclass
class VolumeHeader:
    shape: tuple  # voxels
    affine: np.ndarray  # 4x4, voxel index -> RAS+ world mm


def read_header(path: str, what: str = "image") -> VolumeHeader:
    """Read a NIfTI header (no voxel data). Raises 400 if unreadable, not 3-D, or degenerate."""
    if not path.endswith(NIFTI_SUFFIXES):
        raise bad_request(f"{what}: only NIfTI files (.nii, .nii.gz) are accepted, got {os.path.basename(path)!r}")
    try:
        img = nib.load(path)
        shape = tuple(int(v) for v in img.shape)
        affine = np.asarray(img.affine, dtype=float)
    except Exception as e:  # nibabel raises many types for corrupt files
        raise bad_request(f"{what}: not a readable NIfTI file ({e})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3 or min(shape) < 2:
        raise bad_request(f"{what}: expected a 3-D volume, got shape {shape}")
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise bad_request(f"{what}: the affine (voxel to world) is singular or not finite")
    return VolumeHeader(shape, affine)


def check_label_matches(label_path: str, image: VolumeHeader, labels: Mapping[str, int]) -> np.ndarray:
    """A label must share the image's grid and use only background or known label indices.

    Returns the label's voxel array (uint8). Raises 400/422 with the mismatch spelled out.
    """
    header = read_header(label_path, what="label")
    if header.shape != image.shape:
        raise unprocessable(f"label shape {header.shape} does not match the image shape {image.shape}")
    if not np.allclose(header.affine, image.affine, atol=AFFINE_TOLERANCE_MM):
        raise unprocessable(
            "label geometry (affine) does not match the image: "
            f"label {np.round(header.affine, 3).tolist()} vs image {np.round(image.affine, 3).tolist()}"
        )
    data = np.asanyarray(nib.load(label_path).dataobj)
    data = data.reshape(header.shape)
    if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
        raise unprocessable("label values must be whole numbers")
    values = set(np.unique(data).astype(int).tolist())
    unknown = sorted(values - {0, *labels.values()})
    if unknown:
        raise unprocessable(f"label contains values {unknown} that are not in the label map {dict(labels)}")
    return data.astype(np.uint8)
