from segloop.infers.segmentation import SegmentationInfer

__all__ = ["SegmentationInfer"]
