from segloop.trainers.segmentation import SegmentationTrainer

__all__ = ["SegmentationTrainer"]
