"""Per-image active-learning scores, stored with the model version that produced them.

One JSON file per model, ``<model_dir>/<model>/scores.json``::

    {"images": {image_id: record}, "job": {...progress of the current / last scoring job...}}

A record holds ``version`` (the serving model version scored), ``label_ts`` (None while the image
is unlabelled), ``components`` (which of ``embedding``, ``entropy``, ``mc``, ``tta`` it has), the
scores themselves, ``seconds`` and ``scored`` (ISO time), or ``error`` when scoring failed.
A record is *stale* when the serving version or its label has changed or it lacks a needed
component; an ``error`` record is stale only when the version or the label changed (scoring the
same unreadable file again would fail again).

The scoring job (a MONAI Label subprocess) writes one record at a time under a file lock,
atomically; the server only reads, so ``/activelearning`` never waits for a job.
"""

import datetime
import json
import os
from typing import Any, Dict, Iterable, Optional

from filelock import FileLock

from segloop.io import atomic_write_json, json_safe

COMPONENTS = ("embedding", "entropy", "mc", "tta")


class ScoreStore:
    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, "scores.json")
        self._lock = FileLock(self.path + ".lock")

    def _read(self) -> Dict[str, Any]:
        if not os.path.exists(self.path):
            return {"images": {}, "job": None}
        with open(self.path) as f:
            return json.load(f)

    def state(self) -> Dict[str, Any]:
        with self._lock:
            return self._read()

    def records(self) -> Dict[str, Dict[str, Any]]:
        return self.state()["images"]

    def _update(self, change) -> None:
        with self._lock:
            state = self._read()
            change(state)
            atomic_write_json(self.path, json_safe(state))

    def put(self, image_id: str, record: Dict[str, Any]) -> None:
        record = dict(record, scored=datetime.datetime.now().isoformat(timespec="seconds"))
        self._update(lambda s: s["images"].__setitem__(image_id, record))

    def set_job(self, new: bool = False, **fields) -> None:
        """Update the job's progress fields (``new``: start a fresh job record)."""

        def change(state):
            state["job"] = dict({} if new else state.get("job") or {}, **fields)

        self._update(change)

    @staticmethod
    def is_stale(record: Optional[Dict], version: Optional[int], label_ts: Any, needed: Iterable[str]) -> bool:
        if not record or record.get("version") != version or record.get("label_ts") != label_ts:
            return True
        if record.get("error"):  # the same file would fail again: retry with the next version or label
            return False
        return not set(needed) <= set(record.get("components", ()))
