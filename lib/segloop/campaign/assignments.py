"""Which annotator is working on which case, so concurrent annotators never get the same one.

``/activelearning/{strategy}`` hands a case to the request's ``client_id`` and books it for
``lock_seconds`` (``--conf assignment_lock_s``). While booked, no other client is offered it; when
the same client asks again, its previous booking is released (it moved on). Saving a final label
releases the case. A request without ``client_id`` counts as a new anonymous annotator.

Bookings live in ``<model_dir>/assignments.json`` (file lock, atomic writes), so they survive a
restart and are shared by every worker process.
"""

import json
import os
import time
import uuid
from typing import Any, Dict, Optional, Set

from filelock import FileLock

from segloop.io import atomic_write_json


class AssignmentBook:
    def __init__(self, folder: str, lock_seconds: float):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, "assignments.json")
        self.lock_seconds = float(lock_seconds)
        self._lock = FileLock(self.path + ".lock")

    def _read(self) -> Dict[str, Dict[str, Any]]:
        if not os.path.exists(self.path):
            return {}
        with open(self.path) as f:
            return json.load(f)

    def _live(self, book: Dict[str, Dict[str, Any]], now: float) -> Dict[str, Dict[str, Any]]:
        return {image: a for image, a in book.items() if now - a["ts"] < self.lock_seconds}

    def active(self, now: Optional[float] = None) -> Dict[str, Dict[str, Any]]:
        """{image id: {"client_id", "strategy", "ts"}} of bookings still inside the lock window."""
        with self._lock:
            return self._live(self._read(), time.time() if now is None else now)

    @staticmethod
    def client(client_id: Optional[str]) -> str:
        return str(client_id) if client_id else f"anonymous-{uuid.uuid4().hex[:8]}"

    def held_by_others(self, client_id: str, now: Optional[float] = None) -> Set[str]:
        return {image for image, a in self.active(now).items() if a["client_id"] != client_id}

    def held_by(self, client_id: str, now: Optional[float] = None) -> Set[str]:
        return {image for image, a in self.active(now).items() if a["client_id"] == client_id}

    def assign(self, image_id: str, client_id: str, strategy: str, now: Optional[float] = None) -> None:
        """Book ``image_id`` for ``client_id``, releasing that client's earlier bookings."""
        now = time.time() if now is None else now
        with self._lock:
            book = {i: a for i, a in self._live(self._read(), now).items() if a["client_id"] != client_id}
            book[image_id] = {"client_id": client_id, "strategy": strategy, "ts": now}
            atomic_write_json(self.path, book)

    def release(self, image_id: str) -> None:
        with self._lock:
            book = self._read()
            if book.pop(image_id, None) is not None:
                atomic_write_json(self.path, book)


class UnassignedView:
    """A datastore whose ``get_unlabeled_images`` leaves out ``excluded`` ids (cases booked by
    others): upstream strategies (random, first) then respect bookings without being rewritten."""

    def __init__(self, datastore, excluded: Set[str]):
        self._datastore = datastore
        self._excluded = set(excluded)

    def get_unlabeled_images(self, *args, **kwargs):
        return [i for i in self._datastore.get_unlabeled_images(*args, **kwargs) if i not in self._excluded]

    def __getattr__(self, name):
        return getattr(self._datastore, name)
