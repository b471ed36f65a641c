"""``/batch/infer`` of the automatic model as Ray tasks (``segloop.ray_tasks``): a local runtime
with ``batch_infer_workers`` CPUs, or the cluster at ``ray_address``.

MONAI Label's own batch inference (``BatchInferTask``) runs every image in a thread pool of the
batch subprocess. Here that subprocess is Ray's driver: it checks and loads the serving version
once, sends a copy of the infer task with those weights to Ray's object store
(:meth:`SegmentationInfer.portable`), runs one task per image (the image read from its datastore
path, which a cluster's workers must see at the same path), and saves each returned label in the
datastore itself under the request's ``label_tag``, as MONAI Label does, so the datastore has one
writer. An image whose inference fails gets an empty result (MONAI Label's convention) and the run
goes on; a worker that dies loses only its image, which Ray runs again. Other models (the
prompt-able one) keep MONAI Label's batch inference (:class:`segloop.infers.batch.BatchInfer`).
"""

import logging
import os
import pathlib
import shutil
import tempfile
from typing import Callable, Dict, Mapping

from monailabel.interfaces.datastore import Datastore, DefaultLabelTag

from segloop.infers.batch import BatchInfer
from segloop.infers.segmentation import SegmentationInfer
from segloop.ray_tasks import map_on_ray

logger = logging.getLogger(__name__)


def _segment_one(task: SegmentationInfer, request: Dict) -> Dict:
    """One image in a Ray worker: the task's label file as bytes (and its name's suffix) with the
    result JSON, or ``error`` when inference raised (a bad image: not a worker failure to retry)."""
    try:
        result_file, params = task(request)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        with open(result_file, "rb") as f:
            content = f.read()
    finally:
        os.remove(result_file)
    return {"content": content, "suffix": "".join(pathlib.Path(result_file).suffixes), "params": params}


class RayBatchInfer(BatchInfer):
    """MONAI Label's batch inference task with the automatic model's images on Ray; ``infers``
    gives the app's infer tasks by name (read when a request comes: the app builds them after
    this task)."""

    def __init__(self, infers: Callable[[], Mapping], workers: int, address: str = ""):
        self.infers, self.workers, self.address = infers, max(1, int(workers)), address

    def __call__(self, request, datastore: Datastore, infer: Callable):
        task = self.infers().get(request.get("model"))
        if not isinstance(task, SegmentationInfer):
            return super().__call__(request, datastore, infer)
        image_ids = sorted(self.get_images(request, datastore))
        if int(request.get("max_batch_size", 0) or 0) > 0:
            image_ids = image_ids[: int(request["max_batch_size"])]
        tag = request.get("label_tag", DefaultLabelTag.ORIGINAL)
        results: Dict[str, Dict] = {}
        if not image_ids:
            return results
        data: Dict = {}
        portable = task.portable(data)
        logger.info(f"batch inference of {len(image_ids)} image(s) on Ray, {self.workers} at a time, "
                    f"version {data.get('result', {}).get('model_version')}; label tag {tag}")
        scratch = tempfile.mkdtemp(prefix="segloop-batch-")

        def save(item: Dict, outcome: Dict) -> None:
            image_id = item["id"]
            if "error" in outcome:
                logger.warning(f"batch inference of {image_id} failed: {outcome['error']}")
                results[image_id] = {}
            else:
                path = os.path.join(scratch, f"label{outcome['suffix']}")
                with open(path, "wb") as f:
                    f.write(outcome["content"])
                params = outcome["params"]
                label_id = datastore.save_label(image_id, path, tag, {"model": request.get("model"), "params": params})
                os.remove(path)
                results[image_id] = {"label": label_id, "tag": tag, "params": params}
            logger.info(f"batch inference: {len(results)} / {len(image_ids)} ({image_id})")

        def arguments(item: Dict):
            return (dict(request, image=datastore.get_image_uri(item["id"]), device="cpu"),)

        try:
            map_on_ray(
                _segment_one, portable, [{"id": i} for i in image_ids], arguments, save,
                on_failure=lambda item, e: {"error": f"{type(e).__name__}: {e}"},
                should_stop=lambda: False, workers=self.workers, address=self.address,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return results
