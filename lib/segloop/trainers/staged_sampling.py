"""Staged class sampling: every class equally until the other structures are learnt, then the
planned sampling of small structures (:mod:`segloop.planning.sampling`) for the rest of the run.

Why staged: planned from the first step, tumour-centred crops are half of all crops with four
labels, and a short first run on few cases can end with an organ it never learnt (a spleen at
Dice 0 after 384 iterations, ``benchmarks/trials.md``); equal sampling from the first step to the
last never learns the tumour. So the run starts equal and switches, once, at the first epoch end
where the training Dice (epoch mean over its crops, one ``MeanDice`` per label) of every labelled
structure that is not small reaches :data:`ORGANS_LEARNT_DICE`. A run that never gets there stays
equal: nothing is taken from the organs to teach the tumour.
"""

import logging
import math
from typing import Dict, Mapping

import torch
from ignite.engine import Engine, Events

from segloop.trainers.distributed import all_ranks_agree

logger = logging.getLogger(__name__)

ORGANS_LEARNT_DICE = 0.8  # training Dice every structure that is not small must reach before the switch


class SwitchableLoss(torch.nn.Module):
    """``first`` until :attr:`switched` is set, then ``then`` (same inputs, same output)."""

    def __init__(self, first: torch.nn.Module, then: torch.nn.Module):
        super().__init__()
        self.first, self.then = first, then
        self.switched = False

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (self.then if self.switched else self.first)(pred, target)


def structures_to_learn_first(sampling: Mapping) -> list:
    """The labels whose training Dice gates the switch: those some case holds, small ones excepted."""
    small = set(sampling.get("small_structures", []))
    return [name for name in sampling.get("volumes_ml", {}) if name not in small]


class StagedClassSampling:
    """Switches a run from equal class sampling to ``sampling`` (a plan of
    :func:`segloop.planning.sampling.class_sampling`): sets the crop transform's ratios
    (``cropper``: MONAI's ``RandCropByLabelClassesd``, applied in the training process) and the
    loss to its weighted branch, and writes ``switched_at_iteration`` into ``sampling``, which the
    version record keeps."""

    def __init__(self, cropper, loss: SwitchableLoss, sampling: Dict, threshold: float = ORGANS_LEARNT_DICE):
        self.cropper, self.loss, self.sampling = cropper, loss, sampling
        self.threshold = float(threshold)
        self.watch = structures_to_learn_first(sampling)
        sampling.update(stage="equal", switched_at_iteration=None, switch_dice=self.threshold)

    def learnt(self, metrics: Mapping[str, float]) -> bool:
        """Every watched label's training Dice is at least the threshold (a missing or NaN Dice is not)."""
        values = [metrics.get(f"dice_{name}") for name in self.watch]
        return bool(values) and all(v is not None and math.isfinite(float(v)) and float(v) >= self.threshold for v in values)

    def _on_epoch(self, engine: Engine) -> None:
        if self.loss.switched:
            return
        if all_ranks_agree(self.learnt(engine.state.metrics)):  # every rank of a distributed run switches together
            self.cropper.cropper.ratios = list(self.sampling["crop_ratios"])
            self.loss.switched = True
            self.sampling.update(stage="small structures", switched_at_iteration=int(engine.state.iteration))
            logger.info(
                f"class sampling: {', '.join(self.watch)} at training Dice >= {self.threshold} after iteration "
                f"{engine.state.iteration}; now crops {self.sampling['crop_ratios']}, weights {self.sampling['class_weights']}"
            )

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch)


def uses_stages(sampling: Mapping) -> bool:
    """A plan worth staging: it has small structures and something to learn before them."""
    return bool(sampling and sampling.get("small_structures") and structures_to_learn_first(sampling))

