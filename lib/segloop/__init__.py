"""SegLoop: human-in-the-loop 3D medical image segmentation on MONAI Label."""

__version__ = "0.1.0"

from segloop.processes import exit_without_collecting

exit_without_collecting()  # every process that imports SegLoop (server, runs, scoring, Ray workers)
