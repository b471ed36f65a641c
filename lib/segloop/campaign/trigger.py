"""Automatic retraining: submitted labels start incremental training runs by themselves.

Rules:

* after a label is saved, count the final labels that no training run has seen yet (recomputed
  from the datastore and the model registry, so a restart loses nothing);
* at ``retrain_every`` new labels start a run, after ``debounce_s`` seconds so that a burst of
  submissions lands in one run;
* while a run is going (ours or a manual ``/train``), further labels set a single "queued" flag:
  when the run ends exactly one follow-up run starts if new labels are still unseen;
* a failed run does not restart by itself; its labels stay unseen (only a ``promoted`` or
  ``kept`` run's labels count as seen), so the next label saved or a server restart retries them.
"""

import logging
import threading
from typing import Any, Callable, Dict, Optional

logger = logging.getLogger(__name__)


class RetrainTrigger:
    def __init__(
        self,
        model: str,
        count_unseen: Callable[[], int],
        start_run: Callable[[Callable[[Dict], None]], Any],
        other_run_active: Callable[[], bool],
        retrain_every: int = 1,
        enabled: bool = True,
        debounce_s: float = 2.0,
        poll_s: float = 2.0,
    ):
        self.model = model
        self.count_unseen = count_unseen
        self.start_run = start_run
        self.other_run_active = other_run_active
        self.retrain_every = max(1, int(retrain_every))
        self.enabled = enabled
        self.debounce_s = debounce_s
        self.poll_s = poll_s
        self._lock = threading.RLock()
        self._running = False
        self._queued = False
        self._timer: Optional[threading.Timer] = None
        self.runs_started = 0
        self.last_run: Optional[Dict[str, Any]] = None

    def state(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "auto_train": self.enabled,
                "retrain_every": self.retrain_every,
                "unseen_labels": self.count_unseen(),
                "running": self._running,
                "queued": self._queued,
                "runs_started": self.runs_started,
                "last_run": self.last_run,
            }

    def on_label_saved(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._running:
                self._queued = True
                return
            self._schedule(self.debounce_s)

    def check_now(self) -> None:
        """Start a run if enough unseen labels exist (used at server start)."""
        if self.enabled:
            with self._lock:
                self._schedule(0.0)

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(delay, self._maybe_start)
        self._timer.daemon = True
        self._timer.start()

    def _maybe_start(self) -> None:
        with self._lock:
            self._timer = None
            if self._running:
                self._queued = True
                return
            unseen = self.count_unseen()
            if unseen < self.retrain_every:
                return
            if self.other_run_active():
                # A manual run holds the single training slot: look again shortly.
                self._queued = True
                self._schedule(self.poll_s)
                return
            self._running = True
            self._queued = False
            self.runs_started += 1
            logger.info(f"{self.model}: {unseen} unseen label(s): starting incremental training run")
        try:
            self.start_run(self._on_run_finished)
        except Exception as e:  # never let a failed start block later triggers
            logger.exception(f"{self.model}: could not start a training run")
            with self._lock:
                self._running = False
                self.last_run = {"status": "ERROR", "error": str(e)}

    def _on_run_finished(self, task: Dict) -> None:
        with self._lock:
            self._running = False
            self.last_run = {k: task.get(k) for k in ("id", "status", "start_ts", "end_ts")}
            follow_up = self._queued
            self._queued = False
            logger.info(f"{self.model}: training run finished ({task.get('status')}); follow-up: {follow_up}")
            if follow_up:
                self._schedule(0.0)
