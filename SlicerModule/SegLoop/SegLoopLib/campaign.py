"""Campaign logic of the Slicer module, in plain Python: the case being annotated, the figures of
the campaign panel, and label colours that stay the same across cases and sessions.
"""

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

# Colours (RGB 0-1) per label name, the same in every case; unknown names cycle through the rest.
LABEL_COLOURS: Dict[str, tuple] = {
    "liver": (0.87, 0.51, 0.29),
    "spleen": (0.62, 0.36, 0.71),
    "kidney": (0.89, 0.82, 0.25),
    "tumor": (0.85, 0.13, 0.16),
}
SPARE_COLOURS = [(0.30, 0.69, 0.29), (0.22, 0.49, 0.72), (0.97, 0.51, 0.75), (0.60, 0.60, 0.60)]


def label_colour(name: str, index: int) -> tuple:
    return LABEL_COLOURS.get(name.lower(), SPARE_COLOURS[index % len(SPARE_COLOURS)])


@dataclass
class CaseSession:
    """The case on screen: which image, when work on it began, what the model proposed."""

    image_id: str
    image_path: str
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    proposal_version: Optional[int] = None
    reviewing: bool = False  # re-opened with its final label, for review
    read_of: Optional[str] = None  # a reviewer's case: whose read is on screen, to approve or reject
    returned: Optional[Dict[str, Any]] = None  # handed back after a rejection: {"reviewer", "comment"}

    def __post_init__(self):
        self.started = self.clock()

    def seconds_spent(self) -> float:
        return self.clock() - self.started


@dataclass
class CampaignFigures:
    """What the campaign panel shows, from the server's datastore status and model status."""

    labelled: int
    total: int
    serving_version: Optional[int]
    learning_curve: List[Dict[str, Any]]  # [{"version", "val_dice", "status"}] in version order
    edit_effort: List[Dict[str, Any]]  # [{"version", "submissions", "median_dice", "median_changed"}]
    training: Optional[Dict[str, Any]]  # the running run, if any

    @property
    def progress_text(self) -> str:
        return f"{self.labelled} / {self.total} cases labelled"

    @classmethod
    def from_server(cls, datastore_status: Dict[str, Any], model_status: Dict[str, Any]) -> "CampaignFigures":
        curve = [
            {"version": v["version"], "val_dice": (v.get("val_dice") or {}).get("mean"), "status": v.get("status")}
            for v in model_status.get("versions", [])
        ]
        effort = [
            {
                "version": int(version),
                "submissions": row["submissions"],
                "median_dice": row.get("median_dice_proposal_vs_final"),
                "median_changed": row.get("median_changed_voxels_fraction"),
            }
            for version, row in sorted(model_status.get("edit_effort_by_version", {}).items(), key=lambda kv: int(kv[0]))
        ]
        return cls(
            labelled=int(datastore_status.get("completed", 0)),
            total=int(datastore_status.get("total", 0)),
            serving_version=model_status.get("serving_version"),
            learning_curve=curve,
            edit_effort=effort,
            training=model_status.get("training_run"),
        )


def training_text(progress: Optional[Dict[str, Any]], running: bool) -> str:
    """One line for the training panel: epoch, percent and loss of the current (or last) run.
    (Automatic runs are bounded by time, not epochs, so percent is the useful figure.)"""
    if not progress:
        return "no training run yet"
    loss = progress.get("loss")
    line = (
        f"epoch {progress.get('epoch')}, {progress.get('percent', 0):.0f}%"
        + (f", loss {loss:.3f}" if isinstance(loss, (int, float)) else "")
    )
    return ("training: " if running else "last run: ") + line
