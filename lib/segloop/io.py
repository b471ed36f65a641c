"""Crash-safe file writes: write to a temporary file in the target folder, then ``os.replace``.

A reader (the infer task polling a checkpoint's mtime, the server reading its datastore JSON)
sees either the old file or the new one, never half of one.
"""

import glob
import json
import logging
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator

logger = logging.getLogger(__name__)
TEMPORARY_PREFIX = ".tmp-"

@contextmanager
def atomic_path(dest: str) -> Iterator[str]:
    """Yield a temporary path next to ``dest``; on success it replaces ``dest`` atomically."""
    folder = os.path.dirname(os.path.abspath(dest)) or "."
    os.makedirs(folder, exist_ok=True)
    suffix = "".join(os.path.basename(dest).partition(".")[1:])  # keep ".nii.gz" so writers pick the format
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX, suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_copy(src: str, dest: str) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def atomic_write_json(dest: str, obj: Any) -> None:
    with atomic_path(dest) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())


def json_safe(value: Any) -> Any:
    """NaN/inf (e.g. Dice of a label absent from every validation case) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def remove_leftover_temporaries(folder: str) -> int:
    """Delete the temporary files a killed writer left under ``folder`` (never data: a file
    becomes data only by its final rename). Call it before any writer of ``folder`` starts.
    Returns how many were removed."""
    leftovers = [p for p in glob.glob(os.path.join(folder, "**", TEMPORARY_PREFIX + "*"), recursive=True) if os.path.isfile(p)]
    for path in leftovers:
        os.unlink(path)
        logger.warning(f"removed {path}: a write cut short by an earlier crash")
    return len(leftovers)
