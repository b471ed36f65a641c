"""SegLoop: human-in-the-loop 3D medical image segmentation on MONAI Label."""

__version__ = "0.1.0"
