"""Request checks that the SegLoop MONAI Label app applies before handing work to MONAI Label."""

import os
import tempfile
from typing import Any, Dict, Optional

from segloop.errors import not_found
from segloop.validation import check_id


def is_upload_tempfile(path: str) -> bool:
    """True for the temporary file MONAI Label's ``/infer`` writes an uploaded image to."""
    real = os.path.realpath(path)
    return os.path.dirname(real) == os.path.realpath(tempfile.gettempdir()) and os.path.basename(real).startswith("tmp")


def is_inside(path: str, folder: Optional[str]) -> bool:
    if not folder:
        return False
    root = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), root]) == root


def check_infer_image(request: Dict[str, Any], datastore, sessions_folder: Optional[str] = None) -> None:
    """Upstream accepts any server path as ``image``; SegLoop accepts a datastore id, an uploaded
    file, or the image of a MONAI Label session (``session_id``), which lives in ``sessions_folder``.
    """
    image = request.get("image")
    if not isinstance(image, str) or not image:
        return  # MONAI Label itself answers that an image is missing
    if os.path.isabs(image) and os.path.exists(image):
        if is_upload_tempfile(image) or (request.get("session") and is_inside(image, sessions_folder)):
            return
    check_id(image)
    if not datastore.get_image_uri(image):
        raise not_found(f"image {image!r} is not in the datastore")
