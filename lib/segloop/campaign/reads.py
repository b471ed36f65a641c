"""Several annotators per case: each one's read, its review, and the label that trains.

Every submitted label is a **read**: the annotator's own label map, kept in the datastore under
the label tag ``read-<annotator>`` (MONAI Label's per-tag label folders, so each annotator has one
current read per case and a resubmission replaces it), with its record in the label info:

``annotator`` (the token's user when auth is on), ``ts``, ``tool`` (``automatic``: the proposal
submitted as it was; ``prompts``; ``manual``), ``model_version`` (of the proposal it started
from), ``edit_effort``, ``state`` (``submitted`` -> ``approved`` | ``rejected``), after a review
``reviewer``, ``comment``, ``reviewed_ts``, and, kept across resubmissions, ``reviews`` (every
decision: reviewer, decision, comment, ts) and ``submissions`` (how many times it was submitted).

The **final** label (the tag MONAI Label's trainers read) is written by :meth:`Reads.settle`
once a case has its ``reads_per_case`` eligible reads (approved ones when ``review`` is on,
otherwise every read not rejected):

* one read: that read;
* two or more: their multi-label STAPLE consensus (:mod:`segloop.metrics.agreement`), with the
  pairwise agreement in the final label's info. A case whose agreement (the lowest per-label mean
  pairwise Dice) falls below ``agreement_threshold`` is flagged ``adjudication`` instead and no
  final label is written: a reviewer decides (by rejecting a read, or by saving a final label).

The datastore is any MONAI Label ``Datastore`` (``save_label``, ``get_label_info``,
``update_label_info``, ``get_labels_by_image_id``, ``get_label_uri``, ``get_image_uri``).
"""

import hashlib
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import nibabel as nib
import numpy as np

from segloop.errors import bad_request, conflict, not_found
from segloop.metrics.agreement import pairwise_agreement, staple_consensus

READ_PREFIX = "read-"
FINAL = "final"
STATES = ("submitted", "approved", "rejected")
TOOLS = ("automatic", "prompts", "manual")
# Fields of a read's record that describe the read itself, not the label it makes final.
READ_ONLY_FIELDS = ("tag", "name", "ts", "state", "submitted_ts", "reviewer", "comment", "reviewed_ts", "reviews", "submissions")


@dataclass(frozen=True)
class CampaignRules:
    reads_per_case: int = 1  # independent reads a case needs before it trains
    review: bool = False  # only approved reads count (a reviewer approves)
    agreement_threshold: float = 0.7  # lowest per-label mean pairwise Dice below which a case waits for adjudication

    def __post_init__(self):
        if not 1 <= int(self.reads_per_case) <= 10:
            raise ValueError(f"reads_per_case must be 1..10, got {self.reads_per_case}")
        if not 0.0 <= float(self.agreement_threshold) <= 1.0:
            raise ValueError(f"agreement_threshold must be in [0, 1], got {self.agreement_threshold}")


def read_tag(annotator: str) -> str:
    """The datastore label tag of ``annotator``'s reads: ``read-`` and the name where it is a plain
    one; other names get their characters replaced and a short hash, so two names never share a tag."""
    if not isinstance(annotator, str) or not annotator.strip():
        raise bad_request("a read needs an annotator: sign in, or send client_id")
    plain = re.sub(r"[^A-Za-z0-9_-]", "_", annotator)[:48]
    if plain == annotator:
        return READ_PREFIX + plain
    return f"{READ_PREFIX}{plain}-{hashlib.sha1(annotator.encode()).hexdigest()[:8]}"


class Reads:
    def __init__(self, datastore_fn, labels: Mapping[str, int], rules: CampaignRules):
        self.datastore_fn = datastore_fn
        self.labels = dict(labels)
        self.rules = rules
        # Submissions (the upload thread) and reviews (request threads) change a case one at a time.
        self._lock = threading.RLock()

    # -- what is stored ------------------------------------------------------------------------
    def reads(self, image_id: str) -> Dict[str, Dict[str, Any]]:
        """{annotator: read record (label info + ``tag``)} of one case."""
        datastore = self.datastore_fn()
        found = {}
        for tag in datastore.get_labels_by_image_id(image_id):
            if tag.startswith(READ_PREFIX):
                info = dict(datastore.get_label_info(image_id, tag) or {})
                if info.get("annotator"):
                    found[info["annotator"]] = dict(info, tag=tag)
        return found

    def eligible(self, reads: Mapping[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
        wanted = ("approved",) if self.rules.review else ("submitted", "approved")
        return {a: r for a, r in reads.items() if r.get("state") in wanted}

    def _final_info(self, image_id: str) -> Optional[Dict[str, Any]]:
        datastore = self.datastore_fn()
        if FINAL not in datastore.get_labels_by_image_id(image_id):
            return None
        return dict(datastore.get_label_info(image_id, FINAL) or {})

    def _chosen(self, reads: Mapping[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
        """The reads that make the final label: the latest ``reads_per_case`` eligible ones."""
        eligible = sorted(self.eligible(reads).items(), key=lambda kv: kv[1].get("submitted_ts", 0))
        return dict(eligible[-self.rules.reads_per_case:]) if len(eligible) >= self.rules.reads_per_case else {}

    def _flag(self, image_id: str, chosen: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
        """The case's agreement record when it flags exactly these reads for adjudication."""
        info = self.datastore_fn().get_image_info(image_id) or {}
        agreement = info.get("segloop_agreement") or {}
        return agreement if agreement.get("flagged") and agreement.get("reads") == sorted(chosen) else None

    def case_state(self, image_id: str) -> Dict[str, Any]:
        """Where a case stands: ``final`` (it trains), ``adjudication`` (its reads disagree),
        ``waiting_review`` (enough reads, not enough approved) or ``open`` (reads still needed)."""
        reads = self.reads(image_id)
        live = {a: r for a, r in reads.items() if r.get("state") != "rejected"}
        chosen = self._chosen(reads)
        if self._final_info(image_id) is not None:
            state = "final"
        elif chosen and self._flag(image_id, chosen):
            state = "adjudication"
        elif len(live) >= self.rules.reads_per_case:
            state = "waiting_review"
        else:
            state = "open"
        return {
            "state": state,
            "reads": len(live),
            "needed": self.rules.reads_per_case,
            "annotators": sorted(live),
            "rejected": sorted(a for a, r in reads.items() if r.get("state") == "rejected"),
        }

    def open_for(self, image_id: str, annotator: str, booked_by_others: int = 0) -> bool:
        """Whether ``annotator`` may be handed ``image_id``: the case still needs a read, and either a
        read of theirs was rejected (it goes back to them) or they have none and the reads stored
        plus the ``booked_by_others`` annotators holding it now are too few."""
        state = self.case_state(image_id)
        if state["state"] != "open":
            return False
        own = self.reads(image_id).get(annotator)
        if own is not None:
            return own.get("state") == "rejected"
        return state["reads"] + booked_by_others < self.rules.reads_per_case

    # -- submitting and reviewing ------------------------------------------------------------------
    def submit(
        self,
        image_id: str,
        annotator: str,
        label_file: str,
        tool: str = "manual",
        model_version: Optional[int] = None,
        edit_effort: Optional[Dict[str, Any]] = None,
        extra: Optional[Mapping[str, Any]] = None,
    ) -> Dict[str, Any]:
        """Store ``annotator``'s read of ``image_id`` (the datastore validates the label) and settle
        the case; ``extra``: more label info from the client (time spent ...), never overriding the
        read's own fields. Returns the read record and the case state."""
        if tool not in TOOLS:
            raise bad_request(f"tool must be one of {list(TOOLS)}, got {tool!r}")
        with self._lock:
            return self._submit(image_id, annotator, label_file, tool, model_version, edit_effort, extra)

    def _submit(self, image_id, annotator, label_file, tool, model_version, edit_effort, extra) -> Dict[str, Any]:
        tag = read_tag(annotator)
        earlier = self.reads(image_id).get(annotator) or {}
        info = dict(extra or {})
        info |= {"annotator": annotator, "tool": tool, "model_version": model_version, "state": "submitted",
                 "submitted_ts": time.time(), "reviews": list(earlier.get("reviews", [])),
                 "submissions": int(earlier.get("submissions", 0)) + 1}
        if edit_effort is not None:
            info["edit_effort"] = edit_effort
        self.datastore_fn().save_label(image_id, label_file, tag, info)
        record = self.reads(image_id)[annotator]
        return {"read": record, "case": self.settle(image_id)}

    def review(self, image_id: str, annotator: str, reviewer: str, approve: bool, comment: str = "") -> Dict[str, Any]:
        """A reviewer's decision on one read; a rejection needs a comment for the annotator."""
        if not reviewer:
            raise bad_request("a review needs a reviewer")
        reads = self.reads(image_id)
        if annotator not in reads:
            raise not_found(f"no read of {image_id!r} by {annotator!r}")
        if reviewer == annotator:
            raise conflict(f"{reviewer!r} cannot review their own read")
        if not approve and not str(comment).strip():
            raise bad_request("a rejection needs a comment for the annotator")
        if len(str(comment)) > 2000:
            raise bad_request("comment: at most 2000 characters")
        with self._lock:
            return self._review(image_id, annotator, reviewer, approve, comment)

    def _review(self, image_id: str, annotator: str, reviewer: str, approve: bool, comment: str) -> Dict[str, Any]:
        reads = self.reads(image_id)
        if annotator not in reads:
            raise not_found(f"no read of {image_id!r} by {annotator!r}")
        now, state = time.time(), "approved" if approve else "rejected"
        event = {"reviewer": reviewer, "decision": state, "comment": str(comment), "ts": now}
        update = {"state": state, "reviewer": reviewer, "comment": str(comment), "reviewed_ts": now,
                  "reviews": list(reads[annotator].get("reviews", [])) + [event]}
        self.datastore_fn().update_label_info(image_id, reads[annotator]["tag"], update)
        return {"read": dict(reads[annotator], **update), "case": self.settle(image_id)}

    def settle(self, image_id: str) -> Dict[str, Any]:
        """Make the final label agree with the reads: once the case has its eligible reads, the read
        itself or, for several, their STAPLE consensus when their agreement reaches the threshold
        (below it the case is flagged for adjudication and has no final label). A final label made
        from reads that are no longer eligible (one was rejected) is removed; a reviewer's
        adjudication is left alone; one imported or saved before reads existed is replaced once the
        case has its reads, and kept until then."""
        with self._lock:
            return self._settle(image_id)

    def _settle(self, image_id: str) -> Dict[str, Any]:
        datastore = self.datastore_fn()
        final = self._final_info(image_id)
        if final is not None and final.get("adjudication") is True:
            return self.case_state(image_id)  # a reviewer's adjudication stands
        made_by_reads = final is not None and final.get("reads") is not None  # else imported or saved before reads
        chosen = self._chosen(self.reads(image_id))
        made_from = {a: r.get("submitted_ts") for a, r in chosen.items()}
        if final is not None and final.get("made_from") == made_from:
            return self.case_state(image_id)  # already settled on these reads
        if not chosen:
            if made_by_reads:  # made from reads no longer eligible: it stops training
                datastore.remove_label(image_id, FINAL)
            return self.case_state(image_id)
        names = ", ".join(sorted(chosen))
        final_info: Dict[str, Any] = {"reads": sorted(chosen), "made_from": made_from, "annotator": names, "user": names}
        if len(chosen) == 1:  # the read's own record (time spent, client, edit effort ...) goes with it
            (annotator, read), = chosen.items()
            final_info = {k: v for k, v in read.items() if k not in READ_ONLY_FIELDS} | final_info
            datastore.save_label(image_id, datastore.get_label_uri(image_id, read["tag"]), FINAL, final_info)
            return self.case_state(image_id)
        maps, affine, zooms = {}, None, None
        for annotator, read in sorted(chosen.items()):
            img = nib.load(datastore.get_label_uri(image_id, read["tag"]))
            maps[annotator] = np.asarray(img.dataobj).astype(np.uint8)
            affine, zooms = img.affine, img.header.get_zooms()[:3]
        agreement = pairwise_agreement(maps, self.labels, zooms)
        flagged = agreement["min_mean_dice"] is not None and agreement["min_mean_dice"] < self.rules.agreement_threshold
        summary = {"flagged": flagged, "threshold": self.rules.agreement_threshold, "reads": sorted(chosen), **agreement}
        datastore.update_image_info(image_id, {"segloop_agreement": summary})
        if not flagged:
            final_info.update(consensus="STAPLE", agreement={k: summary[k] for k in ("mean_dice", "mean_hd95_mm", "min_mean_dice")})
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, f"{image_id}.nii.gz")
                nib.save(nib.Nifti1Image(staple_consensus(list(maps.values())), affine), path)
                datastore.save_label(image_id, path, FINAL, final_info)
        elif made_by_reads:  # made from earlier reads; these disagree: nothing trains until adjudicated
            datastore.remove_label(image_id, FINAL)
        return dict(self.case_state(image_id), agreement=summary)

    # -- queues ----------------------------------------------------------------------------------
    def all_reads(self) -> List[Dict[str, Any]]:
        datastore = self.datastore_fn()
        out = []
        for image_id in datastore.list_images():
            for annotator, read in self.reads(image_id).items():
                out.append(dict(read, image=image_id, annotator=annotator))
        return out

    def review_queue(self) -> List[Dict[str, Any]]:
        """Reads waiting for a reviewer (review on), oldest first."""
        return sorted((r for r in self.all_reads() if r.get("state") == "submitted"), key=lambda r: r.get("ts", 0))

    def returned_to(self, annotator: str) -> List[Dict[str, Any]]:
        """``annotator``'s rejected reads with the reviewers' comments, oldest first."""
        return sorted((r for r in self.all_reads() if r["annotator"] == annotator and r.get("state") == "rejected"),
                      key=lambda r: r.get("reviewed_ts", 0))
