"""Quarantine of labelled cases whose stored image or label no longer decodes.

A truncated ``.nii.gz`` (or a file cut short inside its voxel data) would fail every training
run. Before a run, each image and label of the datalist is decoded in full; a case that fails is
left out of the run and listed in ``<model_dir>/<model>/quarantine.json``::

    {image_id: {"error": "EOFError: ...", "file": "case_007.nii.gz", "label_ts": 1700000000, "time": ISO}}

which ``CampaignLoop.summary`` shows as ``quarantined``. A case that decodes again (file restored
or label re-saved) leaves the quarantine at the next run. Decode results are cached per
(path, mtime, size) for the life of the :class:`Quarantine`, so unchanged files are decoded once.
"""

import datetime
import json
import logging
import os
from typing import Callable, Dict, List, Optional, Tuple

from segloop.errors import ClientError
from segloop.io import atomic_write_json
from segloop.validation import read_header, read_voxels

logger = logging.getLogger(__name__)


def decode_error(path: str) -> Optional[str]:
    """None if the NIfTI at ``path`` decodes in full (the upload checks: header and every voxel),
    else what is wrong."""
    try:
        read_voxels(path, read_header(path, what=os.path.basename(path)), what=os.path.basename(path))
    except ClientError as e:
        return e.message
    except OSError as e:  # gone or unreadable since the datalist was built
        return f"{type(e).__name__}: {e}"
    return None


class Quarantine:
    def __init__(self, path: str, decode: Callable[[str], Optional[str]] = decode_error):
        self.path = path
        self.decode = decode
        self._results: Dict[str, Tuple[Tuple[int, int], Optional[str]]] = {}  # path -> ((mtime_ns, size), error)

    def error(self, path: str) -> Optional[str]:
        """The decode error of ``path`` (None: readable), decoded again only when its (mtime, size) changes."""
        try:
            st = os.stat(path)
        except OSError as e:
            return f"{type(e).__name__}: {e}"
        key = (st.st_mtime_ns, st.st_size)
        cached = self._results.get(path)
        if cached is None or cached[0] != key:
            cached = (key, self.decode(path))
            self._results[path] = cached
        return cached[1]

    def read(self) -> Dict[str, Dict]:
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def first_failure(self, item: Dict) -> Optional[Tuple[str, str]]:
        """(file, error) of the first of the item's image and label that does not decode."""
        for path in (item.get("image"), item.get("label")):
            error = self.error(str(path)) if path else None
            if error:
                return str(path), error
        return None

    def filter(self, datalist: List[Dict], case_id: Callable[[Dict], str]) -> List[Dict]:
        """The readable items of ``datalist``; the others are (re)written to the quarantine file."""
        previous = self.read()
        readable, quarantined = [], {}
        for item in datalist:
            failed = self.first_failure(item)
            if failed is None:
                readable.append(item)
                continue
            image_id, (path, error) = case_id(item), failed
            old = previous.get(image_id) or {}
            quarantined[image_id] = {
                "error": error,
                "file": os.path.basename(path),
                "label_ts": item.get("label_ts"),
                "time": old.get("time") if old.get("error") == error else datetime.datetime.now().isoformat(timespec="seconds"),
            }
            logger.warning(f"quarantined {image_id}: {os.path.basename(path)} does not decode ({error}); left out of training")
        for image_id in sorted(set(previous) - set(quarantined)):
            logger.info(f"{image_id} decodes again: out of quarantine")
        if quarantined != previous:
            atomic_write_json(self.path, quarantined)
        return readable
