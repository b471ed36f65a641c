"""One ``TaskConfig`` per served model, as in MONAI Label's sample apps."""

from segloop.configs.segmentation import Segmentation

TASK_CONFIGS = {"segmentation": Segmentation}

__all__ = ["Segmentation", "TASK_CONFIGS"]
