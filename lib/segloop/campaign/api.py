"""SegLoop's extra endpoints, mounted on MONAI Label's FastAPI app at server start.

* ``GET  /segloop/models/{model}``            serving version, history, trigger, edit effort
* ``POST /segloop/models/{model}/rollback``   body ``{"version": N}`` (admin role when auth is on)
"""

from typing import Callable, Dict

from fastapi import APIRouter, Body, Depends
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from segloop.errors import not_found


def build_router(loops_fn: Callable[[], Dict]) -> APIRouter:
    router = APIRouter(prefix="/segloop", tags=["SegLoop"])

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

    return router
