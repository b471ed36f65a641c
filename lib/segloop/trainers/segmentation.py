"""Train task for the automatic segmentation model (MONAI Label ``BasicTrainTask``).

Trains on the datastore's *final* labels with Dice + cross-entropy on random patches of
``roi_size`` voxels at ``target_spacing`` mm and validates with sliding-window inference on a
stable hash-based split. Every run ends as a numbered version in the model registry:

* the run starts from the serving version (fine-tuning) unless ``from_scratch`` is set;
* ``incremental`` runs (what the retrain trigger asks for) train on the labels no run has seen
  yet plus a replay sample of earlier labels (``replay_ratio`` x the new ones), within a time
  budget, so the model learns the corrections without forgetting the rest;
* at the end the candidate and the serving version are scored on the same validation cases; the
  candidate is promoted (published atomically, hot-swapped by ``/infer``) unless its mean Dice is
  worse by more than ``promotion_tolerance``, in which case it is kept, not served, with the reason;
* a run that raises or whose loss turns NaN/inf is recorded as ``failed`` with its error and
  never replaces the serving model.

Request options (besides MONAI Label's ``max_epochs``, ``val_split``, ``dataset`` ...):
``from_scratch``, ``incremental``, ``max_seconds`` (time budget checked at epoch ends; 0 = none),
``max_iterations`` (iteration budget, also checked at epoch ends),
``lr``, ``lr_schedule`` (``constant``, or ``cosine``: warm-up then decay over the run's budget),
``grad_clip`` (global gradient-norm limit, 0 = none), ``samples_per_case``, ``replay_ratio``,
``crop_ratios`` and ``class_weights`` (per class, background first: how often each class is a crop
centre, and its loss weight; they override ``class_sampling``), ``class_sampling`` (``staged``, the
default: every class equally until the other structures are learnt, then the plan of ``auto``,
``trainers/staged_sampling.py``; ``auto``: both lists planned from the labelled structures' sizes by
``segloop.planning.sampling`` from the first step; ``equal``: every class equally throughout;
recorded in the version as ``sampling``), ``structure_shift_hu`` (each labelled structure's intensity
moved on its own by up to this many HU in a quarter of the crops, ``transforms/label_intensity.py``;
default 40, 0 = off), ``promotion_tolerance``, ``nice`` (CPU priority of the run, default 10: inference requests keep
their speed while a run trains), ``seed``.
"""

import copy
import json
import logging
import math
import os
import shutil
import time
from datetime import datetime
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from ignite.engine import Events
from ignite.handlers import TerminateOnNan
from monai.handlers import from_engine
from monai.data import PersistentDataset, partition_dataset
from monai.inferers import SlidingWindowInferer
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.transforms import (
    AsDiscreted,
    Compose,
    Lambdad,
    RandCropByLabelClassesd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SelectItemsd,
    SpatialPadd,
)
from monai.utils import set_determinism
from monailabel.tasks.train.basic_train import BasicTrainTask, Context
from monailabel.utils.others.generic import strtobool

from segloop.campaign.promotion import decide_promotion
from segloop.campaign.registry import ModelRegistry
from segloop.cpu_sharing import lower_priority
from segloop.metrics.calibration import CalibrationAccumulator
from segloop.networks import has_deep_supervision
from segloop.networks.memory_format import ChannelsLastInferer, to_channels_last, to_default_layout, trains_channels_last
from segloop.networks.precision import AutocastInferer, native_bfloat16
from segloop.planning.sampling import plan_class_sampling
from segloop.trainers.candidate_eval import segmentation_dice
from segloop.trainers.distributed import World, backend_for, rank_device, requested_processes, run_torchrun, torchrun_world
from segloop.trainers.handlers import (
    BudgetCosineLR,
    TrainingProgress,
    clip_gradients,
    configure_autocast,
    per_label_dice,
)
from segloop.trainers.quarantine import Quarantine
from segloop.trainers.split import case_key, select_incremental, stable_split
from segloop.trainers.staged_sampling import StagedClassSampling, SwitchableLoss, uses_stages
from segloop.transforms import DEFAULT_HU_WINDOW, load_and_normalize
from segloop.transforms.label_intensity import RandLabelIntensityShiftd

logger = logging.getLogger(__name__)

VALIDATE_EVERY = 20  # training iterations between validation rounds during a run
LR_SCHEDULES = ("constant", "cosine")
CLASS_SAMPLINGS = ("staged", "equal", "auto")  # the first is the default
PLANNED_SAMPLINGS = ("auto", "staged")  # the class samplings planned from the labels' sizes
# Each structure's intensity moved by up to this many HU on its own in a quarter of the crops
# (transforms/label_intensity.py): about an organ's enhancement spread between phases; chosen by
# the comparison in benchmarks/trials.md ("Each structure's intensity moved on its own").
DEFAULT_STRUCTURE_SHIFT_HU = 40.0
DEFAULT_LR = 3e-3  # AdamW; chosen over 1e-3 and 3e-4 for the small UNETR on a short CPU time budget


class StackedDeepSupervisionLoss(torch.nn.Module):
    """``loss`` over every head of a deep-supervised network's training output (heads stacked on
    dim 1, as DynUNet returns them), weighted by MONAI's ``DeepSupervisionLoss`` (halved per level);
    a plain output is passed through."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.deep = DeepSupervisionLoss(loss)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.dim() == target.dim() + 1:
            return self.deep(list(torch.unbind(pred, dim=1)), target)
        return self.deep(pred, target)


def main_head(pred: torch.Tensor) -> torch.Tensor:
    """The full-resolution output of one decollated 3D item: a deep-supervised network's training
    output is [heads, C, X, Y, Z], its evaluation output (and any other network's) [C, X, Y, Z]."""
    return pred[0] if pred.dim() == 5 else pred


class SegmentationTrainer(BasicTrainTask):
    channels_last = True  # float32 CPU training holds the network channels-last (networks/memory_format.py)

    def __init__(
        self,
        model_dir: str,
        network: torch.nn.Module,
        labels: Mapping[str, int],
        target_spacing: Sequence[float],
        roi_size: Sequence[int],
        registry: ModelRegistry,
        pretrained_path: Optional[str] = None,
        hu_window: Sequence[float] = DEFAULT_HU_WINDOW,
        device: str = "cuda",
        amp: str = "auto",
        lr: float = DEFAULT_LR,
        lr_schedule: str = "constant",
        grad_clip: float = 0.0,
        max_epochs: int = 50,
        promotion_tolerance: float = 0.02,
        replay_ratio: float = 1.0,
        plan: Optional[Mapping] = None,
        train_procs: int = 1,
        train_nodes: int = 1,
        train_rdzv: str = "",
        description: str = "Train the automatic segmentation model on the final labels",
        **kwargs,
    ):
        self._network = network
        self.target_spacing = tuple(target_spacing)
        self.roi_size = tuple(roi_size)
        self.hu_window = tuple(hu_window)
        self.label_map = dict(labels)
        self.registry = registry
        self.pretrained_path = pretrained_path
        self.plan = plan  # segloop.planning: the geometry this model was planned at (None: the preset's)
        config = {
            "device": device,
            "max_epochs": max_epochs,
            "val_split": 0.2,
            "from_scratch": False,
            "incremental": False,
            "max_seconds": 0,
            "lr": lr,
            "lr_schedule": [lr_schedule] + [s for s in LR_SCHEDULES if s != lr_schedule],
            "grad_clip": grad_clip,
            "samples_per_case": 2,
            "structure_shift_hu": DEFAULT_STRUCTURE_SHIFT_HU,  # per-structure intensity augmentation (transforms/label_intensity.py)
            "crop_ratios": "",
            "class_weights": "",
            # "auto": crop ratios and loss weights planned from the labels' sizes (segloop.planning.sampling)
            "class_sampling": list(CLASS_SAMPLINGS),
            "replay_ratio": replay_ratio,
            "promotion_tolerance": promotion_tolerance,
            "nice": 10,  # CPU priority of training runs: interactive inference comes first
            "dataset": ["PersistentDataset", "CacheDataset", "Dataset"],
            "multi_gpu": False,
            "tracking": ["None", "mlflow"],
            "train_procs": train_procs,  # processes per node; > 1 (or train_nodes > 1): torchrun (trainers/distributed.py)
            "train_nodes": train_nodes,
            "train_rdzv": train_rdzv,
        }
        super().__init__(
            model_dir,
            description,
            config=config,
            amp=str(device).startswith("cuda") and amp != "off",  # mixed precision on GPU only
            publish_path=registry.serving_path,
            load_path=pretrained_path,
            labels=list(self.label_map),
            tracking=None,
            **kwargs,
        )
        self.amp_mode = amp
        self._config.pop("early_stop_patience", None)  # runs are bounded by max_epochs / max_seconds
        self._context: Optional[Context] = None
        self._progress: Optional[TrainingProgress] = None
        self._run: Dict = {}
        self._world: Optional[World] = None  # set in a torchrun worker
        self._cropper: Optional[RandCropByLabelClassesd] = None  # this run's crop transform
        self._staged_loss: Optional[SwitchableLoss] = None  # a staged run's loss
        self.quarantine = Quarantine(registry.quarantine_path)  # caches decode checks across this instance's runs

    @property
    def num_channels(self) -> int:
        return len(self.label_map) + 1

    # -- model, loss, data ---------------------------------------------------------------------
    def network(self, context: Context):
        return self._network

    def optimizer(self, context: Context):
        lr = float(context.request.get("lr", self._config["lr"]))
        return torch.optim.AdamW(context.network.parameters(), lr=lr, weight_decay=1e-5)

    def train_inferer(self, context: Context):
        # GPUs get their precision from the engine's AMP (configure_autocast); a CPU with native
        # bfloat16 trains under bfloat16 autocast (networks/precision.py): a faster step
        # (measured by benchmarks/training_step_precision.py), with weights, optimiser state and
        # loss still in float32.
        device = torch.device(context.device)
        if device.type == "cpu" and self.amp_mode == "auto" and native_bfloat16(device):
            return AutocastInferer(device, self.amp_mode)
        if self.channels_last and trains_channels_last(device, self.amp_mode):  # float32 on a CPU: a shorter step (networks/memory_format.py)
            return ChannelsLastInferer()
        return super().train_inferer(context)

    def loss_function(self, context: Context):
        loss = self._dice_ce(self.class_setting(context.request, "class_weights"))
        staged = self.staged_sampling(context.request)
        if staged:  # equal weights until the switch (StagedClassSampling), then the plan's
            loss = self._staged_loss = SwitchableLoss(loss, self._dice_ce(staged["class_weights"]))
        return StackedDeepSupervisionLoss(loss) if has_deep_supervision(self._network) else loss

    @staticmethod
    def _dice_ce(weights: Optional[Sequence[float]]) -> DiceCELoss:
        return DiceCELoss(
            to_onehot_y=True,
            softmax=True,
            include_background=False,
            batch=True,
            weight=torch.tensor(weights, dtype=torch.float32) if weights else None,
        )

    def lr_scheduler_handler(self, context: Context):
        return None  # constant learning rate: runs are short and resume from the serving model

    @property
    def train_crop_size(self) -> Sequence[int]:
        """Voxels of a training crop (at ``target_spacing``)."""
        return self.roi_size

    @property
    def crop_ratios(self) -> List[float]:
        """How often each class (background first) is a crop centre when nothing is planned.
        Equal: small organs and tumours are seen as often as the liver."""
        return [1.0] * self.num_channels

    def class_setting(self, request: Mapping, key: str) -> Optional[List[float]]:
        """The run's ``crop_ratios`` or ``class_weights`` at its start: the request's list, else
        the planned class sampling of an ``auto`` run (:meth:`partition_datalist`), else None
        (equal; a ``staged`` run starts so)."""
        sampling = self._run.get("sampling") or {}
        return self.per_class(request, key) or (sampling.get(key) if sampling.get("mode") == "auto" else None)

    def staged_sampling(self, request: Mapping) -> Optional[Dict]:
        """The plan a ``staged`` run switches to, or None: not staged, nothing small to stage, or
        the request sets ``crop_ratios`` / ``class_weights`` itself (then those hold throughout)."""
        sampling = self._run.get("sampling") or {}
        if sampling.get("mode") != "staged" or not uses_stages(sampling):
            return None
        if self.per_class(request, "crop_ratios") or self.per_class(request, "class_weights"):
            return None
        return sampling

    def per_class(self, request: Mapping, key: str) -> Optional[List[float]]:
        """A request's per-class list (background first; JSON list or comma-separated), or None
        when it is empty. ``crop_ratios``: how often each class is a crop centre (default
        :attr:`crop_ratios`); ``class_weights``: cross-entropy and Dice weight of each class."""
        value = request.get(key, "")
        if value in ("", None):
            return None
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else value.split(",")
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a list of {self.num_channels} numbers (background first), got {value!r}")
        if len(values) != self.num_channels or min(values) < 0 or sum(values) <= 0:
            raise ValueError(f"{key} must be {self.num_channels} non-negative numbers (background first, "
                             f"then {', '.join(self.label_map)}), not all 0; got {values}")
        return values

    def train_pre_transforms(self, context: Context):
        self._cropper = RandCropByLabelClassesd(  # a staged run changes its ratios mid-run (in this process)
            keys=("image", "label"),
            label_key="label",
            spatial_size=self.train_crop_size,
            num_classes=self.num_channels,
            ratios=self.class_setting(context.request, "crop_ratios") or self.crop_ratios,
            num_samples=int(context.request.get("samples_per_case", 2)),
            warn=False,
        )
        return load_and_normalize(self.target_spacing, self.hu_window, "label", self.label_map) + [
            SpatialPadd(keys=("image", "label"), spatial_size=self.train_crop_size),
            self._cropper,
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
        ] + self.structure_shift(context.request) + [
            SelectItemsd(keys=("image", "label")),
        ]

    def structure_shift(self, request: Mapping) -> List:
        """The per-structure intensity augmentation of ``structure_shift_hu`` (HU; 0: none), in the
        image's units after the HU window."""
        try:
            hu = float(request.get("structure_shift_hu", self._config.get("structure_shift_hu", 0)) or 0)
        except (TypeError, ValueError):
            raise ValueError(f"structure_shift_hu must be a number of HU, got {request.get('structure_shift_hu')!r}")
        if hu < 0 or hu != hu:
            raise ValueError(f"structure_shift_hu must be >= 0 HU, got {hu}")
        if hu == 0:
            return []
        offset = hu / (self.hu_window[1] - self.hu_window[0])
        return [RandLabelIntensityShiftd(keys="image", label_key="label", offsets=(-offset, offset), prob=0.25)]

    def train_post_transforms(self, context: Context):
        heads = [Lambdad(keys="pred", func=main_head)] if has_deep_supervision(self._network) else []
        return heads + [
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

    def train_additional_metrics(self, context: Context):
        # a staged run switches on the training Dice of each label (trainers/staged_sampling.py)
        return per_label_dice(self.label_map) if self.staged_sampling(context.request) else None

    def _dataset(self, context, datalist, is_train, replace_rate=0.25):
        """PersistentDataset keeps its cache across runs (MONAI Label's is per run): a case whose
        image and label are unchanged is not decoded and resampled again. Items carry their label
        timestamp, so a re-edited label hashes to a new cache entry."""
        if context.dataset_type != "PersistentDataset":
            return super()._dataset(context, datalist, is_train, replace_rate)
        if is_train and self._world and len(datalist) >= self._world.size:  # each rank its shard (fewer cases: all ranks all)
            datalist = partition_dataset(data=datalist, num_partitions=self._world.size, even_divisible=True)[self._world.rank]
        transforms = self.train_pre_transforms(context) if is_train else self.val_pre_transforms(context)
        return PersistentDataset(datalist, Compose(transforms), cache_dir=self.cache_dir), datalist

    @property
    def cache_dir(self) -> str:
        return os.path.join(self._model_dir, "cache")

    def pre_process(self, request, datastore):
        datalist = datastore.datalist()
        if not datalist:
            raise ValueError("No final labels in the datastore yet: submit at least one label before training.")
        for item in datalist:  # label timestamps identify which corrections a version has seen
            item["label_ts"] = datastore.get_label_info(case_key(item), "final").get("ts")
        datalist = self.quarantine.filter(datalist, case_key)  # undecodable cases would fail every run
        if not datalist:
            raise ValueError(f"No labelled case decodes: every one is quarantined (see {self.quarantine.path}).")
        return datalist

    def partition_datalist(self, context: Context, shuffle=False):
        request = context.request
        history = self.registry.state()["versions"]
        latest = self.registry.latest_completed() or {}  # a failed or interrupted run saw no labels
        train, val = stable_split(
            context.datalist,
            float(request.get("val_split", 0.2)),
            keep_val=set(latest.get("validation_cases", [])),
            ever_trained={case for v in history for case in v.get("labels_used", [])},
        )
        seen = latest.get("labels_seen", {})
        run = {
            "labels_seen": {case_key(d): d.get("label_ts") for d in context.datalist},
            "validation_cases": sorted(case_key(d) for d in val),
            "new_labels": sorted(case_key(d) for d in train if seen.get(case_key(d)) != d.get("label_ts")),
        }
        if strtobool(str(request.get("incremental", False))) and seen:
            parts = select_incremental(train, seen, float(request.get("replay_ratio", 1.0)), len(seen))
            if parts["new"]:
                train = parts["new"] + parts["replay"]
            run["replay_labels"] = sorted(case_key(d) for d in parts["replay"])
        run["labels_used"] = sorted(case_key(d) for d in train)
        mode = request.get("class_sampling")
        if "class_sampling" in self._config and mode in PLANNED_SAMPLINGS:
            # planned from every labelled case, not only this run's: the same plan on every rank
            sampling = plan_class_sampling([d["label"] for d in context.datalist], self.label_map)
            run["sampling"] = {**sampling, "mode": mode} if sampling else None
        self._run.update(run)
        # With few cases an epoch is one or two iterations: validate every ~VALIDATE_EVERY iterations,
        # not every epoch, or validation eats the run's time budget.
        iterations_per_epoch = max(1, math.ceil(len(train) / int(request.get("train_batch_size", 1))))
        self._val_interval = max(1, math.ceil(VALIDATE_EVERY / iterations_per_epoch))
        logger.info(f"Training on {len(train)} case(s) ({len(run['new_labels'])} new); validating on {len(val)}")
        return train, val

    # -- checkpoints and versions --------------------------------------------------------------
    def load_path(self, output_dir, pretrained=True):
        """Fine-tune the serving model; fall back to the configured local checkpoint."""
        if strtobool(str(self._run.get("request", {}).get("from_scratch", False))):
            logger.info("from_scratch: training starts from random weights")
            return None
        self.registry.verify_serving()  # never fine-tune a replaced or corrupted serving file
        for path in (self.registry.serving_path, self.pretrained_path):
            if path and os.path.exists(path):
                return path
        return None

    # -- distributed runs (trainers/distributed.py) -----------------------------------------------
    def __call__(self, request, datastore):
        """MONAI Label's entry point for a run. A request for several processes makes this process
        the launcher of a torchrun; a torchrun worker trains as its rank; otherwise MONAI Label's."""
        world = torchrun_world()
        if world is None and requested_processes({**self._config, **request}) > 1:
            return self._launch(request)
        if world is None:
            return super().__call__(request, datastore)
        self._world = world
        req = copy.deepcopy(self._config)
        req.update(copy.deepcopy(request))
        device = rank_device(req.get("device", "cpu"), world)
        req.update({"device": device, "multi_gpu": True, "distributed_backend": backend_for(device), "distributed_url": "env://"})
        return self.train(world.rank, world.size, req, self.pre_process(req, datastore))

    def _launch(self, request) -> Dict:
        request = dict(request, run_id=request.get("run_id") or datetime.now().strftime("%Y%m%d_%H%M%S"))
        request = {**{k: v for k, v in self._config.items() if k.startswith("train_")}, **request}
        code = run_torchrun(request)
        if code != 0:
            interrupted = self.registry.discard_interrupted_run()  # a rank died before rank 0 could record it
            raise RuntimeError(f"distributed training run exited with code {code}" + (" (discarded)" if interrupted else ""))
        return self.stats()

    def _is_writer(self) -> bool:
        """Rank 0 of a distributed run, or the only process: the one that writes the run's files."""
        return self._world is None or self._world.rank == 0

    def _device(self, context: Context):
        if self._world is None:
            return super()._device(context)
        return torch.device(context.request["device"])

    def _create_network_and_optimizer(self, context: Context):
        if self._world is None:
            network, optimizer = super()._create_network_and_optimizer(context)
            self._hold_layout(context)
            return network, optimizer
        network = self.network(context).to(context.device)
        self._hold_layout(context, network)
        context.network = network
        optimizer = self.optimizer(context)
        ids = [context.device.index] if context.device.type == "cuda" else None  # CPU (gloo): no device ids
        # MONAI's transformer blocks hold cross-attention weights that UNETR never uses: without
        # find_unused_parameters DDP would wait for their gradients at the second step.
        wrapped = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=ids, output_device=ids[0] if ids else None, find_unused_parameters=True
        )
        return wrapped, optimizer

    def _hold_layout(self, context: Context, network: Optional[torch.nn.Module] = None) -> None:
        """Float32 CPU training holds the network channels-last (networks/memory_format.py); the
        optimiser keeps the same parameters. :meth:`train` puts the default layout back."""
        if self.channels_last and trains_channels_last(context.device, self.amp_mode):
            to_channels_last(network if network is not None else context.network)

    def _create_evaluator(self, context: Context):
        # A distributed run does not validate while it trains: rank 0 validates the candidate at the end.
        return None if self._world is not None else super()._create_evaluator(context)

    def finalize(self, context: Context):
        self._context = context
        self._progress = TrainingProgress(
            self._stats_path,
            context.trainer,
            context.evaluator,
            context.start_ts,
            max_seconds=float(context.request.get("max_seconds", 0) or 0),
            max_iterations=int(context.request.get("max_iterations", 0) or 0),
            writes=self._is_writer(),
        )
        self._progress.attach()
        schedule = context.request.get("lr_schedule", "constant")
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {schedule!r}; choose one of {list(LR_SCHEDULES)}")
        if schedule == "cosine":
            BudgetCosineLR(context.optimizer, self._progress).attach(context.trainer)
        clip = float(context.request.get("grad_clip", 0) or 0)
        if clip > 0:
            clip_gradients(context.optimizer, clip)
        configure_autocast(context.trainer, self.amp_mode)
        staged = self.staged_sampling(context.request)
        if staged:
            StagedClassSampling(self._cropper, self._staged_loss, staged).attach(context.trainer)
        nan_guard = TerminateOnNan(output_transform=from_engine(["loss"], first=True))
        context.trainer.add_event_handler(Events.ITERATION_COMPLETED, nan_guard)

    def train(self, rank, world_size, request, datalist):
        request = dict(request, name=f"run_{request['run_id']}")  # one output folder per run
        for key in ("dataset", "dataloader", "tracking", "lr_schedule", "class_sampling"):  # a choice list left as is means its default
            if isinstance(request.get(key), list):
                request[key] = request[key][0]
        serving = self.registry.serving()
        self._run = {"request": request, "parent": serving}
        self._context, self._progress = None, None
        lower_priority(int(request.get("nice", 10)))
        if request.get("seed") is not None:  # reproducible runs (tests, benchmarks); each rank its own stream
            set_determinism(seed=int(request["seed"]) + rank)
        writer = self._is_writer()
        if writer:
            self.registry.start_run(request["run_id"], {k: request.get(k) for k in ("incremental", "max_seconds", "max_epochs")})
        start = time.time()
        try:
            try:
                stats = super().train(rank, world_size, request, datalist)
            finally:
                to_default_layout(self._network)  # the layout inference and the published weights use
            if not writer:
                return stats  # the other ranks only trained: rank 0 validates, records and publishes
            loss = self._last_loss()
            if loss is None or not math.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss}: run stopped, serving model unchanged")
            record = self._decide(start)
        except Exception as e:
            if writer:
                self.registry.record(self._version_record(start, status="failed", error=f"{type(e).__name__}: {e}"), None, False)
                if self._progress is not None:
                    self._progress_extra({"error": f"{type(e).__name__}: {e}"})
            raise
        finally:
            if writer:
                shutil.rmtree(os.path.join(self._model_dir, request["name"]), ignore_errors=True)
        stats["version"] = record
        self._progress_extra({"version": record})
        return stats

    def _last_loss(self) -> Optional[float]:
        output = self._context.trainer.state.output if self._context else None
        if isinstance(output, list) and output:
            return float(output[0]["loss"])
        return None

    def _progress_extra(self, extra: Dict) -> None:
        self._progress.extra.update(extra)
        self._progress.write(finished=True)

    def _version_record(self, start: float, **fields) -> Dict:
        state = self._context.trainer.state if self._context else None
        run = {k: v for k, v in self._run.items() if k != "request"}
        return {
            **run,
            "train_seconds": round(time.time() - start, 1),
            "iterations": state.iteration if state else 0,
            "request": {
                k: self._run["request"].get(k)
                for k in ("incremental", "from_scratch", "max_seconds", "lr", "lr_schedule", "structure_shift_hu")
            },
            "geometry": {
                "planned": self.plan is not None,
                "target_spacing": list(self.target_spacing),
                "roi_size": list(self.roi_size),
                "hu_window": list(self.hu_window),
                "network": type(self._network).__name__,
                "why": self.plan["why"] if self.plan else None,  # the fingerprint figures the plan followed
            },
            **fields,
        }

    def _candidate_weights(self) -> Dict[str, torch.Tensor]:
        """The run's final weights (scored against the serving version before they can serve)."""
        path = os.path.join(self._context.output_dir, self._final_filename)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return checkpoint.get(self._model_dict_key, checkpoint)

    def _score(self, weights: Mapping[str, torch.Tensor], context: Context, on_logits=None) -> Dict[str, float]:
        """Per-label validation Dice (and ``mean``) of ``weights``: decides promotion."""
        return segmentation_dice(
            self._network, weights, context.val_datalist, self.val_pre_transforms(context),
            self.val_inferer(context), self.label_map, context.device, on_logits=on_logits,
        )

    def _calibration(self) -> Optional[CalibrationAccumulator]:
        """Collects the candidate's validation logits for ECE and temperature scaling (None: not measured)."""
        return CalibrationAccumulator()

    def _decide(self, start: float) -> Dict:
        context = self._context
        candidate = self._candidate_weights()
        tolerance = float(context.request.get("promotion_tolerance", 0.02))
        fields: Dict = {"val_dice": None, "parent_val_dice": None}
        serving_exists = os.path.exists(self.registry.serving_path)
        if context.val_datalist:
            calibration = self._calibration()
            fields["val_dice"] = self._score(candidate, context, on_logits=calibration.add if calibration else None)
            fields["calibration"] = calibration.result() if calibration else None
            if serving_exists:
                parent = torch.load(self.registry.serving_path, map_location="cpu", weights_only=True)
                fields["parent_val_dice"] = self._score(parent.get("model", parent), context)
        decision = decide_promotion(
            fields["val_dice"], fields["parent_val_dice"], tolerance,
            has_validation=bool(context.val_datalist), serving_exists=serving_exists,
        )
        logger.info(decision.reason)
        status = "promoted" if decision.promote else "kept"
        record = self._version_record(start, status=status, reason=decision.reason, **fields)
        return self.registry.record(record, candidate, decision.promote)
