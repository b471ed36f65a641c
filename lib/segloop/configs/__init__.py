"""One ``TaskConfig`` per served model, as in MONAI Label's sample apps."""

from segloop.configs.prompt import InteractiveSegmentation
from segloop.configs.segmentation import Segmentation

TASK_CONFIGS = {"segmentation": Segmentation, "prompt": InteractiveSegmentation}

__all__ = ["InteractiveSegmentation", "Segmentation", "TASK_CONFIGS"]
