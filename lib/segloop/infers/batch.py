"""``/batch/infer`` with MONAI Label's own batch task, on a machine without a GPU.

MONAI Label's ``BatchInferTask`` spreads the images over the visible GPUs unless the request says
``multi_gpu: false``, and picks each image's device by dividing by their count: with no GPU that
count is 0 and every ``/batch/infer`` ends in ``ZeroDivisionError`` before any image runs. Here the
images go to the one device the request names (``cpu`` where torch sees no GPU) instead.
"""

import torch
from monailabel.interfaces.tasks.batch_infer import BatchInferTask


class BatchInfer(BatchInferTask):
    """MONAI Label's batch inference (one image after another, or ``max_workers`` threads); on a
    machine without a GPU, on its CPU."""

    def __call__(self, request, datastore, infer):
        if not torch.cuda.is_available():
            request = dict(request, multi_gpu=False)
        return super().__call__(request, datastore, infer)
