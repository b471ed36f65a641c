"""The request surface SegLoop puts in front of MONAI Label's endpoints.

Each endpoint below is served in front of the upstream route with the same path and method
(which stays behind it, unreachable and left out of the API documentation): it declares exactly
the parameters it accepts, checks them (ids, the ``params`` JSON, the trainer options) and then
calls MONAI Label's own endpoint function, so behaviour past the checks is upstream's. Roles are
upstream's (``RBAC``). ``/infer`` runs in one worker thread and image and label uploads are
stored in another, instead of on the event loop, so each is answered while the other works and
status requests go on meanwhile. Refused outright:

* ``PUT`` / ``DELETE /model/{model}``: a checkpoint changes only by training (promotion rule) or
  by ``POST /segloop/models/{model}/rollback``; uploads were ``torch.load``-ed and could replace
  the serving model with anything;
* ``POST /reload``: it rebuilt the app inside the running server, beside the live campaign loops;
* ``PUT /session/?uncompress=true``: a session is one NIfTI volume, checked like an upload;
* the DICOM proxy when the datastore is not DICOMweb, and the pathology (WSI) endpoints.
"""

import asyncio
import contextvars
import functools
import inspect
import json
import os
import pathlib
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from starlette.background import BackgroundTask
from monailabel.config import settings
from monailabel.endpoints import batch_infer as upstream_batch
from monailabel.endpoints import datastore as upstream_datastore
from monailabel.endpoints import infer as upstream_infer
from monailabel.endpoints import logs as upstream_logs
from monailabel.endpoints import scoring as upstream_scoring
from monailabel.endpoints import session as upstream_session
from monailabel.endpoints import train as upstream_train
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferType

from segloop.campaign.reads import READ_PREFIX
from segloop.errors import ClientError, bad_request, not_found
from segloop.server.auth import authenticated_name
from segloop.server.gate import only_declared_query
from segloop.server.request_params import check_batch_params, check_infer_params, check_train_params, parse_info, parse_params
from segloop.validation import check_id, check_image

USER = settings.MONAI_LABEL_AUTH_ROLE_USER
ANNOTATOR = settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR
REVIEWER = settings.MONAI_LABEL_AUTH_ROLE_REVIEWER
ADMIN = settings.MONAI_LABEL_AUTH_ROLE_ADMIN
MAX_SESSION_EXPIRY_S = 7 * 24 * 3600


def refused(message: str) -> ClientError:
    return ClientError(405, message)


class SurfaceContext:
    """What the checks need from the app: models, trainers, strategies and scoring methods."""

    def __init__(self, app):
        self.app = app

    def infer_task(self, model: str):
        infers = self.app._infers
        if model not in infers:
            raise not_found(f"no model {model!r}; available: {sorted(infers)}")
        return infers[model]

    def trainer_config(self, model: str) -> Dict[str, Any]:
        trainers = self.app._trainers
        if model not in trainers:
            raise not_found(f"no trainable model {model!r}; available: {sorted(trainers)}")
        return trainers[model].config()

    def trainer_channels(self, model: str) -> Optional[int]:
        """Classes (with background) of a trainable model: the length of its per-class options."""
        return getattr(self.app._trainers.get(model), "num_channels", None)

    @property
    def read_desk(self):
        """The app's reads desk (``segloop.server.read_desk``), or None where labels are not kept
        per annotator (a DICOMweb datastore)."""
        return getattr(self.app, "read_desk", None)

    def check_image_id(self, image: str) -> str:
        check_id(image)
        if not self.app.datastore().get_image_uri(image):
            raise not_found(f"image {image!r} is not in the datastore")
        return image


def _spooled(upload: UploadFile, background_tasks: BackgroundTasks) -> str:
    """The upload in a temporary file (removed after the response), as MONAI Label's endpoints do."""
    suffix = "".join(pathlib.Path(upload.filename or "label.nii.gz").suffixes) or ".nii.gz"
    handle, path = tempfile.mkstemp(suffix=suffix if suffix in (".nii.gz", ".nii", ".nrrd") else ".nii.gz")
    with os.fdopen(handle, "wb") as out:
        shutil.copyfileobj(upload.file, out)
    background_tasks.add_task(os.unlink, path)
    return path


def _json(params: Dict) -> str:
    return json.dumps(params, separators=(",", ":"))


async def _upstream(background_tasks: BackgroundTasks, call, *args):
    """Call an upstream endpoint function; if it fails, still run the clean-up it scheduled
    (deleting the upload's temporary file), which FastAPI runs only after a successful response."""
    try:
        result = call(*args)
        return await result if inspect.isawaitable(result) else result
    except BaseException:
        await background_tasks()
        raise


_INFERENCE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segloop-infer")
_UPLOADS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segloop-uploads")


def _in_thread(executor: ThreadPoolExecutor, call, *args):
    """Run ``call`` in ``executor``'s thread with the request's context (the authenticated user)."""
    context = contextvars.copy_context()
    return asyncio.get_running_loop().run_in_executor(executor, functools.partial(context.run, call, *args))


def _in_inference_thread(call, *args):
    """Run ``call`` in the single inference thread (MONAI Label runs it on the event loop, so an
    inference of seconds held up every label upload and status request behind it)."""
    return _in_thread(_INFERENCE, call, *args)


def _in_upload_thread(call, *args):
    """Store an upload in the single upload thread: decoding and checking every voxel, the edit
    effort and the retraining trigger take a large share of a second per label, and on the event
    loop they held up every other request (an /infer answer waited behind a queue of label uploads).
    One thread keeps uploads in arrival order, as before."""
    return _in_thread(_UPLOADS, call, *args)


def build_surface(context: SurfaceContext) -> List[APIRouter]:
    strict = [Depends(only_declared_query)]
    datastore = APIRouter(prefix="/datastore", tags=["Datastore"], dependencies=strict)
    infer = APIRouter(prefix="/infer", tags=["Infer"], dependencies=strict)
    train = APIRouter(prefix="/train", tags=["Train"], dependencies=strict)
    other = APIRouter(dependencies=strict)

    @datastore.put("/image", summary="Upload a new image (a whole 3-D NIfTI; id: letters, digits, . _ -)")
    @datastore.put("/", include_in_schema=False, deprecated=True)
    async def add_image(
        background_tasks: BackgroundTasks,
        image: Optional[str] = None,
        params: str = Form("{}"),
        file: UploadFile = File(...),
        user: User = Depends(RBAC(ANNOTATOR)),
    ):
        if image is not None and image != "":
            check_id(image)
        info = parse_params(params)
        return await _upstream(background_tasks, _in_upload_thread, upstream_datastore.add_image, background_tasks, image, _json(info), file, user.username)

    @datastore.put("/label", summary="Save a label (integer NIfTI on the image's grid, values in the label map)")
    async def save_label(
        background_tasks: BackgroundTasks,
        image: str,
        params: str = Form("{}"),
        tag: str = DefaultLabelTag.FINAL.value,
        label: UploadFile = File(...),
        user: User = Depends(RBAC(ANNOTATOR)),
    ):
        context.check_image_id(image)
        check_id(tag, what="label tag")
        info = parse_params(params)
        if authenticated_name():  # who saved it comes from the token, not from the client's word
            info["user"] = authenticated_name()
        desk = context.read_desk
        if tag.startswith(READ_PREFIX):
            raise bad_request(f"label tags starting {READ_PREFIX!r} hold annotators' reads: submit with tag 'final'")
        if desk is not None and tag == DefaultLabelTag.FINAL.value:
            if info.get("adjudication") is True:  # a reviewer settles the case: saved as final directly
                if REVIEWER not in (user.roles or []):
                    raise ClientError(403, "saving a final label as an adjudication needs the reviewer role")
            else:  # an annotator's read: spooled and stored in the upload thread, as upstream's uploads are

                def submit_read():
                    return desk.submit(image, _spooled(label, background_tasks), info)

                return await _upstream(background_tasks, _in_upload_thread, submit_read)
        return await _upstream(background_tasks, _in_upload_thread, upstream_datastore.save_label, background_tasks, image, _json(info), tag, label, user.username)

    @datastore.delete("/image", summary="Remove an image and its labels")
    async def remove_image(id: str, user: User = Depends(RBAC(ADMIN))):
        context.check_image_id(id)
        return upstream_datastore.remove_image(id, user.username)

    @datastore.delete("/label", summary="Remove a label")
    async def remove_label(id: str, tag: str, user: User = Depends(RBAC(ADMIN))):
        context.check_image_id(id)
        check_id(tag, what="label tag")
        return upstream_datastore.remove_label(id, tag, user.username)

    @datastore.put("/image/info", summary="Update an image's info (JSON object)")
    async def put_image_info(image: str, info: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
        context.check_image_id(image)
        return upstream_datastore.update_image_info(image, _json(parse_info(info)), user.username)

    @datastore.put("/updatelabelinfo", include_in_schema=False, deprecated=True)
    async def update_label_info(label: str, tag: str, params: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
        return await put_label_info(label, tag, params, user)

    @datastore.put("/label/info", summary="Update a label's info (JSON object)")
    async def put_label_info(label: str, tag: str, info: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
        context.check_image_id(label)
        check_id(tag, what="label tag")
        return upstream_datastore.update_label_info(label, tag, _json(parse_info(info)), user.username)

    @infer.post("/{model}", summary="Run a model on a datastore image, an uploaded NIfTI or a session")
    async def run_inference(
        background_tasks: BackgroundTasks,
        model: str,
        image: str = "",
        session_id: str = "",
        params: str = Form("{}"),
        file: UploadFile = File(None),
        label: UploadFile = File(None),
        output: Optional[upstream_infer.ResultType] = None,
        user: User = Depends(RBAC(USER)),
    ):
        task = context.infer_task(model)
        if image:
            context.check_image_id(image)
        if session_id:
            check_id(session_id, what="session id")
            sessions = context.app.sessions()
            if not sessions or not sessions.get_session(session_id):
                raise not_found(f"no session {session_id!r} (sessions expire; create one with PUT /session/)")
        if not (image or session_id or file):
            raise bad_request("give an image: a datastore id (image=...), an uploaded file, or a session_id")
        prompt_able = getattr(task, "type", None) in (InferType.DEEPGROW, InferType.SCRIBBLES)
        accepted, _ = check_infer_params(parse_params(params), prompt_able, task.labels or {}, model)
        # One inference at a time, off the event loop: uploads and status requests go on meanwhile.
        return await _upstream(
            background_tasks, _in_inference_thread, upstream_infer.run_inference,
            background_tasks, model, image, session_id, _json(accepted), file, label, output,
        )

    @train.post("/{model}", summary="Start a training run of one model (admin)")
    async def run_training(model: str, params: Optional[dict] = None, enqueue: bool = False, user: User = Depends(RBAC(ADMIN))):
        accepted, _ = check_train_params(params or {}, context.trainer_config(model), model, context.trainer_channels(model))
        return upstream_train.run_model(model, accepted, False, enqueue)

    @train.post("/", summary="Start a training run of every model (admin)", include_in_schema=False)
    async def run_all_training(params: Optional[dict] = None, user: User = Depends(RBAC(ADMIN))):
        for model, model_params in (params or {}).items():
            if not isinstance(model_params, dict):
                raise bad_request(f"params[{model!r}] must be a JSON object")
            check_train_params(model_params, context.trainer_config(model), model, context.trainer_channels(model))
        return upstream_train.run(params, False)

    @other.post("/batch/infer/{model}", summary="Run a model on every (or every unlabelled) datastore image (admin)")
    async def run_batch_inference(
        model: str,
        images: Optional[upstream_batch.BatchInferImageType] = upstream_batch.BatchInferImageType.IMAGES_ALL,
        params: Optional[dict] = None,
        user: User = Depends(RBAC(ADMIN)),
    ):
        context.infer_task(model)
        accepted, _ = check_batch_params(params or {}, model)
        return upstream_batch.run(model, images, accepted, False)

    @other.post("/scoring/{method}", summary="Run a scoring method (annotator)")
    async def run_scoring(method: str, params: Optional[dict] = None, user: User = Depends(RBAC(ANNOTATOR))):
        methods = context.app._scoring_methods
        if method not in methods:
            raise not_found(f"no scoring method {method!r}; available: {sorted(methods)}")
        return upstream_scoring.run_method(method, params, False)

    @other.put("/session/", summary="Create a session from one NIfTI volume")
    async def create_session(
        background_tasks: BackgroundTasks,
        uncompress: bool = False,
        expiry: int = 0,
        files: List[UploadFile] = File(...),
        user: User = Depends(RBAC(USER)),
    ):
        if uncompress:
            raise bad_request("uncompress is not accepted: upload the volume as one NIfTI file")
        if len(files) != 1:
            raise bad_request(f"a session holds one NIfTI volume, got {len(files)} files")
        if not 0 <= expiry <= MAX_SESSION_EXPIRY_S:
            raise bad_request(f"expiry must be between 0 and {MAX_SESSION_EXPIRY_S} seconds, got {expiry}")
        name = files[0].filename or ""
        if not name.endswith((".nii", ".nii.gz")):
            raise bad_request(f"a session volume must be a .nii or .nii.gz file, got {name!r}")
        created = await _upstream(background_tasks, upstream_session.create_session, background_tasks, False, expiry, files)
        try:  # checked whole once here, so each /infer on the session reads its header only
            check_image(created["session_info"]["image"], "session image", context.app.options.max_voxels)
        except ClientError:
            upstream_session.remove_session(created["session_id"])
            raise
        return created

    @other.get("/session/{session_id}", summary="A session's info or image")
    async def get_session(session_id: str, update_ts: bool = False, image: bool = False, user: User = Depends(RBAC(USER))):
        check_id(session_id, what="session id")
        return upstream_session.get_session(session_id, update_ts, image)

    @other.delete("/session/{session_id}", summary="Delete a session")
    async def remove_session(session_id: str, user: User = Depends(RBAC(USER))):
        check_id(session_id, what="session id")
        return upstream_session.remove_session(session_id)

    @other.api_route("/model/{model}", methods=["PUT", "DELETE"], include_in_schema=False)
    async def change_model(model: str, user: User = Depends(RBAC(ADMIN))):
        raise refused(
            "SegLoop does not accept uploaded or deleted checkpoints: a model changes by training "
            "(promoted only when better) or by POST /segloop/models/{model}/rollback"
        )

    @datastore.get("/dataset", summary="The labelled cases (images, final labels, metadata) as a ZIP archive")
    async def download_dataset(limit_cases: Optional[int] = None, user: User = Depends(RBAC(ANNOTATOR))):
        if limit_cases is not None and limit_cases < 0:
            raise bad_request(f"limit_cases must be >= 0, got {limit_cases}")
        store = context.app.datastore()
        if not store.datalist():
            raise not_found("no labelled case yet: the dataset archive holds images with a final label")
        path = store.get_dataset_archive(limit_cases)
        return FileResponse(path, media_type="application/zip", filename="dataset.zip", background=BackgroundTask(os.unlink, path))

    @other.get("/logs/gpu", summary="nvidia-smi of the server's GPU (admin)")
    async def gpu_info(user: User = Depends(RBAC(ADMIN))):
        if shutil.which("nvidia-smi") is None:
            raise not_found("no NVIDIA GPU on this server (nvidia-smi is not installed)")
        return await upstream_logs.gpu_info(user)

    @other.post("/reload", include_in_schema=False)
    async def reload(user: User = Depends(RBAC(ADMIN))):
        raise refused("reloading the app inside a running server is not offered: restart the server")

    return [datastore, infer, train, other]


def _same_route(a: APIRoute, b: APIRoute) -> bool:
    return a.path == b.path and bool(set(a.methods or ()) & set(b.methods or ()))


def _api_routes(router) -> List[APIRoute]:
    """Every APIRoute under ``router``, through included routers (their paths carry their prefix)."""
    found = []
    for route in router.routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found.extend(_api_routes(route.original_router))
    return found


def install_surface(app: FastAPI, routers: List[APIRouter]) -> None:
    """Put ``routers``' endpoints in front of upstream's: a request matching one of them (path
    and method) is served by it; the upstream route with the same path and method is left in
    place behind it, hidden from the API documentation."""
    ours = [r for router in routers for r in router.routes if isinstance(r, APIRoute)]
    for route in _api_routes(app.router):
        if any(_same_route(route, r) for r in ours):
            route.include_in_schema = False
    before = list(app.router.routes)
    for router in routers:
        app.include_router(router)
    added = [r for r in app.router.routes if not any(r is b for b in before)]
    app.router.routes[:] = added + before
    mark_changed = getattr(app.router, "_mark_routes_changed", None)  # FastAPI >= 0.120 caches route lookups
    if mark_changed:
        mark_changed()
    app.openapi_schema = None


def withdrawn_routes(dicomweb: bool) -> APIRouter:
    """404s in front of upstream endpoints SegLoop does not offer: pathology (WSI) inference, and
    the DICOM proxy unless the datastore is DICOMweb."""
    router = APIRouter(include_in_schema=False)

    async def not_offered(request: Request, user: User = Depends(RBAC(USER))):
        raise not_found(f"{request.url.path} is not offered by this server")

    router.add_api_route("/infer/wsi/{model}", not_offered, methods=["POST"])
    router.add_api_route("/infer/wsi_v2/{model}", not_offered, methods=["POST"])
    if not dicomweb:
        router.add_api_route("/proxy/{path:path}", not_offered, methods=["GET", "POST", "PUT", "DELETE"])
    return router
