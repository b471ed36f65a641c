"""The active-learning scoring job: a MONAI Label ``ScoringMethod`` run in the background.

MONAI Label starts it (as a subprocess of its scoring pool, like training) at server start, after
every training run and after every ``/activelearning`` request; it can also be started by hand
with ``POST /scoring/segloop_uncertainty``. For the serving version of the automatic model it
scores

* every unlabelled image: predictive entropy of the served prediction, MC-dropout and TTA
  samples (see ``segloop.scoring.uncertainty``) and the encoder embedding;
* every labelled image: the embedding only (diversity measures distance to labelled cases).

Images whose record is current (same model version, same label) are skipped, so a rerun after
``/activelearning`` costs nothing. On a CPU server scoring and training share the cores, so the
job defers while a training run is going (the run's end starts scoring again) and stops early
when a new version starts serving (its scores would be stale at once). One image failing (unreadable file, ...) is recorded as an
error on that image and the job goes on; that image is tried again only once another version
serves or its label changes (``ScoreStore.is_stale``), not on every ``/activelearning``. Progress (``done`` / ``total``) is in the score store,
shown by ``GET /segloop/activelearning``.
"""

import logging
import os
import time
import zlib
from typing import Dict, List, Optional, Sequence

import torch

from monai.transforms import Compose
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod

from segloop.cpu_sharing import lower_priority
from segloop.scoring.embedding import image_embedding
from segloop.scoring.ray_pool import score_on_ray
from segloop.scoring.store import COMPONENTS, ScoreStore
from segloop.scoring.uncertainty import (
    has_dropout,
    mc_dropout_samples,
    softmax_predictor,
    summarize_samples,
    tta_samples,
)

logger = logging.getLogger(__name__)

SCORING_METHOD = "segloop_uncertainty"


class ImageScorer:
    """Scores one image with a loaded network: the parts of a record named in ``components``."""

    def __init__(self, network, pre_transforms: Sequence, inferer, roi_size, device, mc_samples=4, tta_samples=4):
        self.network = network
        self.pre_transforms = Compose(list(pre_transforms))
        self.inferer = inferer
        self.roi_size = tuple(roi_size)
        self.device = device
        self.mc_samples = mc_samples
        self.tta_samples = tta_samples

    def available(self, components: Sequence[str]) -> List[str]:
        """``components``, with TTA standing in for MC dropout when the network has no dropout."""
        sampled_mc = self.mc_samples > 1 and has_dropout(self.network)
        out = [c if c != "mc" or sampled_mc else "tta" for c in components]
        return [c for c in dict.fromkeys(out) if c != "tta" or self.tta_samples > 1]

    def record(self, image_path: str, components: Sequence[str]) -> Dict:
        """:meth:`__call__` with its ``seconds``, or ``{"error", "components": []}`` when it raises:
        one bad image must not stop the campaign's scoring."""
        start = time.time()
        try:
            record = self(image_path, components)
        except Exception as e:
            logger.exception(f"scoring {image_path} failed")
            record = {"error": f"{type(e).__name__}: {e}", "components": []}
        return dict(record, seconds=round(time.time() - start, 2))

    def __call__(self, image_path: str, components: Sequence[str]) -> Dict:
        item = self.pre_transforms({"image": image_path})
        image = item["image"]
        components = self.available(components)
        record: Dict = {"components": components}
        if "embedding" in components:
            record["embedding"] = image_embedding(self.network, image, self.roi_size, self.device)
        if "entropy" in components:
            self.network.eval()
            probs = softmax_predictor(self.network, self.inferer, self.device)(image[None])
            record.update(summarize_samples(probs))  # one sample: entropy of the served prediction
            del record["mutual_information"], record["variance"]
        seed = zlib.crc32(os.path.basename(image_path).encode())  # sampling seeded by the image: the same scores in any process
        if "mc" in components:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                samples = mc_dropout_samples(self.network, image, self.inferer, self.device, self.mc_samples)
            record["mc"] = summarize_samples(samples)
        if "tta" in components:
            record["tta"] = summarize_samples(tta_samples(self.network, item, self.inferer, self.device, self.tta_samples, seed))
        return record


class UncertaintyScoring(ScoringMethod):
    def __init__(
        self, infer_task, store: ScoreStore, roi_size, device: str, mc_samples: int = 4, tta_samples: int = 4, registry=None,
        workers: int = 0, ray_address: str = "",
    ):
        super().__init__("Active learning scores of the automatic model: entropy, MC dropout, TTA, embedding")
        self.infer_task = infer_task
        self.store = store
        self.roi_size = tuple(roi_size)
        self.device = device
        self.mc_samples = mc_samples
        self.tta_samples = tta_samples
        self.registry = registry
        self.workers = int(workers)  # 0: score in this process; N: N Ray tasks at a time (ray_pool.py)
        self.ray_address = ray_address

    def scorer(self, network) -> ImageScorer:
        task = self.infer_task
        inferer = task.inferer({"sw_overlap": 0.0})  # scores rank whole volumes: no need for blended windows
        return ImageScorer(
            network, task.pre_transforms(), inferer, self.roi_size, self.device, self.mc_samples, self.tta_samples
        )

    def pending(self, datastore: Datastore) -> int:
        """How many images a job would score now (0 before any version serves): cheap, no weights
        loaded, so the server asks before starting a scoring subprocess."""
        version = self.registry.serving() if self.registry is not None else None
        if version is None:
            return 0
        return len(self.plan(datastore, version, self.scorer(self.infer_task.network).available(COMPONENTS)))

    def plan(self, datastore: Datastore, version: Optional[int], components: Sequence[str]) -> List[Dict]:
        """The images whose scores are stale (``components`` as the scorer can provide them):
        labelled images need the embedding only."""
        records = self.store.records()
        labelled = set(datastore.get_labeled_images())
        todo = []
        for image_id in sorted(datastore.list_images(), key=lambda i: (i not in labelled, i)):
            label_ts = datastore.get_label_info(image_id, "final").get("ts") if image_id in labelled else None
            needed = ["embedding"] if image_id in labelled else list(components)
            needed = [c for c in needed if c in components]
            if needed and ScoreStore.is_stale(records.get(image_id), version, label_ts, needed):
                todo.append({"id": image_id, "label_ts": label_ts, "components": needed})
        return todo

    def __call__(self, request, datastore: Datastore):
        if not self.infer_task.get_path():
            return {"status": "skipped", "reason": "no model version serves yet"}
        if self.registry is not None and self.registry.state().get("running") and not request.get("force"):
            return {"status": "deferred", "reason": "a training run is going; scoring follows its end"}
        lower_priority(int(request.get("nice", 10)))
        data: Dict = {}
        network = self.infer_task._get_network(self.device, data)
        version = data["result"]["model_version"]
        components = [c for c in request.get("components", COMPONENTS) if c in COMPONENTS]
        scorer = self.scorer(network)
        todo = self.plan(datastore, version, scorer.available(components))
        start = time.time()
        self.store.set_job(new=True, version=version, total=len(todo), done=0, errors=0, started=time.time(), finished=None,
                           workers=self.workers or 1, ray=bool(self.workers or self.ray_address))
        progress = {"done": 0, "errors": 0}

        def store(item: Dict, record: Dict) -> None:
            record.update(version=version, label_ts=item["label_ts"])
            self.store.put(item["id"], record)
            progress["done"] += 1
            progress["errors"] += bool(record.get("error"))
            self.store.set_job(**progress)
            logger.info(f"{SCORING_METHOD}: {progress['done']}/{len(todo)} {item['id']} ({record.get('seconds')} s)")

        def newer_version_serves() -> bool:
            if self.registry is not None and self.registry.serving() != version:
                logger.info(f"{SCORING_METHOD}: version {self.registry.serving()} now serves; stopping this job")
                self.store.set_job(stopped="a newer version serves")
                return True
            return False

        if self.workers or self.ray_address:
            score_on_ray(scorer, todo, datastore.get_image_uri, store, newer_version_serves,
                         workers=max(1, self.workers), address=self.ray_address)
        else:
            for item in todo:
                if newer_version_serves():
                    break
                store(item, scorer.record(datastore.get_image_uri(item["id"]), item["components"]))
        errors = progress["errors"]
        self.store.set_job(finished=time.time())
        summary = {"version": version, "scored": len(todo), "errors": errors, "seconds": round(time.time() - start, 1)}
        logger.info(f"{SCORING_METHOD}: {summary}")
        return summary
