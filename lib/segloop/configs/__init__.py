"""One ``TaskConfig`` per served model, as in MONAI Label's sample apps."""

from segloop.configs.prompt import Prompt
from segloop.configs.segmentation import Segmentation

TASK_CONFIGS = {"segmentation": Segmentation, "prompt": Prompt}

__all__ = ["Prompt", "Segmentation", "TASK_CONFIGS"]
