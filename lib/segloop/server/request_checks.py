"""Request checks that the SegLoop MONAI Label app applies before handing work to MONAI Label."""

import os
from typing import Any, Dict, Optional

from segloop.errors import bad_request, not_found
from segloop.validation import DEFAULT_MAX_VOXELS, check_id, check_image, is_upload_tempfile, read_header


def is_inside(path: str, folder: Optional[str]) -> bool:
    if not folder:
        return False
    root = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), root]) == root


def check_infer_image(
    request: Dict[str, Any], datastore, sessions_folder: Optional[str] = None, max_voxels: int = DEFAULT_MAX_VOXELS
) -> None:
    """Upstream accepts any server path as ``image``; SegLoop accepts a datastore id, an uploaded
    file, or the image of a MONAI Label session (``session_id``), which lives in ``sessions_folder``.
    An uploaded file is decoded whole first (a truncated one is a 400, not a failed inference).
    The request surface (:mod:`segloop.server.surface`) already refuses paths from the client;
    this is the second line.
    """
    image = request.get("image")
    if not isinstance(image, str) or not image:
        return  # MONAI Label itself answers that an image is missing
    if os.path.isabs(image) and os.path.exists(image):
        if is_upload_tempfile(image):
            check_image(image, what="uploaded image", max_voxels=max_voxels)
            return
        if request.get("session") and is_inside(image, sessions_folder):
            read_header(image, what="session image", max_voxels=max_voxels)  # decoded whole when the session was made
            return
    check_id(image)
    if not datastore.get_image_uri(image):
        raise not_found(f"image {image!r} is not in the datastore")


def check_client_id(client_id: Any) -> Optional[str]:
    """A client-declared annotator name (``client_id``): printable text of at most 128 characters
    (it is stored in bookings and label info, never used as a path), or nothing."""
    if client_id in (None, ""):
        return None
    if not isinstance(client_id, str) or len(client_id) > 128 or not client_id.isprintable():
        raise bad_request(f"client_id must be printable text of at most 128 characters, got {str(client_id)[:40]!r}")
    return client_id
