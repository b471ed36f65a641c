"""Train task for the prompt model: simulated clicks, boxes and label prompts on the final labels.

Everything about runs, versions, incremental retraining and promotion is the segmentation
trainer's (:mod:`segloop.trainers.segmentation`); this task changes what a training step sees:

* pre-processing caches each labelled case at the zoom-in spacing (``fine_spacing`` mm, the
  trainer's ``target_spacing``) and crops ``2 x roi`` voxels centred on a structure;
* :class:`PromptInteraction` turns every crop into a prompted binary task at the zoom-out or the
  zoom-in scale, with simulated corrections in the model's own errors;
* the loss is Dice + binary cross-entropy per label query (:class:`PromptLoss`); the learning
  rate warms up and decays over the run's budget and gradients are clipped (see ``__init__``);
* a candidate is scored against the serving version by what users get: zoom-out-zoom-in
  inference on the validation cases, Dice after one click (with the label, as the Slicer plugin
  sends it) and from the label prompt alone, per label.
"""

import copy
from typing import Dict, Mapping, Sequence

import torch
import torch.nn.functional as F
from monai.engines import PrepareBatchExtraInput
from monai.handlers import MeanDice, from_engine
from monai.losses import DiceLoss
from monai.transforms import Activationsd, AsDiscreted
from monailabel.tasks.train.basic_train import Context

from segloop.trainers.candidate_eval import prompt_dice
from segloop.trainers.prompt_interaction import PADDING, PromptInteraction
from segloop.trainers.segmentation import SegmentationTrainer


class PromptLoss(torch.nn.Module):
    """Dice + binary cross-entropy over the label queries of a batch.

    ``pred`` logits and ``target`` (1 / 0) are [B, K, X, Y, Z]; a query whose target is all
    ``PADDING`` (-1) is left out. Cross-entropy covers every other query. Dice covers those whose
    structure is in the view, each query one item (a tumour and a liver weigh the same): the Dice of
    an empty target is about 1 for any prediction short of exactly zero, so it would push every
    label query towards an empty mask.
    """

    def __init__(self):
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, batch=False)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        used = target.flatten(2)[:, :, 0] != PADDING  # [B, K]
        pred, target = pred[used][:, None], target[used][:, None]
        loss = F.binary_cross_entropy_with_logits(pred, target)
        present = target.flatten(1).amax(1) > 0
        if present.any():
            loss = loss + self.dice(pred[present], target[present])
        return loss


def first_query(output):
    """Predictions and targets of query 0 (the one every batch item has), for the training Dice."""
    preds, targets = from_engine(["pred", "label"])(output)
    return [p[:1] for p in preds], [t[:1] for t in targets]


class PromptTrainer(SegmentationTrainer):
    # Kept in the default layout: the tests' 296-step model fell below its bar when trained
    # channels-last (float32 rounding moved it; benchmarks/trials.md), and a whole step here is
    # mostly the simulated clicks' passes, so the layout shortened it by about a tenth only.
    channels_last = False

    def __init__(self, *args, coarse_spacing: Sequence[float], fine_spacing: Sequence[float], **kwargs):
        # Warm-up, cosine decay and gradient clipping: at a constant 3e-3 a run can collapse (every
        # label query all-foreground or all-empty); see benchmarks/trials.md, section
        # "Earlier result files" (bench_prompt_gpu_h200_recipe).
        kwargs.setdefault("lr_schedule", "cosine")
        kwargs.setdefault("grad_clip", 1.0)
        super().__init__(*args, target_spacing=fine_spacing, **kwargs)
        self.coarse_spacing = tuple(coarse_spacing)
        self.fine_spacing = tuple(fine_spacing)
        self._config["max_interactions"] = 2
        self._config.pop("class_sampling", None)  # crops centre on a structure, every label equally (crop_ratios)
        self._config["region_share"] = 0.0  # label-free clicks on image regions (prompt_interaction.py)
        self._config["structure_shift_hu"] = 0.0  # measured for the automatic model only (benchmarks/trials.md)

    @property
    def train_crop_size(self):
        return tuple(2 * r for r in self.roi_size)  # halved for the zoom-out view, windowed for zoom-in

    @property
    def crop_ratios(self):
        return [0.0] + [1.0] * (self.num_channels - 1)  # centred on a structure, every label as often

    def loss_function(self, context: Context):
        return PromptLoss()

    def train_iteration_update(self, context: Context):
        seed = context.request.get("seed")
        return PromptInteraction(
            self.roi_size,
            num_labels=self.num_channels - 1,
            max_interactions=int(context.request.get("max_interactions", 2)),
            seed=int(seed) if seed is not None else None,
            size_multiple=getattr(self._network, "size_multiple", 8),
            region_share=float(context.request.get("region_share", 0.0)),
        )

    def train_post_transforms(self, context: Context):
        return [Activationsd(keys="pred", sigmoid=True), AsDiscreted(keys="pred", threshold=0.5)]

    def train_key_metric(self, context: Context):
        return {"train_dice": MeanDice(include_background=True, output_transform=first_query)}

    def _create_evaluator(self, context: Context):
        return None  # no in-run validation: candidates are scored by interactive inference (see _score)

    def finalize(self, context: Context):
        super().finalize(context)
        context.trainer.prepare_batch = PrepareBatchExtraInput(extra_keys={"label": "class_index"})

    def _calibration(self):
        return None  # prompt results are judged by Dice per click, not voxel confidence

    def _score(self, weights: Mapping[str, torch.Tensor], context: Context, on_logits=None) -> Dict[str, float]:
        network = copy.deepcopy(self._network)
        network.load_state_dict(weights)
        return prompt_dice(
            network.to(context.device).eval(),
            context.val_datalist,
            self.label_map,
            self.roi_size,
            self.coarse_spacing,
            self.fine_spacing,
            self.hu_window,
            str(context.device),
            self.amp_mode,
        )
