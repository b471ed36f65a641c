"""Ignite handlers for training runs: progress reporting and the time budget."""

import logging
import time
from typing import Any, Dict, Optional

from ignite.engine import Engine, Events
from monailabel.tasks.train.handler import prepare_stats

from segloop.io import atomic_write_json, json_safe

logger = logging.getLogger(__name__)


class TrainingProgress:
    """Writes ``train_stats.json`` (shown by ``/info`` under ``train_stats``) with a ``progress``
    block every few iterations and after each validation, logs a ``progress:`` line (shown by
    ``GET /train/``), and stops the run at the first epoch end past ``max_seconds`` (wall time) or
``max_iterations`` (a budget that does not depend on how busy the machine is: simulations).
    """

    def __init__(
        self,
        stats_path: str,
        trainer: Engine,
        evaluator: Optional[Engine],
        start_ts: float,
        every_n_iterations: int = 5,
        max_seconds: float = 0.0,
        max_iterations: int = 0,
    ):
        self.stats_path = stats_path
        self.trainer = trainer
        self.evaluator = evaluator
        self.start_ts = start_ts
        self.every_n_iterations = max(1, int(every_n_iterations))
        self.max_seconds = float(max_seconds or 0.0)
        self.max_iterations = int(max_iterations or 0)
        self.extra: Dict[str, Any] = {}

    def progress(self) -> Dict[str, Any]:
        state = self.trainer.state
        per_epoch = state.epoch_length or 0
        total = max(1, (state.max_epochs or 1) * max(1, per_epoch))
        elapsed = time.time() - self.start_ts
        fraction = min(1.0, state.iteration / total)
        if self.max_seconds > 0:
            fraction = max(fraction, min(1.0, elapsed / self.max_seconds))
        loss = state.output[0]["loss"] if isinstance(state.output, list) and state.output else None
        return {
            "epoch": state.epoch,
            "max_epochs": state.max_epochs,
            "iteration": state.iteration,
            "iterations_per_epoch": per_epoch,
            "percent": round(100.0 * fraction, 1),
            "loss": float(loss) if loss is not None else None,
            "elapsed_s": round(elapsed, 1),
        }

    def write(self, finished: bool = False) -> Dict[str, Any]:
        stats = prepare_stats(self.start_ts, self.trainer, self.evaluator)
        stats["progress"] = self.progress()
        if finished:
            stats["progress"]["percent"] = 100.0
        stats.update(self.extra)
        stats = json_safe(stats)
        atomic_write_json(self.stats_path, stats)
        return stats

    def _on_iteration(self, engine: Engine) -> None:
        if engine.state.iteration % self.every_n_iterations == 0:
            p = self.write()["progress"]
            logger.info(
                f"progress: epoch {p['epoch']}/{p['max_epochs']} iteration {p['iteration']} "
                f"({p['percent']}%) loss={p['loss']}"
            )

    def _on_epoch(self, engine: Engine) -> None:
        # Checked at epoch ends so a budget-stopped run has still validated and saved its best model.
        if self.max_seconds > 0 and time.time() - self.start_ts > self.max_seconds:
            logger.info(f"time budget of {self.max_seconds:.0f} s reached after epoch {engine.state.epoch}: stopping")
            engine.terminate()
        elif 0 < self.max_iterations <= engine.state.iteration:
            logger.info(f"iteration budget of {self.max_iterations} reached after epoch {engine.state.epoch}: stopping")
            engine.terminate()

    def attach(self) -> None:
        self.trainer.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.write())
        else:
            self.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.write())
