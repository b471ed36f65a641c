"""The server's side of reads and reviews (``segloop.campaign.reads``): who submitted, with which
tool, how much they changed, and what happens next.

* ``PUT /datastore/label`` with tag ``final`` on a local datastore is a **read** of the caller:
  the token's user when auth is on, otherwise the ``annotator`` (or ``client_id``) the client puts
  in ``params``, else ``anonymous`` (the client program's name goes in ``client``). Its ``tool`` is ``automatic`` when the label is exactly the
  automatic model's served proposal, ``prompts`` when the prompt model answered on this image
  since the server started, else ``manual``; ``edit_effort`` is measured against the served
  proposal. A reviewer (any role with auth off) may instead save the final label directly with
  ``params: {"adjudication": true}``: that settles a case waiting for adjudication.
* ``GET /segloop/campaign``: the campaign report (``segloop.campaign.report``).
* ``GET /segloop/campaign/reads?image=ID``: a case's reads and state.
* ``GET /segloop/review``: reads waiting for a reviewer (reviewer role).
* ``POST /segloop/review`` ``{"image", "annotator", "approve", "comment"}`` (reviewer role).
* ``GET /segloop/returned?annotator=NAME``: an annotator's rejected reads with the comments (the
  token's user when auth is on).
"""

import time
from typing import Any, Callable, Dict, Optional

from fastapi import APIRouter, Body, Depends
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User

from segloop.campaign.reads import Reads
from segloop.campaign.report import campaign_report
from segloop.errors import bad_request, not_found
from segloop.io import json_safe
from segloop.server.auth import authenticated_name
from segloop.server.gate import only_declared_query
from segloop.server.request_checks import check_client_id
from segloop.validation import check_id

ANONYMOUS = "anonymous"


def annotator_of(params: Dict[str, Any]) -> str:
    """Who a submission is from: the token's user (auth on), else the client's word, else anonymous."""
    return authenticated_name() or check_client_id(params.get("annotator") or params.get("client_id")) or ANONYMOUS


class ReadDesk:
    """``loops_fn``: () -> {model: CampaignLoop}; ``prompted``: {image id: time} of prompt-model
    answers on datastore images; ``release``: (image id, annotator) -> None, ends a booking."""

    def __init__(self, reads: Reads, loops_fn: Callable[[], Dict], prompted: Dict[str, float], release: Callable):
        self.reads = reads
        self.loops_fn = loops_fn
        self.prompted = prompted
        self.release = release

    def submit(self, image_id: str, label_file: str, params: Dict[str, Any]) -> Dict[str, Any]:
        annotator = annotator_of(params)
        self.reads.datastore_fn().check_label(image_id, label_file)  # before any effort is recorded
        submitted = time.time()
        effort, version = {}, None
        for name, loop in self.loops_fn().items():
            proposal = loop.effort.proposal(image_id)
            if proposal is None:
                continue
            record = loop.effort.record_final(image_id, label_file, submitted, annotator)
            if record:
                effort[name], version = record, proposal.get("version")
        if any(r.get("changed_voxels_fraction") == 0 for r in effort.values()):
            tool = "automatic"
        elif image_id in self.prompted:
            tool = "prompts"
        else:
            tool = "manual"
        extra = {k: v for k, v in params.items() if k not in ("annotator", "client_id", "adjudication")}
        first = next(iter(effort.values()), None)  # the automatic model's (the one model that proposes)
        result = self.reads.submit(image_id, annotator, label_file, tool, version, first, extra)
        self.release(image_id, annotator)
        for loop in self.loops_fn().values():
            loop.trigger.on_label_saved()  # a new final label (if the case settled) may start a run
        return {"image": image_id, "label": image_id, "edit_effort": effort, **result}

    def _known(self, image: str) -> None:
        check_id(image)
        if not self.reads.datastore_fn().get_image_uri(image):
            raise not_found(f"image {image!r} is not in the datastore")

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/segloop", tags=["SegLoop"], dependencies=[Depends(only_declared_query)])
        reviewer_role = RBAC(settings.MONAI_LABEL_AUTH_ROLE_REVIEWER)

        @router.get("/campaign/reads", summary="A case's reads (annotator, tool, version, effort, review) and state")
        async def case_reads(image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
            self._known(image)
            return {"image": image, "reads": self.reads.reads(image), "case": self.reads.case_state(image)}

        @router.get("/campaign", summary="The campaign report: throughput, review, agreement, learning curve, edit effort, calibration")
        async def campaign(user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
            return json_safe(campaign_report(self.reads, self.loops_fn()))

        @router.get("/review", summary="Reads waiting for a reviewer, oldest first (reviewer)")
        async def review_queue(user: User = Depends(reviewer_role)):
            return {"review": self.reads.rules.review, "queue": self.reads.review_queue()}

        @router.post("/review", summary="Approve or reject a read, with a comment for its annotator (reviewer)")
        def review(
            image: str = Body(...),
            annotator: str = Body(...),
            approve: bool = Body(...),
            comment: str = Body(""),
            reviewer: Optional[str] = Body(None),
            user: User = Depends(reviewer_role),
        ):
            self._known(image)
            # With auth on the reviewer is the token's user; without, the client's word (as client_id is).
            reviewer = authenticated_name() or check_client_id(reviewer) or user.username
            return self.reads.review(image, annotator, reviewer, approve, comment)

        @router.get("/returned", summary="An annotator's rejected reads, with the reviewers' comments")
        async def returned(annotator: Optional[str] = None, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR))):
            name = authenticated_name() or check_client_id(annotator)
            if not name:
                raise bad_request("say whose reads: annotator=NAME (or sign in)")
            return {"annotator": name, "returned": self.reads.returned_to(name)}

        return router
