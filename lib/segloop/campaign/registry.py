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
``created`` (ISO time) and, for failures, ``error``.

Every write happens under a file lock and is atomic: the train subprocess records versions while
the server process reads the registry and serves rollbacks.
"""

import datetime
import json
import os
import shutil
from typing import Any, Dict, List, Optional

import torch
from filelock import FileLock

from segloop.errors import conflict, not_found
from segloop.io import atomic_path, atomic_write_json

VERSION_KEY = "segloop_version"


def now_iso() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


class ModelRegistry:
    def __init__(self, model_dir: str, name: str):
        self.name = name
        self.folder = os.path.join(model_dir, name)
        self.versions_dir = os.path.join(self.folder, "versions")
        self.path = os.path.join(self.folder, "registry.json")
        self.serving_path = os.path.join(model_dir, f"{name}.pt")
        os.makedirs(self.versions_dir, exist_ok=True)
        self._lock = FileLock(self.path + ".lock")

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
        """The most recent run of any status (its ``labels_seen`` tells which labels are not new)."""
        versions = self.state()["versions"]
        return versions[-1] if versions else None

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
            state["versions"].append(record)
            state["running"] = None
            if promote and state_dict is not None:
                self._publish(state, number, event="promoted")
            atomic_write_json(self.path, state)
            return record

    # -- serving -------------------------------------------------------------------------------
    def _publish(self, state: Dict[str, Any], number: int, event: str) -> None:
        with atomic_path(self.serving_path) as tmp:
            with open(self.checkpoint_path(number), "rb") as src, open(tmp, "wb") as dst:
                dst.write(src.read())
        state["events"].append({"event": event, "version": number, "previous": state["serving"], "time": now_iso()})
        state["serving"] = number

    def rollback(self, number: int) -> Dict[str, Any]:
        """Serve an earlier (or any stored) version; the history keeps every version."""
        with self._lock:
            state = self._read()
            record = next((v for v in state["versions"] if v["version"] == number), None)
            if record is None:
                raise not_found(f"model {self.name!r} has no version {number}")
            if not os.path.exists(self.checkpoint_path(number)):
                raise conflict(f"version {number} has no checkpoint ({record.get('status')}): it cannot serve")
            self._publish(state, number, event="rollback")
            atomic_write_json(self.path, state)
            return {"serving": number, "previous": state["events"][-1]["previous"]}

    def temperature(self, number: Optional[int]) -> float:
        """The softmax temperature fitted on validation for version ``number`` (1.0 if none was)."""
        record = next((v for v in self.state()["versions"] if v["version"] == number), None)
        return float(((record or {}).get("calibration") or {}).get("temperature") or 1.0)

    def history(self) -> List[Dict[str, Any]]:
        state = self.state()
        return [dict(v, serving=v["version"] == state["serving"]) for v in state["versions"]]
