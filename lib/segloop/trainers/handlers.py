"""Ignite handlers for training runs: progress reporting, time budget, atomic publishing."""

import logging
import math
import os
import time
from typing import Any, Dict

from ignite.engine import Engine, Events
from monailabel.tasks.train.handler import PublishStatsAndModel, prepare_stats

from segloop.io import atomic_copy, atomic_write_json

logger = logging.getLogger(__name__)


def json_safe(value: Any) -> Any:
    """NaN/inf (e.g. Dice of a label absent from every validation case) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class ProgressPublisher(PublishStatsAndModel):
    """Writes ``train_stats.json`` (shown in ``/info`` under ``train_stats``) with a ``progress``
    block every few iterations, logs a progress line (shown by ``GET /train/``), and publishes the
    best checkpoint with temp-file + ``os.replace`` so the infer task never loads half a file.
    """

    def __init__(self, *args, every_n_iterations: int = 5, max_seconds: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.every_n_iterations = max(1, int(every_n_iterations))
        self.max_seconds = float(max_seconds or 0.0)

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

    def write_stats(self) -> Dict[str, Any]:
        stats = prepare_stats(self.start_ts, self.trainer, self.evaluator)
        stats["progress"] = self.progress()
        stats = json_safe(stats)
        atomic_write_json(os.path.join(self.output_dir, f"stats_{self.run_id}.json"), stats)
        if self._stats_path:
            atomic_write_json(self._stats_path, stats)
        return stats

    def iteration_completed(self):
        """Called at the end of each epoch (or validation round): stats, then publish."""
        stats = self.write_stats()
        best = os.path.join(self.output_dir, self._key_metric_filename)
        if self._publish_path and os.path.exists(best):
            if not os.path.exists(self._publish_path) or os.path.getmtime(best) > os.path.getmtime(self._publish_path):
                atomic_copy(best, self._publish_path)
                logger.info(f"New model published: {best} => {self._publish_path}")
        return stats

    def on_iteration(self, engine: Engine) -> None:
        if engine.state.iteration % self.every_n_iterations == 0:
            p = self.write_stats()["progress"]
            logger.info(
                f"progress: epoch {p['epoch']}/{p['max_epochs']} iteration {p['iteration']} "
                f"({p['percent']}%) loss={p['loss']}"
            )

    def on_epoch(self, engine: Engine) -> None:
        # Checked at epoch ends so a budget-stopped run has still validated and saved its best model.
        if self.max_seconds > 0 and time.time() - self.start_ts > self.max_seconds:
            logger.info(f"time budget of {self.max_seconds:.0f} s reached after epoch {engine.state.epoch}: stopping")
            engine.terminate()

    def attach_progress(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self.on_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.on_epoch)
        # A run stopped by the time budget still validates, publishes and reports once at the end.
        trainer.add_event_handler(Events.COMPLETED, lambda _: self.iteration_completed())
