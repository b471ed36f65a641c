"""Score a candidate's weights on validation cases, per label, for the promotion decision.

The candidate and the serving version are scored on the very same cases in the same run, so their
figures are comparable even as the validation set grows (:mod:`segloop.campaign.promotion`).

* :func:`segmentation_dice`: the automatic model, Dice per label at its working resolution;
* :func:`prompt_dice`: the prompt model, Dice of what a user gets on the image's own grid: one
  simulated click with the label prompt, and the label prompt alone.
"""

from typing import Callable, Dict, Mapping, Optional, Sequence

import numpy as np
import torch
from monai.data import Dataset
from monai.inferers import Inferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.transforms import Compose

from segloop.metrics.dice import dice
from segloop.networks import copy_network
from segloop.prompts.click_protocol import case_structures, click_session
from segloop.prompts.encoding import Prompt
from segloop.prompts.zoom import ZoomOutZoomIn


def segmentation_dice(
    network: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    datalist: Sequence[Dict],
    transforms: Sequence,
    inferer: Inferer,
    labels: Mapping[str, int],
    device: torch.device,
    on_logits: Optional[Callable[[torch.Tensor, torch.Tensor], None]] = None,
) -> Dict[str, float]:
    """Mean Dice per label name over ``datalist`` (labels absent everywhere are left out), plus ``mean``.

    ``on_logits(logits [C, H, W, D], label [1, H, W, D])`` sees each case's raw output (calibration)."""
    net = copy_network(network).to(device)
    net.load_state_dict(state_dict)
    net.eval()
    channels = len(labels) + 1
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    for item in Dataset(list(datalist), Compose(list(transforms))):
        with torch.no_grad():
            logits = inferer(item["image"][None].to(device), net)
        if on_logits is not None:
            on_logits(torch.as_tensor(logits[0]).cpu(), torch.as_tensor(item["label"]))
        pred = one_hot(torch.argmax(logits, dim=1, keepdim=True), channels)
        metric(pred.cpu(), one_hot(torch.as_tensor(item["label"])[None].long(), channels))
    per_channel = metric.aggregate().cpu().numpy()
    names = sorted(labels, key=labels.get)
    scores = {name: float(v) for name, v in zip(names, per_channel) if np.isfinite(v)}
    scores["mean"] = float(np.mean(list(scores.values()))) if scores else float("nan")
    return scores


def prompt_dice(network, datalist, labels, roi_size, coarse_spacing, fine_spacing, hu_window, device, amp="auto") -> Dict[str, float]:
    """Per label, the mean Dice of one click (with the label) and of the label prompt alone, plus ``mean``.

    ``network`` carries the candidate's weights, in eval mode on ``device``; ``datalist`` items
    have ``image`` and ``label`` paths."""
    pipeline = ZoomOutZoomIn(network, roi_size, coarse_spacing, fine_spacing, hu_window, device, amp=amp)
    per_label: Dict[str, list] = {}
    for image, name, c, target in case_structures(datalist, labels):
        one_click = click_session(pipeline, image, target, c, 1)["dice"][0]
        label_only, _ = pipeline(image, Prompt(label=c))
        per_label.setdefault(name, []).extend([one_click, dice(label_only, target)])
    scores = {name: float(np.mean(v)) for name, v in per_label.items()}
    scores["mean"] = float(np.mean(list(scores.values()))) if scores else float("nan")
    return scores
