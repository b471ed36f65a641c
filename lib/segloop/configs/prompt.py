"""TaskConfig for the prompt-able (SegVol-style) model: points, boxes, label / text prompts."""

import logging
import os
from typing import Any, Dict

from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.tasks.infer_v2 import InferType

from segloop.campaign.registry import ModelRegistry
from segloop.configs.options import parse_options, resolve_device
from segloop.infers.prompt import PromptInfer
from segloop.infers.prompt_proposal import PROPOSAL_SUFFIX, PromptProposalInfer
from segloop.networks.prompt import build_prompt_network, get_prompt_preset
from segloop.prompts.text import LabelMatcher, parse_vocabulary
from segloop.trainers.prompt import PromptTrainer

logger = logging.getLogger(__name__)


class InteractiveSegmentation(TaskConfig):
    proposes_full_labels = False  # one structure per request: not an automatic proposal of the case

    def init(self, name: str, model_dir: str, conf: Dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.options = parse_options(conf)
        self.labels = self.options.labels
        self.device = resolve_device(self.options.device)
        self.preset = get_prompt_preset(self.options.prompt_network)
        self.matcher = LabelMatcher(parse_vocabulary(conf.get("label_vocabulary"), list(self.labels)))
        os.makedirs(model_dir, exist_ok=True)
        self.registry = ModelRegistry(model_dir, name)
        self.path = [self.registry.serving_path]
        self.network = build_prompt_network(self.options.prompt_network, len(self.labels))
        logger.info(
            f"{name}: network={self.preset.name} roi={self.preset.roi_size} zoom-out {self.preset.coarse_spacing} mm, "
            f"zoom-in {self.preset.fine_spacing} mm, labels={self.labels} device={self.device}"
        )

    def infer(self):
        """The infer tasks on one network, as MONAI Label's DeepEdit config names its two: ``<name>``
        (DeepGrow type: the plugin's point tools and every SegLoop prompt) and ``<name>_scribbles``
        (Scribbles type: the plugin's scribbles panel); with ``prompt_proposal``, also ``<name>_seg``
        (Segmentation type: every label's label-only answer, merged), as DeepEdit's ``deepedit_seg``."""
        common = dict(path=self.path, network=self.network, labels=self.labels, preset=self.preset, matcher=self.matcher,
                      hu_window=self.options.hu_window, model_name=self.name, device=self.device, amp=self.options.amp)
        tasks = {
            task_name: PromptInfer(**common, infer_type=infer_type)
            for task_name, infer_type in ((self.name, InferType.DEEPGROW), (f"{self.name}_scribbles", InferType.SCRIBBLES))
        }
        if self.options.prompt_proposal:  # its label-only answers as an automatic proposal (infers/prompt_proposal.py)
            tasks[self.name + PROPOSAL_SUFFIX] = PromptProposalInfer(**common)
        return tasks

    def trainer(self):
        return PromptTrainer(
            model_dir=os.path.join(self.model_dir, self.name),
            network=self.network,
            labels=self.labels,
            roi_size=self.preset.roi_size,
            coarse_spacing=self.preset.coarse_spacing,
            fine_spacing=self.preset.fine_spacing,
            registry=self.registry,
            hu_window=self.options.hu_window,
            device=self.device,
            amp=self.options.amp,
            lr=self.preset.lr,
            max_epochs=self.options.max_epochs,
            promotion_tolerance=self.options.promotion_tolerance,
            replay_ratio=self.options.replay_ratio,
            train_procs=self.options.train_procs_per_node,
            train_nodes=self.options.train_nodes,
            train_rdzv=self.options.train_rdzv,
            description=f"Train {self.name} ({self.preset.name}) with simulated clicks, boxes and label prompts",
        )
