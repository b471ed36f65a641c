"""SegLoop's extra endpoints, mounted on MONAI Label's FastAPI app at server start.

* ``GET  /segloop/models/{model}``            serving version, history, trigger, edit effort
* ``POST /segloop/models/{model}/rollback``   body ``{"version": N}`` (admin role when auth is on)
* ``GET  /segloop/activelearning``            scoring job progress, per-image scores, bookings
* ``GET  /segloop/uncertainty/{token}``       an uncertainty map written by ``/infer`` (NIfTI)
"""

import os
from typing import Callable, Dict, Mapping

from fastapi import APIRouter, Body, Depends
from fastapi.responses import FileResponse
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from segloop.errors import not_found
from segloop.server.gate import only_declared_query


SCORE_FIELDS = ("version", "label_ts", "entropy", "mc", "tta", "components", "seconds", "scored", "error")


def scoring_status(store) -> Dict:
    """The scoring job's progress and each image's scores (embeddings left out: long and unreadable)."""
    state = store.state()
    images = {image: {k: r[k] for k in SCORE_FIELDS if k in r} for image, r in state["images"].items()}
    return {"job": state.get("job"), "images": images}


def build_router(loops_fn: Callable[[], Dict], models: Mapping = None, assignments=None) -> APIRouter:
    router = APIRouter(prefix="/segloop", tags=["SegLoop"], dependencies=[Depends(only_declared_query)])
    models = models or {}

    def loop(model: str):
        loops = loops_fn()
        if model not in loops:
            raise not_found(f"no trainable model {model!r}; known: {sorted(loops)}")
        return loops[model]

    @router.get("/models/{model}", summary="Model versions, serving version, retrain trigger, edit effort")
    async def model_status(model: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        return loop(model).summary()

    @router.post("/models/{model}/rollback", summary="Serve another stored version of the model")
    def rollback(
        model: str,
        version: int = Body(..., embed=True),
        user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
    ):
        return loop(model).registry.rollback(version)

    @router.get("/activelearning", summary="Active learning: scoring progress and scores per model, annotator bookings")
    async def activelearning_status(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        return {
            "scoring": {name: scoring_status(c.scores) for name, c in models.items() if getattr(c, "scores", None)},
            "assignments": assignments.active() if assignments else {},
            "lock_seconds": assignments.lock_seconds if assignments else None,
        }

    @router.get("/uncertainty/{token}", summary="Per-voxel uncertainty map (NIfTI, input grid) from /infer")
    async def uncertainty_map(token: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
        for config in models.values():
            maps = getattr(config, "uncertainty_maps", None)
            if maps is not None and maps.valid(token) and os.path.exists(maps.path(token)):
                return FileResponse(maps.path(token), media_type="application/gzip", filename=f"uncertainty_{token}.nii.gz")
        raise not_found(f"no uncertainty map {token!r} (maps are kept for the newest requests only)")

    return router
