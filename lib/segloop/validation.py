"""Checks on what clients send: ids, uploaded volumes and label maps.

Each check raises a ``ClientError`` (HTTP 4xx) naming the problem; nothing is written before
every check has passed.
"""

import math
import os
import re
import tempfile
from dataclasses import dataclass
from typing import Mapping, Optional

import nibabel as nib
import numpy as np

from segloop.errors import bad_request, too_large, unprocessable

ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]+$")
MAX_ID_LENGTH = 128  # file names stay far below the file system's 255 bytes with any suffix
NIFTI_SUFFIXES = (".nii", ".nii.gz")
FILE_SUFFIXES = NIFTI_SUFFIXES + (".nrrd", ".gz")
AFFINE_TOLERANCE_MM = 1e-3
DEFAULT_MAX_VOXELS = 2**29  # 512 x 512 x 2048: a whole-body CT; float32 copies stay near 2 GiB


def check_id(value: str, what: str = "image id") -> str:
    """An id is a plain file-name stem: letters, digits, '.', '_' and '-', not '.' or '..', at most
    MAX_ID_LENGTH characters, not ending in a file suffix (a rescan would strip it off again)."""
    if not isinstance(value, str) or not ID_PATTERN.match(value) or set(value) == {"."}:
        raise bad_request(f"invalid {what} {value!r}: use letters, digits, '.', '_' and '-' only")
    if len(value) > MAX_ID_LENGTH:
        raise bad_request(f"invalid {what}: {len(value)} characters, at most {MAX_ID_LENGTH}")
    if value.lower().endswith(FILE_SUFFIXES):
        raise bad_request(f"invalid {what} {value!r}: an id must not end in a file suffix ({', '.join(FILE_SUFFIXES)})")
    return value


def is_upload_tempfile(path: str) -> bool:
    """True for the temporary file MONAI Label writes an upload of ``/infer`` to (``image`` or
    the ``label`` file): directly in the temporary folder, named ``tmp*``."""
    real = os.path.realpath(path)
    return os.path.dirname(real) == os.path.realpath(tempfile.gettempdir()) and os.path.basename(real).startswith("tmp")


@dataclass
class VolumeHeader:
    shape: tuple  # voxels
    affine: np.ndarray  # 4x4, voxel index -> RAS+ world mm


def read_header(path: str, what: str = "image", max_voxels: Optional[int] = None) -> VolumeHeader:
    """Read a NIfTI header (no voxel data). Raises 400 if unreadable, not 3-D, or degenerate,
    413 if it claims more than ``max_voxels`` voxels."""
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
    if max_voxels and math.prod(shape) > max_voxels:
        raise too_large(f"{what}: {'x'.join(map(str, shape))} voxels is more than this server accepts ({max_voxels:,}; --conf max_voxels)")
    return VolumeHeader(shape, affine)


def read_voxels(path: str, header: VolumeHeader, what: str = "image") -> np.ndarray:
    """Decode every voxel (the header alone does not show a truncated or corrupt data stream).

    Returns the array in the stored dtype (scaled if the header says so), shaped ``header.shape``.
    """
    try:
        data = np.asanyarray(nib.load(path).dataobj)
    except Exception as e:  # gzip (EOFError, zlib.error), short reads (ValueError, OSError), ...
        raise bad_request(f"{what}: the voxel data is truncated or corrupt ({type(e).__name__}: {e})") from None
    if data.dtype.fields is not None or data.dtype.kind not in "iufb":
        raise bad_request(f"{what}: voxel type {data.dtype} is not a scalar number (RGB or structured data?)")
    return data.reshape(header.shape)


def check_image(path: str, what: str = "image", max_voxels: Optional[int] = DEFAULT_MAX_VOXELS) -> VolumeHeader:
    """A whole, readable, finite 3-D scalar volume within the size cap (checked from the header first)."""
    header = read_header(path, what=what, max_voxels=max_voxels)
    data = read_voxels(path, header, what=what)
    if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
        raise unprocessable(f"{what}: the volume contains NaN or infinite values")
    return header


def _values_present(data: np.ndarray) -> set:
    """The distinct values of an integer-valued array (for small non-negative values a histogram:
    one pass, where ``np.unique`` sorts the whole volume)."""
    if data.size and data.dtype.kind in "iub" and 0 <= data.min() and data.max() < 4096:
        return set(np.flatnonzero(np.bincount(data.ravel().astype(np.intp, copy=False))).tolist())
    return set(np.unique(data).astype(int).tolist())


def check_label_matches(label_path: str, image: VolumeHeader, labels: Mapping[str, int]) -> np.ndarray:
    """A label must share the image's grid and use only background or known label indices.

    Returns the label's voxel array (uint8). Raises 400/422 with the mismatch spelled out.
    """
    header = read_header(label_path, what="label")
    stored = nib.load(label_path).get_data_dtype()
    if stored.fields is not None or stored.kind not in "iu":
        raise unprocessable(f"label voxels must be stored as integers (uint8, int16, ...), got {stored}: save the label map as an integer volume")
    if header.shape != image.shape:
        raise unprocessable(f"label shape {header.shape} does not match the image shape {image.shape}")
    if not np.allclose(header.affine, image.affine, atol=AFFINE_TOLERANCE_MM):
        raise unprocessable(
            "label geometry (affine) does not match the image: "
            f"label {np.round(header.affine, 3).tolist()} vs image {np.round(image.affine, 3).tolist()}"
        )
    data = read_voxels(label_path, header, what="label")
    check_label_values(data, labels)
    return data.astype(np.uint8)


def check_label_values(data: np.ndarray, labels: Mapping[str, int], what: str = "label") -> None:
    """Every voxel is background or a known label index (422 naming the values that are not)."""
    if data.dtype.kind == "f" and (not np.all(np.isfinite(data)) or np.any(data != np.round(data))):
        raise unprocessable(f"{what} values must be whole numbers")  # scaled by scl_slope / scl_inter
    unknown = sorted(_values_present(data) - {0, *labels.values()})
    if unknown:
        raise unprocessable(f"{what} contains values {unknown} that are not in the label map {dict(labels)}")
