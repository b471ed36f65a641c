"""SegLoop's MONAI Label app: wiring only. Models, training and checks live in ``segloop``.

Start it with the real MONAI Label server::

    monailabel start_server --app MONAILabelApp --studies sample_data/studies \
        --conf models segmentation,prompt --conf network unetr_cpu

Every ``--conf`` option is listed in README.md (and by ``segloop conf``).
"""

import logging
import os
import sys
import time
from typing import Dict

from dicomweb_client.session_utils import create_session_from_user_pass
from monailabel.config import settings
from monailabel.datastore.dicom import DICOMwebClientX
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.config import TaskConfig
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import segloop
from segloop.server.auth import authenticated_name, install_auth
from segloop.server.gate import RequestGate
from segloop.trainers.distributed import torchrun_world
from segloop.server.lifecycle import die_with_server, mark_server_process, monai_label_children, stop_children_on_signals
from segloop.server.request_checks import check_client_id, check_infer_image
from segloop.server.routes import build_router
from segloop.server.surface import SurfaceContext, build_surface, install_surface, withdrawn_routes
from segloop.campaign.assignments import AssignmentBook, UnassignedView
from segloop.campaign.loop import CampaignLoop
from segloop.campaign.reads import CampaignRules, Reads
from segloop.configs import TASK_CONFIGS
from segloop.infers.batch import BatchInfer
from segloop.infers.batch_ray import RayBatchInfer
from segloop.configs.options import parse_options
from segloop.cpu_sharing import SHARED_CPU_SETTINGS, shared_cpu_env
from segloop.server.datastore import SegLoopDatastore
from segloop.server.read_desk import ReadDesk
from segloop.server.dicomweb import SegLoopDICOMwebDatastore
from segloop.errors import not_found
from segloop.io import remove_leftover_temporaries

logger = logging.getLogger(__name__)


class SegLoopApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        die_with_server()  # in a train / scoring subprocess: end if the server ends
        if any(key not in os.environ for key in SHARED_CPU_SETTINGS):
            logger.info(f"SegLoop: start the server with {SHARED_CPU_SETTINGS}: training and scoring then progress beside it")
        # Too late for this process's OpenMP (read at start-up), but the train and scoring
        # subprocesses MONAI Label starts copy os.environ (segloop.cpu_sharing).
        shared_cpu_env()
        try:
            self.options = parse_options(conf)
        except ValueError as e:
            sys.exit(f"SegLoop: invalid configuration: {e}")
        unknown = [m for m in self.options.models if m not in TASK_CONFIGS]
        if unknown:
            sys.exit(f"SegLoop: unknown model(s) {unknown}; available: {sorted(TASK_CONFIGS)}")

        remote = studies.startswith(("http://", "https://"))
        if remote and (self.options.reads_per_case > 1 or self.options.review):
            sys.exit("SegLoop: reads_per_case and review keep every annotator's label: they need a local datastore, not DICOMweb")
        default_model_dir = os.path.join(app_dir, "model") if remote else os.path.join(studies, ".segloop", "model")
        self.model_dir = conf.get("model_dir") or default_model_dir
        os.makedirs(self.model_dir, exist_ok=True)

        self.models: Dict[str, TaskConfig] = {}
        for name in self.options.models:
            self.models[name] = TASK_CONFIGS[name]()
            self.models[name].init(name, self.model_dir, conf, None, studies=studies)

        self.model_trainers = {name: config.trainer() for name, config in self.models.items()}
        # Which annotator holds which case (no case handed to two annotators within the lock window).
        self.assignments = AssignmentBook(self.model_dir, self.options.assignment_lock_s)
        # The live loop of each trainable model: versions, automatic retraining, edit effort.
        self.loops: Dict[str, CampaignLoop] = {
            name: CampaignLoop(name, self.models[name].registry, self.options, self.datastore, trainer.config)
            for name, trainer in self.model_trainers.items()
        }

        # Every annotator's read of a case, its review, and the final label they make (local datastores).
        rules = CampaignRules(self.options.reads_per_case, self.options.review, self.options.agreement_threshold)
        self.reads = Reads(self.datastore, self.options.labels, rules)
        self.prompted: Dict[str, float] = {}  # datastore image -> when the prompt model last answered on it
        self.read_desk = None if remote else ReadDesk(self.reads, lambda: self.loops, self.prompted, self._release_booking)

        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="SegLoop",
            description="Human-in-the-loop 3D CT segmentation: automatic and prompt-able models trained on this campaign's labels",
            version=segloop.__version__,
            # MONAI Label's convention, which its OHIF panel relies on: the app's labels are a list of
            # names (ascending index); the indices are in each model's "labels".
            labels=list(self.options.labels),
        )

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return self._init_dicomweb()
        return SegLoopDatastore(
            self.studies,
            labels=self.options.labels,
            max_voxels=self.options.max_voxels,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
        )

    def _init_dicomweb(self):
        """The PACS as datastore: SegLoop's DICOMweb datastore (DICOM SEG by highdicom, bounded cache),
        with MONAI Label's client and credentials (``MONAI_LABEL_DICOMWEB_USERNAME`` / ``_PASSWORD``);
        unlike upstream's, nothing is downloaded from the internet (no dcmqi)."""
        session = None
        if settings.MONAI_LABEL_DICOMWEB_USERNAME and settings.MONAI_LABEL_DICOMWEB_PASSWORD:
            session = create_session_from_user_pass(settings.MONAI_LABEL_DICOMWEB_USERNAME, settings.MONAI_LABEL_DICOMWEB_PASSWORD)
        client = DICOMwebClientX(
            url=self.studies, session=session, qido_url_prefix=settings.MONAI_LABEL_QIDO_PREFIX,
            wado_url_prefix=settings.MONAI_LABEL_WADO_PREFIX, stow_url_prefix=settings.MONAI_LABEL_STOW_PREFIX,
        )
        return SegLoopDICOMwebDatastore(
            client, self.options.labels, search_filter=settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
            cache_path=settings.MONAI_LABEL_DICOMWEB_CACHE_PATH.strip() or os.path.join(self.model_dir, "dicom-cache"),
            max_cached_series=self.options.dicomweb_cache_series, proposal_of=self._served_proposal,
            software_version=segloop.__version__,
        )

    def _served_proposal(self, image_id: str):
        """The automatic model's last proposal for ``image_id`` (file, model, version), if any."""
        for name, loop in self.loops.items():
            proposal = loop.effort.proposal(image_id)
            if proposal:
                return dict(proposal, model=name)
        return None

    def _release_booking(self, image_id: str, annotator: str) -> None:
        self.assignments.release(image_id)  # submitted: the case leaves the annotator's hands

    def init_infers(self):
        infers = {}
        for name, config in self.models.items():  # a config may offer several tasks (MONAI Label's convention)
            tasks = config.infer()
            infers.update(tasks if isinstance(tasks, dict) else {name: tasks})
        return infers

    def init_batch_infer(self):
        """``/batch/infer``: the automatic model's images as Ray tasks with ``--conf
        batch_infer_workers N`` (or ``ray_address``), else MONAI Label's batch task (on the CPU
        where torch sees no GPU: segloop.infers.batch)."""
        if self.options.batch_infer_workers or self.options.ray_address:
            return RayBatchInfer(lambda: self._infers, self.options.batch_infer_workers, self.options.ray_address)
        return BatchInfer()

    def init_trainers(self):
        return dict(self.model_trainers)

    def init_strategies(self):
        strategies = {"random": Random(), "first": First()}
        for config in self.models.values():
            strategies.update(config.strategy() or {})
        return strategies

    def init_scoring_methods(self):
        methods = {}
        for config in self.models.values():
            methods.update(config.scoring_method() or {})
        return methods

    def async_scoring(self, method, params=None):
        """MONAI Label starts every scoring method at server start and after each
        ``/activelearning`` request; a subprocess (seconds of CPU to start) only when some image's
        scores are stale. A distributed run's ranks leave it to their launcher (one request a run)."""
        if method is None and torchrun_world() is not None:
            return {}
        if method is None:
            datastore = self.datastore()
            stale = [m for m, task in self._scoring_methods.items() if not hasattr(task, "pending") or task.pending(datastore)]
            return {m: super(SegLoopApp, self).async_scoring(m, params) for m in stale}
        return super().async_scoring(method, params)

    def next_sample(self, request):
        """MONAI Label's next_sample, with bookings: a case handed to one annotator (``client_id``)
        is not offered to another within ``assignment_lock_s``; the strategy sees the booked cases
        (``assigned``) so diversity-aware strategies pick away from them."""
        strategy = request.get("strategy") or "random"
        task = self._strategies.get(strategy)
        if task is None:
            raise not_found(f"no active-learning strategy {strategy!r}; available: {sorted(self._strategies)}")
        # With authentication on, the annotator is the token's user; otherwise what the client declares.
        client = self.assignments.client(authenticated_name() or check_client_id(request.get("client_id")))
        others = self.assignments.held_by_others(client)
        datastore = self.datastore()
        closed = set()
        if self.read_desk is not None:
            returned = self._returned_case(client, others)
            if returned:
                return returned
            # A case needing several reads goes to different annotators, never twice to one; a case
            # waiting for review or adjudication goes to nobody.
            closed = {i for i in datastore.get_unlabeled_images() if i not in others and not self.reads.open_for(i, client)}
        request = dict(request, strategy=strategy, assigned=sorted(others))
        # The client's own current case is skipped too (it asked for the next one) unless nothing else is left.
        result = task(request, UnassignedView(datastore, others | closed | self.assignments.held_by(client)))
        if not result or not result.get("id"):
            result = task(request, UnassignedView(datastore, others | closed))
        if not result or not result.get("id"):
            return {}
        self.assignments.assign(result["id"], client, strategy)
        result.update(path=datastore.get_image_uri(result["id"]), client_id=client)
        if self._auto_update_scoring:
            self.async_scoring(None)
        return result

    def _returned_case(self, client: str, others) -> Dict:
        """The oldest of ``client``'s rejected reads still open to them: it goes back to them first."""
        for read in self.reads.returned_to(client):
            image_id = read["image"]
            if image_id not in others and self.reads.open_for(image_id, client):
                self.assignments.assign(image_id, client, "returned")
                return {"id": image_id, "path": self.datastore().get_image_uri(image_id), "client_id": client,
                        "strategy": "returned", "returned": {k: read.get(k) for k in ("reviewer", "comment", "reviewed_ts")}}
        return {}

    def infer(self, request, datastore=None):
        if request.get("model") not in self._infers:  # upstream answers a bare 500 without the reason
            raise not_found(f"no model {request.get('model')!r}; available: {sorted(self._infers)}")
        sessions = self.sessions()
        check_infer_image(request, datastore or self.datastore(), sessions.store_path if sessions else None, self.options.max_voxels)
        result = super().infer(request, datastore)
        model = request.get("model")
        loop = self.loops.get(model) if getattr(self.models.get(model), "proposes_full_labels", False) else None
        image = request.get("image")
        if loop and result.get("file") and image and not os.path.isabs(image):  # a datastore image
            loop.on_inferred(image, result["file"], result["params"].get("model_version"))
        elif not loop and image and not os.path.isabs(image):
            self.prompted[image] = time.time()  # the annotator is correcting this case with prompts
        return result

    def on_save_label(self, image_id, label_id):
        super().on_save_label(image_id, label_id)
        if "final" in self.datastore().get_labels_by_image_id(image_id):
            self.assignments.release(image_id)  # done: the case leaves the annotator's hands
        return {"edit_effort": {n: loop.on_label_saved(image_id) for n, loop in self.loops.items()}}

    def on_init_complete(self):
        mark_server_process()  # before upstream starts the first scoring subprocess
        # Writes a crash cut short (labels, checkpoints, registry): only here, before any writer starts.
        local = not self.studies.startswith(("http://", "https://"))
        for folder in [self.model_dir] + ([self.studies] if local else []):
            remove_leftover_temporaries(folder)
        super().on_init_complete()
        from monailabel.app import app as fastapi_app  # the running server (not there in train subprocesses)
        from monailabel.datastore.dicom import DICOMWebDatastore

        install_auth(fastapi_app)
        routers = build_surface(SurfaceContext(self)) + [
            withdrawn_routes(dicomweb=isinstance(self.datastore(), DICOMWebDatastore)),
            build_router(lambda: self.loops, self.models, self.assignments),
        ] + ([self.read_desk.router()] if self.read_desk is not None else [])
        install_surface(fastapi_app, routers)
        # The middleware stack is built by now (this runs in the lifespan): the gate goes around it.
        fastapi_app.middleware_stack = RequestGate(fastapi_app.middleware_stack or fastapi_app.build_middleware_stack(), self.options.max_upload_mb * 2**20)
        stop_children_on_signals(monai_label_children)
        for loop in self.loops.values():
            repaired = loop.registry.verify_serving()  # a promotion a crash cut short, a replaced file
            if repaired:
                logger.warning(f"{loop.name}: {repaired['reason']}")
            loop.on_server_start()

    def info(self):
        info = super().info()
        info["segloop"] = {name: loop.summary() for name, loop in self.loops.items()}
        return info
