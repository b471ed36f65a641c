"""Ignite handlers and engine settings for training runs: progress reporting, the time budget, the
learning rate, gradient clipping, per-label Dice metrics and the autocast dtype."""

import logging
import math
import time
from typing import Any, Dict, Mapping, Optional

import torch
from ignite.engine import Engine, Events
from monai.handlers import MeanDice, from_engine
from monailabel.tasks.train.handler import prepare_stats

from segloop.io import atomic_write_json, json_safe
from segloop.trainers.distributed import all_ranks_agree

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
        writes: bool = True,
    ):
        self.stats_path = stats_path
        self.writes = writes  # False on every rank but 0 of a distributed run: one writer
        self.trainer = trainer
        self.evaluator = evaluator
        self.start_ts = start_ts
        self.every_n_iterations = max(1, int(every_n_iterations))
        self.max_seconds = float(max_seconds or 0.0)
        self.max_iterations = int(max_iterations or 0)
        self.extra: Dict[str, Any] = {}

    def fraction(self) -> float:
        """How much of the run is done, 0..1: the furthest of epochs, iterations and seconds."""
        state = self.trainer.state
        total = max(1, (state.max_epochs or 1) * max(1, state.epoch_length or 0))
        if self.max_iterations > 0:
            total = min(total, self.max_iterations)
        fraction = state.iteration / total
        if self.max_seconds > 0:
            fraction = max(fraction, (time.time() - self.start_ts) / self.max_seconds)
        return min(1.0, fraction)

    def progress(self) -> Dict[str, Any]:
        state = self.trainer.state
        per_epoch = state.epoch_length or 0
        elapsed = time.time() - self.start_ts
        fraction = self.fraction()
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
        if self.writes and engine.state.iteration % self.every_n_iterations == 0:
            p = self.write()["progress"]
            logger.info(
                f"progress: epoch {p['epoch']}/{p['max_epochs']} iteration {p['iteration']} "
                f"({p['percent']}%) loss={p['loss']}"
            )

    def _on_epoch(self, engine: Engine) -> None:
        # Checked at epoch ends so a budget-stopped run has still validated and saved its best model;
        # the ranks of a distributed run stop together, at the first epoch end any of them is past it.
        if all_ranks_agree(self.max_seconds > 0 and time.time() - self.start_ts > self.max_seconds):
            logger.info(f"time budget of {self.max_seconds:.0f} s reached after epoch {engine.state.epoch}: stopping")
            engine.terminate()
        elif 0 < self.max_iterations <= engine.state.iteration:
            logger.info(f"iteration budget of {self.max_iterations} reached after epoch {engine.state.epoch}: stopping")
            engine.terminate()

    def attach(self) -> None:
        self.trainer.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch)
        if not self.writes:
            return
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.write())
        else:
            self.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.write())


class BudgetCosineLR:
    """Linear warm-up, then cosine decay, over a run's budget, whichever of epochs, iterations or
    seconds ends it (ignite's ``CosineAnnealingScheduler`` needs the iteration count in advance,
    which a time budget does not give). The rate climbs to the optimizer's own ``lr`` over the
    first ``warmup`` of the run and decays to ``floor x lr`` at its end, so a run's last weights
    (the candidate) are not those of a noisy step at full rate."""

    def __init__(self, optimizer, progress: TrainingProgress, warmup: float = 0.05, floor: float = 0.02):
        self.optimizer = optimizer
        self.progress = progress
        self.warmup = float(warmup)
        self.floor = float(floor)
        self.base = [group["lr"] for group in optimizer.param_groups]

    def factor(self) -> float:
        done = self.progress.fraction()
        if done < self.warmup:
            return self.floor + (1.0 - self.floor) * done / self.warmup
        decay = (done - self.warmup) / max(1e-9, 1.0 - self.warmup)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * decay))

    def _on_iteration(self, engine: Engine) -> None:
        factor = self.factor()
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * factor

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.ITERATION_STARTED, self._on_iteration)


def clip_gradients(optimizer, max_norm: float) -> None:
    """Clip the global gradient norm to ``max_norm`` before every ``optimizer.step`` (MONAI's
    ``SupervisedTrainer`` has no clipping option; with AMP the scaler unscales before the step)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def clip(*_):
        torch.nn.utils.clip_grad_norm_(params, max_norm)  # the hook must return None

    optimizer.register_step_pre_hook(clip)


def per_label_dice(labels: Mapping[str, int]) -> dict:
    """One ``MeanDice`` per label (metric name ``dice_<name>``) on one-hot ``pred``/``label``."""

    def channel(c):
        def pick(output):
            preds, targets = from_engine(["pred", "label"])(output)
            return [p[c : c + 1] for p in preds], [t[c : c + 1] for t in targets]

        return pick

    return {
        f"dice_{name}": MeanDice(include_background=True, output_transform=channel(c))
        for c, name in enumerate(sorted(labels, key=labels.get), start=1)
    }


def configure_autocast(trainer, mode: str) -> None:
    """Pick the autocast dtype of a MONAI ``SupervisedTrainer`` built with ``amp=True``.

    MONAI's default is float16 with a loss scaler; float16 overflows above 65504, which can end a run
    with a NaN loss, while bfloat16 has float32's range (see
    benchmarks/trials.md, section "Earlier result files", bench_prompt_gpu_h200). So
    ``auto`` uses bfloat16 where the GPU supports it, with the scaler disabled (bfloat16 needs no
    loss scaling); the engine's own AMP step then runs unchanged.
    """
    if not trainer.amp or mode == "float16" or not torch.cuda.is_available() or not torch.cuda.is_bf16_supported():
        return
    trainer.amp_kwargs = {**trainer.amp_kwargs, "dtype": torch.bfloat16}
    trainer.scaler = torch.amp.GradScaler("cuda", enabled=False)
