"""TaskConfig for the automatic segmentation model: one network, its infer task and trainer."""

import logging
import os
from typing import Any, Dict

from monailabel.interfaces.config import TaskConfig

from segloop.campaign.registry import ModelRegistry
from segloop.configs.options import parse_options, resolve_device
from segloop.infers import SegmentationInfer
from segloop.activelearning import build_strategies
from segloop.infers.uncertainty import UncertaintyMaps
from segloop.networks import build_network, get_preset
from segloop.planning import labelled_pairs, load_or_make_plan
from segloop.server.lifecycle import in_server_subprocess
from segloop.scoring import SCORING_METHOD, ScoreStore, UncertaintyScoring
from segloop.trainers import SegmentationTrainer

logger = logging.getLogger(__name__)


class Segmentation(TaskConfig):
    proposes_full_labels = True  # its /infer result is the automatic proposal edit effort is measured on

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.options = parse_options(conf)
        self.labels = self.options.labels
        self.device = resolve_device(self.options.device)
        # Model files, MONAI Label style: [starting checkpoint, published]; the last existing one serves.
        os.makedirs(model_dir, exist_ok=True)
        self.registry = ModelRegistry(model_dir, name)
        self.published_path = self.registry.serving_path  # the serving version
        self.path = [p for p in (self.options.checkpoint, self.published_path) if p]
        self.plan = self._plan(conf, kwargs.get("studies"))
        self.target_spacing = tuple(self.plan["target_spacing"]) if self.plan else self.options.target_spacing
        self.roi_size = tuple(self.plan["roi_size"]) if self.plan else self.options.roi_size
        self.hu_window = tuple(self.plan["hu_window"]) if self.plan and self.plan["hu_window"] else self.options.hu_window
        self.network = build_network(
            self.options.network, len(self.labels) + 1, self.roi_size, dropout=self.options.dropout,
            target_spacing=self.target_spacing,
        )
        self.scores = ScoreStore(self.registry.folder)
        self.uncertainty_maps = UncertaintyMaps(os.path.join(self.registry.folder, "uncertainty"))
        logger.info(
            f"{name}: network={self.options.network} roi={self.roi_size} spacing={self.target_spacing} "
            f"hu_window={self.hu_window} planned={self.plan is not None} labels={self.labels} device={self.device}"
        )

    def _plan(self, conf: Dict[str, str], studies: Any):
        """The planned geometry (``segloop.planning``) unless planning is off, the geometry is set
        by hand, a checkpoint is given, or the datastore is not a local folder. The plan is made
        where the server starts, from the labels it finds then; a server started without labels
        keeps the preset's geometry for this model (its first run trains at it)."""
        if self.options.plan != "auto" or self.options.checkpoint or conf.get("target_spacing") or conf.get("roi_size"):
            return None
        local = isinstance(studies, str) and os.path.isdir(studies)
        trained = self.registry.serving() is not None or os.path.exists(self.published_path)
        return load_or_make_plan(
            self.registry.folder, get_preset(self.options.network), labelled_pairs(studies) if local else [],
            self.labels, trained, may_create=not in_server_subprocess(),
        )

    def infer(self):
        return SegmentationInfer(
            path=self.path,
            network=self.network,
            labels=self.labels,
            target_spacing=self.target_spacing,
            roi_size=self.roi_size,
            hu_window=self.hu_window,
            model_name=self.name,
            device=self.device,
            registry=self.registry,
            uncertainty_maps=self.uncertainty_maps,
        )

    def trainer(self):
        return SegmentationTrainer(
            model_dir=os.path.join(self.model_dir, self.name),
            network=self.network,
            labels=self.labels,
            target_spacing=self.target_spacing,
            roi_size=self.roi_size,
            registry=self.registry,
            pretrained_path=self.options.checkpoint,
            hu_window=self.hu_window,
            plan=self.plan,
            device=self.device,
            amp=self.options.amp,
            max_epochs=self.options.max_epochs,
            promotion_tolerance=self.options.promotion_tolerance,
            replay_ratio=self.options.replay_ratio,
            train_procs=self.options.train_procs_per_node,
            train_nodes=self.options.train_nodes,
            train_rdzv=self.options.train_rdzv,
            description=f"Train {self.name} ({self.options.network}) on the final labels",
        )

    def strategy(self):
        """SegLoop's scored strategies (entropy, epistemic, diversity, hybrid) over this model's scores."""
        return build_strategies(self.scores)

    def scoring_method(self):
        return {
            SCORING_METHOD: UncertaintyScoring(
                self.infer(),
                self.scores,
                roi_size=self.roi_size,
                device=self.device,
                mc_samples=self.options.mc_samples,
                tta_samples=self.options.tta_samples,
                registry=self.registry,
                workers=self.options.scoring_workers,
                ray_address=self.options.ray_address,
            )
        }
