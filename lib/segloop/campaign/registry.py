"""Numbered model versions, which one serves, and how it came to serve.

Layout under ``<model_dir>/<model>/``::

    registry.json        {"serving": 3, "running": {...} | null, "versions": [...], "events": [...]}
    versions/v0003.pt    checkpoint {"model": state_dict, "segloop_version": 3}

and the serving checkpoint itself at ``<model_dir>/<model>.pt`` (what the infer task loads and
reloads when its mtime changes). Publishing copies a version's file to a temporary name next to
the serving path and renames it, so an in-flight inference keeps the network it already loaded
and the next one loads the new version whole.

A version record holds: ``version``, ``parent``, ``status`` (``promoted`` | ``kept`` |
``failed`` | ``interrupted``), ``reason``, ``labels_used`` ({image id: label timestamp}),
``new_labels``, ``validation_cases``, ``val_dice`` and ``parent_val_dice`` (per label and
``mean``, measured on the same cases in the same run), ``train_seconds``, ``iterations``,
``created`` (ISO time), ``sha256`` (hex digest of its checkpoint file, when it has one) and, for
failures, ``error``.

Integrity: a version's file is published only if its sha256 matches its record, and
:meth:`ModelRegistry.verify_serving` (called by the infer task whenever it (re)loads the serving
file) restores the last good version when the serving file no longer matches (replaced or
corrupted on disk), recording a ``checkpoint_mismatch`` event. Records without ``sha256`` predate
this check and are accepted as they are.

Every write happens under a file lock and is atomic: the train subprocess records versions while
the server process reads the registry and serves rollbacks.
"""

import datetime
import hashlib
import json
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

import torch
from filelock import FileLock

from segloop.errors import conflict, not_found
from segloop.io import atomic_path, atomic_write_json

VERSION_KEY = "segloop_version"


COMPLETED = ("promoted", "kept")  # statuses of runs that finished: their labels count as seen


def now_iso() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRegistry:
    def __init__(self, model_dir: str, name: str):
        self.name = name
        self.folder = os.path.join(model_dir, name)
        self.versions_dir = os.path.join(self.folder, "versions")
        self.path = os.path.join(self.folder, "registry.json")
        self.serving_path = os.path.join(model_dir, f"{name}.pt")
        self.quarantine_path = os.path.join(self.folder, "quarantine.json")  # written by the trainer
        os.makedirs(self.versions_dir, exist_ok=True)
        self._lock = FileLock(self.path + ".lock")
        self._hashes: Dict[str, Tuple[Tuple[int, int], str]] = {}  # path -> ((mtime_ns, size), sha256)

    # -- reading -------------------------------------------------------------------------------
    def _read(self) -> Dict[str, Any]:
        if not os.path.exists(self.path):
            return {"serving": None, "running": None, "versions": [], "events": []}
        with open(self.path) as f:
            return json.load(f)

    def state(self) -> Dict[str, Any]:
        with self._lock:
            return self._read()

    def serving(self) -> Optional[int]:
        return self.state()["serving"]

    def latest_record(self) -> Optional[Dict[str, Any]]:
        """The most recent run of any status."""
        versions = self.state()["versions"]
        return versions[-1] if versions else None

    def latest_completed(self) -> Optional[Dict[str, Any]]:
        """The most recent run that finished (``promoted`` or ``kept``): its ``labels_seen`` tells
        which labels are not new. A failed or interrupted run saw nothing."""
        return next((v for v in reversed(self.state()["versions"]) if v.get("status") in COMPLETED), None)

    def checkpoint_path(self, number: int) -> str:
        return os.path.join(self.versions_dir, f"v{number:04d}.pt")

    # -- runs ----------------------------------------------------------------------------------
    def start_run(self, run_id: str, request: Dict[str, Any]) -> None:
        """Mark a run as in progress (so a restart can tell it never finished)."""
        with self._lock:
            state = self._read()
            state["running"] = {"run_id": run_id, "started": now_iso(), "pid": os.getpid(), "request": request}
            atomic_write_json(self.path, state)

    def discard_interrupted_run(self) -> Optional[Dict[str, Any]]:
        """At server start: a run still marked running died with the previous server; record it."""
        with self._lock:
            state = self._read()
            running = state.get("running")
            if not running:
                return None
            state["running"] = None
            state["events"].append({"event": "interrupted", "run": running, "time": now_iso()})
            atomic_write_json(self.path, state)
        shutil.rmtree(os.path.join(self.folder, f"run_{running['run_id']}"), ignore_errors=True)
        return running

    def record(
        self, record: Dict[str, Any], state_dict: Optional[Dict[str, torch.Tensor]], promote: bool
    ) -> Dict[str, Any]:
        """Store a finished (or failed) run as the next version; publish it if ``promote``."""
        with self._lock:
            state = self._read()
            number = 1 + max([v["version"] for v in state["versions"]], default=0)
            record = dict(record, version=number, created=now_iso())
            if state_dict is not None:
                with atomic_path(self.checkpoint_path(number)) as tmp:
                    torch.save({"model": state_dict, VERSION_KEY: number}, tmp)
                    record["sha256"] = sha256_file(tmp)
            state["versions"].append(record)
            state["running"] = None
            if promote and state_dict is not None:
                self._publish(state, number, event="promoted")
            else:
                atomic_write_json(self.path, state)
            return record

    # -- serving -------------------------------------------------------------------------------
    def _record_of(self, state: Dict[str, Any], number: Optional[int]) -> Optional[Dict[str, Any]]:
        return next((v for v in state["versions"] if v["version"] == number), None)

    def _verified_bytes(self, state: Dict[str, Any], number: int) -> Tuple[Optional[bytes], str]:
        """(content of version ``number``'s file, "") if it matches its recorded sha256 (or the
        record has none), else (None, why not)."""
        path = self.checkpoint_path(number)
        if not os.path.exists(path):
            return None, f"version {number} has no checkpoint file"
        with open(path, "rb") as f:
            data = f.read()
        expected = (self._record_of(state, number) or {}).get("sha256")
        found = sha256_bytes(data)
        if expected and found != expected:
            return None, f"version {number}'s checkpoint {os.path.basename(path)} has sha256 {found}, its record says {expected}"
        return data, ""

    def _write_serving(self, data: bytes) -> None:
        with atomic_path(self.serving_path) as tmp:
            with open(tmp, "wb") as dst:
                dst.write(data)

    def _publish(self, state: Dict[str, Any], number: int, event: str) -> None:
        """Serve version ``number`` (refusing a file that does not match its record) and save ``state``.

        The registry is written before the serving file: a crash between the two leaves a registry
        naming a version whose intact stored file :meth:`verify_serving` puts in place at the next
        start, never a serving file the registry does not know.
        """
        data, problem = self._verified_bytes(state, number)
        if data is None:
            raise conflict(f"{problem}: the file was changed or corrupted on disk, so it cannot serve")
        state["events"].append({"event": event, "version": number, "previous": state["serving"], "time": now_iso()})
        state["serving"] = number
        atomic_write_json(self.path, state)
        self._write_serving(data)

    def file_sha256(self, path: str) -> str:
        """sha256 of ``path``, hashed again only when its (mtime, size) changes."""
        st = os.stat(path)
        key = (st.st_mtime_ns, st.st_size)
        cached = self._hashes.get(path)
        if cached is None or cached[0] != key:
            cached = (key, sha256_file(path))
            self._hashes[path] = cached
        return cached[1]

    def verify_serving(self) -> Optional[Dict[str, Any]]:
        """Check the serving file against the serving version's recorded sha256.

        None if it matches (or nothing serves, or the record predates hashes). Otherwise restore
        the last good version (the serving version's own stored file if intact, else the newest
        promoted version whose file matches), or, with none, remove the serving file so nothing
        serves; record and return a ``checkpoint_mismatch`` event saying which.
        """
        with self._lock:
            state = self._read()
            number = state["serving"]
            expected = (self._record_of(state, number) or {}).get("sha256")
            if number is None or not expected:
                return None
            found = self.file_sha256(self.serving_path) if os.path.exists(self.serving_path) else None
            if found == expected:
                return None
            candidates = [number] + [
                v["version"] for v in reversed(state["versions"]) if v.get("status") == "promoted" and v["version"] != number
            ]
            restored, data = None, None
            for candidate in candidates:
                if (self._record_of(state, candidate) or {}).get("sha256"):  # only a hash-checked file can restore
                    data, _ = self._verified_bytes(state, candidate)
                    if data is not None:
                        restored = candidate
                        break
            reason = (
                f"serving checkpoint {os.path.basename(self.serving_path)} does not match version {number}'s sha256 "
                "(replaced or corrupted on disk, or a crash cut its publication short)"
            )
            if data is not None:
                self._write_serving(data)
                reason += f"; restored version {restored} from its stored checkpoint"
            elif os.path.exists(self.serving_path):
                os.unlink(self.serving_path)
                reason += "; no stored version matches its record, so nothing serves until a version is trained or rolled back"
            event = {
                "event": "checkpoint_mismatch", "found": found, "expected": expected, "restored": restored,
                "previous": number, "reason": reason, "time": now_iso(),
            }
            state["events"].append(event)
            state["serving"] = restored
            atomic_write_json(self.path, state)
            return event

    def rollback(self, number: int) -> Dict[str, Any]:
        """Serve an earlier (or any stored) version; the history keeps every version."""
        with self._lock:
            state = self._read()
            record = self._record_of(state, number)
            if record is None:
                raise not_found(f"model {self.name!r} has no version {number}")
            if not os.path.exists(self.checkpoint_path(number)):
                raise conflict(f"version {number} has no checkpoint ({record.get('status')}): it cannot serve")
            self._publish(state, number, event="rollback")
            return {"serving": number, "previous": state["events"][-1]["previous"]}

    def temperature(self, number: Optional[int]) -> float:
        """The softmax temperature fitted on validation for version ``number`` (1.0 if none was)."""
        record = next((v for v in self.state()["versions"] if v["version"] == number), None)
        return float(((record or {}).get("calibration") or {}).get("temperature") or 1.0)

    def history(self) -> List[Dict[str, Any]]:
        state = self.state()
        return [dict(v, serving=v["version"] == state["serving"]) for v in state["versions"]]
