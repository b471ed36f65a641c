"""SegLoop's Slicer-free logic: the HTTP client and the campaign logic (standard library only)."""

from .campaign import CampaignFigures, CaseSession, label_colour, training_text
from .client import AUTOMATIC, PROMPT, SegLoopClient
from .http import SegLoopError

__all__ = [
    "AUTOMATIC", "PROMPT", "CampaignFigures", "CaseSession", "SegLoopClient", "SegLoopError",
    "label_colour", "training_text",
]
