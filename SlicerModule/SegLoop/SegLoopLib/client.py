"""The SegLoop server, as the Slicer module sees it: one method per thing a clinician does.

Standard library only (no ``slicer``, ``qt``, ``vtk``, ``requests``): it runs inside Slicer and in
the test suite against a real server. Prompts are voxel (IJK) indices of the image as stored on
the server, which is the image the module downloads and shows.
"""

import json
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .http import Http, SegLoopError, decode_multipart

AUTOMATIC, PROMPT = "segmentation", "deepgrow"  # MONAI Label infer types of SegLoop's two models


class SegLoopClient:
    def __init__(self, url: str, timeout: float = 600.0):
        self.http = Http(url, timeout)

    @property
    def url(self) -> str:
        return self.http.url

    def with_timeout(self, seconds: float) -> "SegLoopClient":
        """The same server and login with another limit per call: short for background status polls,
        so a server that hangs cannot freeze the caller for the long inference limit."""
        other = SegLoopClient(self.url, seconds)
        other.http.token = self.http.token
        return other

    # -- connection ----------------------------------------------------------------------------
    def auth_enabled(self) -> bool:
        """MONAI Label mounts ``/auth`` only when auth is on."""
        try:
            return bool(self.http.json("GET", "/auth/").get("enabled"))
        except SegLoopError as e:
            if e.status == 404:
                return False
            raise

    def login(self, username: str, password: str) -> None:
        """Fetch a bearer token when the server has auth; a no-op otherwise."""
        if not self.auth_enabled():
            return
        answer = self.http.urlencoded("/auth/token", {"username": username, "password": password})
        self.http.token = answer.get("access_token")

    def info(self) -> Dict[str, Any]:
        return self.http.json("GET", "/info/")

    @staticmethod
    def models_of(info: Dict[str, Any], kind: str) -> List[str]:
        """Names of the served models of MONAI Label infer type ``kind`` (AUTOMATIC or PROMPT)."""
        return sorted(name for name, model in info.get("models", {}).items() if model.get("type") == kind)

    @staticmethod
    def prompt_forms_of(info: Dict[str, Any], model: str) -> List[str]:
        """The request forms prompt model ``model`` takes (its ``/info`` ``prompts``: points, box,
        box_2d, lasso, scribbles, scribbles_mask, label_map, text, no_label). A server that does
        not list them gets what MONAI Label's DeepGrow takes: points, a box, a label."""
        forms = (info.get("models", {}).get(model) or {}).get("prompts")
        return list(forms) if isinstance(forms, list) else ["points", "box", "text"]

    @staticmethod
    def labels_of(info: Dict[str, Any]) -> Dict[str, int]:
        """The server's labels, name -> storage index, ascending; "background" (index 0) is not a
        segment to draw: it is left out."""
        labels = info.get("labels") or {}
        if isinstance(labels, list):  # MONAI Label's app labels are names; a model's labels have the indices
            names = {str(n) for n in labels if str(n).lower() != "background"}
            indexed = [m.get("labels") for m in (info.get("models") or {}).values() if isinstance(m.get("labels"), dict)]
            covering = [m for m in indexed if names <= set(m)]
            if covering:
                labels = {name: covering[0][name] for name in names}
            else:
                first = 0 if labels and str(labels[0]).lower() == "background" else 1
                labels = {name: i for i, name in enumerate(labels, start=first)}
        ordered = sorted(labels.items(), key=lambda kv: kv[1])
        return {name: index for name, index in ordered if str(name).lower() != "background" and index != 0}

    @staticmethod
    def strategies_of(info: Dict[str, Any]) -> List[str]:
        return sorted(info.get("strategies", {}))

    # -- cases ---------------------------------------------------------------------------------
    def next_case(self, strategy: str, annotator: str) -> Optional[Dict[str, Any]]:
        """The case ``strategy`` picks for ``annotator`` (booked for them), or None when none is left."""
        answer = self.http.json("POST", f"/activelearning/{strategy}", payload={"client_id": annotator})
        return answer if answer and answer.get("id") else None

    def download_image(self, image_id: str, folder: str) -> str:
        """The image as stored, into ``folder/<image_id><its extension>``; returns that path."""
        return self.http.download_as_served("/datastore/image", folder, image_id, {"image": image_id})

    def download_label(self, image_id: str, folder: str, tag: str = "final") -> str:
        """The case's stored label of ``tag`` into ``folder/<image_id>_<tag><its extension>``: to
        re-open a labelled case for review. A case without one is a 404 ``SegLoopError``."""
        return self.http.download_as_served("/datastore/label", folder, f"{image_id}_{tag}", {"label": image_id, "tag": tag})

    def datastore_status(self) -> Dict[str, Any]:
        """``{"total", "completed", "label_tags"}`` of the datastore."""
        return self.http.json("GET", "/datastore/", {"output": "stats"})

    # -- models --------------------------------------------------------------------------------
    def _infer(
        self, model: str, image_id: str, params: Dict[str, Any], dest: str, upload: Optional[str] = None
    ) -> Tuple[str, Dict[str, Any]]:
        body, content_type = self.http.form(
            "POST", f"/infer/{model}", {"image": image_id}, fields={"params": json.dumps(params)},
            files=[("label", upload)] if upload else (),
        )
        if not content_type.startswith("multipart/"):
            raise SegLoopError(0, f"/infer/{model} returned no label map: {body[:200]!r}")
        parts = decode_multipart(body, content_type)
        with open(dest, "wb") as f:
            f.write(parts["image"][1])
        return dest, json.loads(parts["params"][1])

    def auto_segment(self, model: str, image_id: str, dest: str, uncertainty: bool = False):
        """The automatic proposal as a label map file at ``dest`` (input geometry) and its result JSON."""
        return self._infer(model, image_id, {"uncertainty": uncertainty}, dest)

    def prompt_segment(
        self,
        model: str,
        image_id: str,
        dest: str,
        foreground: Sequence[Sequence[int]] = (),
        background: Sequence[Sequence[int]] = (),
        box: Optional[Sequence[Sequence[int]]] = None,
        text: str = "",
        lasso: Optional[Sequence[Sequence[int]]] = None,
        foreground_scribbles: Sequence[Sequence[Sequence[int]]] = (),
        background_scribbles: Sequence[Sequence[Sequence[int]]] = (),
        scribble_mask: Optional[str] = None,
        label_map: Optional[str] = None,
        reset: bool = False,
    ):
        """One structure from any mix of prompts, all in IJK voxel indices of the stored image:
        clicks; a box (two corners; equal along one axis, a 2D box on that slice); a ``lasso``
        (closed polygon, its vertices on one slice); scribbles as polylines, or a ``scribble_mask``
        file (3 = foreground, 2 = background); a label name or free ``text``. ``label_map``: the case's
        label map file, to refine the named structure's segment and never claim another's voxels.
        ``reset`` starts a new structure (the server forgets the last answer it would refine)."""
        ijk = lambda points: [list(map(int, p)) for p in points]  # noqa: E731
        params: Dict[str, Any] = {"foreground": ijk(foreground), "background": ijk(background)}
        if box:
            params["box"] = ijk(box)
        if lasso:
            params["lasso"] = ijk(lasso)
        for key, lines in (("foreground_scribbles", foreground_scribbles), ("background_scribbles", background_scribbles)):
            if lines:
                params[key] = [ijk(line) for line in lines]
        if scribble_mask and label_map:
            raise SegLoopError(0, "send a scribble mask or a label map, not both: the server takes one file")
        if scribble_mask:
            params["scribbles_mask"] = True
        if label_map:
            params["label_map"] = True
        if reset:
            params["reset_state"] = True
        if text:
            # With a file upload the 'label' field is the file: the structure is named by 'text'.
            params["text" if scribble_mask or label_map else "label"] = text
        return self._infer(model, image_id, params, dest, upload=scribble_mask or label_map)

    def uncertainty_map(self, result: Dict[str, Any], dest: str) -> str:
        """Download the per-voxel uncertainty map named in an ``auto_segment(..., uncertainty=True)`` result."""
        summary = result.get("uncertainty")
        if not summary:
            raise SegLoopError(0, "this result has no uncertainty map: ask auto_segment with uncertainty=True")
        return self.http.download(summary["url"], dest)

    # -- submission ----------------------------------------------------------------------------
    def submit(self, image_id: str, label_path: str, annotator: str, seconds_spent: float, **provenance) -> Dict:
        """Save the final label with who made it and how long it took; returns the server's answer
        (with ``edit_effort`` against the proposal the server served for this case)."""
        params = dict(provenance, annotator=annotator, time_spent_s=round(float(seconds_spent), 1))
        body, _ = self.http.form(
            "PUT", "/datastore/label", {"image": image_id, "tag": "final"},
            fields={"params": json.dumps(params)}, files=[("label", label_path)],
        )
        return json.loads(body)

    def label_info(self, image_id: str, tag: str = "final") -> Dict[str, Any]:
        return self.http.json("GET", "/datastore/label/info", {"label": image_id, "tag": tag})

    # -- reads and review ------------------------------------------------------------------------
    def review_queue(self) -> List[Dict[str, Any]]:
        """Reads waiting for a reviewer, oldest first (``image``, ``annotator``, ``tag``, ``tool`` ...)."""
        return self.http.json("GET", "/segloop/review")["queue"]

    def review(self, image_id: str, annotator: str, approve: bool, comment: str = "", reviewer: str = "") -> Dict[str, Any]:
        """Approve or reject ``annotator``'s read of ``image_id`` (a rejection needs a comment);
        returns the read and the case's new state. ``reviewer`` counts only without sign-in."""
        payload = {"image": image_id, "annotator": annotator, "approve": bool(approve), "comment": comment}
        if reviewer:
            payload["reviewer"] = reviewer
        return self.http.json("POST", "/segloop/review", payload=payload)

    def returned(self, annotator: str = "") -> List[Dict[str, Any]]:
        """``annotator``'s rejected reads with the reviewers' comments (signed in: one's own)."""
        return self.http.json("GET", "/segloop/returned", {"annotator": annotator} if annotator else None)["returned"]

    def case_reads(self, image_id: str) -> Dict[str, Any]:
        """A case's reads and state: ``{"reads": {annotator: record}, "case": {"state", ...}}``."""
        return self.http.json("GET", "/segloop/campaign/reads", {"image": image_id})

    def campaign_report(self) -> Dict[str, Any]:
        return self.http.json("GET", "/segloop/campaign")

    # -- training and campaign -----------------------------------------------------------------
    def model_status(self, model: str) -> Dict[str, Any]:
        return self.http.json("GET", f"/segloop/models/{model}")

    def training(self) -> Optional[Dict[str, Any]]:
        """MONAI Label's last training task (status, progress lines), or None before any."""
        try:
            return self.http.json("GET", "/train/")
        except SegLoopError as e:
            if e.status == 404:
                return None
            raise

    def train_progress(self, model: str) -> Optional[Dict[str, Any]]:
        """The running or last run's ``progress`` block (epoch, iteration, percent, loss)."""
        stats = self.info().get("train_stats", {}).get(model) or {}
        return stats.get("progress")

    def activelearning_status(self) -> Dict[str, Any]:
        return self.http.json("GET", "/segloop/activelearning")
