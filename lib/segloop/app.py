"""Request checks that the SegLoop MONAI Label app applies before handing work to MONAI Label."""

import os
import tempfile
from typing import Any, Dict

from segloop.errors import not_found
from segloop.validation import check_id


def is_upload_tempfile(path: str) -> bool:
    """True for the temporary file MONAI Label's ``/infer`` writes an uploaded image to."""
    real = os.path.realpath(path)
    return os.path.dirname(real) == os.path.realpath(tempfile.gettempdir()) and os.path.basename(real).startswith("tmp")


def check_infer_image(request: Dict[str, Any], datastore) -> None:
    """Upstream accepts any server path as ``image``; SegLoop accepts a datastore id or an upload."""
    image = request.get("image")
    if not isinstance(image, str) or not image:
        return  # MONAI Label itself answers that an image is missing
    if os.path.isabs(image) and is_upload_tempfile(image) and os.path.isfile(image):
        return
    check_id(image)
    if not datastore.get_image_uri(image):
        raise not_found(f"image {image!r} is not in the datastore")
