"""Train task for the automatic segmentation model (MONAI Label ``BasicTrainTask``).

Trains on the datastore's *final* labels with Dice + cross-entropy on random patches of
``roi_size`` voxels at ``target_spacing`` mm, validates with sliding-window inference on a
stable hash-based split, reports mean and per-label validation Dice, and publishes the best
checkpoint atomically. Later runs fine-tune the published model unless ``from_scratch`` is set.

Request options (besides MONAI Label's ``max_epochs``, ``val_split``, ``dataset`` ...):
``from_scratch`` (bool), ``max_seconds`` (time budget, checked at epoch ends; 0 = none),
``lr`` (AdamW learning rate), ``samples_per_case`` (patches drawn per case and iteration).
"""

import logging
import os
from typing import Mapping, Optional, Sequence

import torch
from ignite.engine import Events
from monai.handlers import MeanDice, from_engine
from monai.inferers import SlidingWindowInferer
from monai.losses import DiceCELoss
from monai.transforms import (
    AsDiscreted,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SelectItemsd,
    SpatialPadd,
)
from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from monailabel.utils.others.generic import strtobool

from segloop.trainers.handlers import ProgressPublisher
from segloop.trainers.split import stable_split
from segloop.transforms import DEFAULT_HU_WINDOW, load_and_normalize

logger = logging.getLogger(__name__)


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


class SegmentationTrainer(BasicTrainTask):
    def __init__(
        self,
        model_dir: str,
        network: torch.nn.Module,
        labels: Mapping[str, int],
        target_spacing: Sequence[float],
        roi_size: Sequence[int],
        publish_path: str,
        pretrained_path: Optional[str] = None,
        hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
        device: str = "cuda",
        max_epochs: int = 50,
        description: str = "Train the automatic segmentation model on the final labels",
        **kwargs,
    ):
        self._network = network
        self.target_spacing = tuple(target_spacing)
        self.roi_size = tuple(roi_size)
        self.hu_window = tuple(hu_window)
        self.label_map = dict(labels)
        self.pretrained_path = pretrained_path
        config = {
            "device": device,
            "max_epochs": max_epochs,
            "val_split": 0.2,
            "from_scratch": False,
            "max_seconds": 0,
            "lr": 3e-3,
            "samples_per_case": 2,
            "dataset": ["CacheDataset", "Dataset", "PersistentDataset", "SmartCacheDataset"],
            "multi_gpu": False,
            "tracking": ["None", "mlflow"],
        }
        super().__init__(
            model_dir,
            description,
            config=config,
            amp=False,
            publish_path=publish_path,
            load_path=pretrained_path,
            labels=list(self.label_map),
            tracking=None,
            **kwargs,
        )
        self._config.pop("early_stop_patience", None)  # runs are bounded by max_epochs / max_seconds
        self._current_request: dict = {}

    @property
    def num_channels(self) -> int:
        return len(self.label_map) + 1

    def network(self, context: Context):
        return self._network

    def optimizer(self, context: Context):
        return torch.optim.AdamW(context.network.parameters(), lr=float(context.request.get("lr", 3e-3)), weight_decay=1e-5)

    def loss_function(self, context: Context):
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)

    def lr_scheduler_handler(self, context: Context):
        return None  # constant learning rate: runs are short and resumed from the last model

    def train_pre_transforms(self, context: Context):
        return load_and_normalize(self.target_spacing, self.hu_window, "label", self.label_map) + [
            SpatialPadd(keys=("image", "label"), spatial_size=self.roi_size),
            RandCropByPosNegLabeld(
                keys=("image", "label"),
                label_key="label",
                spatial_size=self.roi_size,
                pos=3,
                neg=1,
                num_samples=int(context.request.get("samples_per_case", 2)),
            ),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
            SelectItemsd(keys=("image", "label")),
        ]

    def train_post_transforms(self, context: Context):
        return [
            AsDiscreted(keys=("pred", "label"), argmax=(True, False), to_onehot=(self.num_channels, self.num_channels))
        ]

    def val_pre_transforms(self, context: Context):
        return load_and_normalize(self.target_spacing, self.hu_window, "label", self.label_map) + [
            SelectItemsd(keys=("image", "label"))
        ]

    def val_inferer(self, context: Context):
        return SlidingWindowInferer(roi_size=self.roi_size, sw_batch_size=1, overlap=0.25, mode="gaussian")

    def val_additional_metrics(self, context: Context):
        return per_label_dice(self.label_map)

    def partition_datalist(self, context: Context, shuffle=False):
        train, val = stable_split(context.datalist, float(context.request.get("val_split", 0.2)))
        logger.info(f"Training cases: {len(train)}; validation cases (stable split): {len(val)}")
        return train, val

    def load_path(self, output_dir, pretrained=True):
        """Fine-tune the published model; fall back to the configured local checkpoint."""
        if strtobool(str(self._current_request.get("from_scratch", False))):
            logger.info("from_scratch: training starts from random weights")
            return None
        for path in (self._publish_path, self.pretrained_path):
            if path and os.path.exists(path):
                return path
        return None

    def train(self, rank, world_size, request, datalist):
        self._current_request = request
        return super().train(rank, world_size, request, datalist)

    def finalize(self, context: Context):
        publisher = ProgressPublisher(
            self._stats_path,
            self._publish_path,
            self._key_metric_filename,
            context.start_ts,
            context.run_id,
            context.output_dir,
            context.trainer,
            context.evaluator,
            max_seconds=float(context.request.get("max_seconds", 0) or 0),
        )
        engine = context.evaluator if context.evaluator else context.trainer
        engine.add_event_handler(Events.EPOCH_COMPLETED, publisher)
        publisher.attach_progress(context.trainer)

    def pre_process(self, request, datastore):
        datalist = datastore.datalist()
        if not datalist:
            raise ValueError("No final labels in the datastore yet: submit at least one label before training.")
        return datalist
