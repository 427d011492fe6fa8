"""Windmill from Python: `Windmill` opens the pipeline's database and offers what the command line does, with
typed, frozen results (windmill/api/records.py)."""

from windmill.api.records import (
    Answer,
    Consensus,
    Image,
    ImageRecord,
    MergedBox,
    MergeState,
    PostprocessingAnswer,
)
from windmill.api.session import Submission, Windmill
from windmill.collection import AddReport
from windmill.producer import SubmitReport
from windmill.progress import Progress, ServiceProgress

__all__ = [
    "AddReport",
    "Answer",
    "Consensus",
    "Image",
    "ImageRecord",
    "MergeState",
    "MergedBox",
    "PostprocessingAnswer",
    "Progress",
    "ServiceProgress",
    "Submission",
    "SubmitReport",
    "Windmill",
]
