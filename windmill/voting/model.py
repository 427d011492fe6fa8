"""Plain input and intermediate records of the voting: rows as the database holds them, votes, boxes."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from windmill.box_names import box_label

# Turns an emoji field (any JSON value) into the string votes are grouped by; "" means no emoji.
EmojiKey = Callable[[Any], str]


@dataclass(frozen=True, slots=True)
class ServiceResult:
    """One `results` row: the answer of one ML service for the image."""

    result_id: int
    service: str
    status: str
    data: Mapping[str, Any] | str
    processing_time: float | None
    created: datetime


@dataclass(frozen=True, slots=True)
class MergedBoxRow:
    """One `merged_boxes` row of the image; `merged_data` has the harmony fields (§7.9)."""

    merged_id: int
    merged_data: Mapping[str, Any] | str


@dataclass(frozen=True, slots=True)
class PostprocessingRow:
    """One `postprocessing` row: a crop analysis (face, pose, colors) or a caption score."""

    postprocessing_id: int
    merged_box_id: int | None
    service: str
    status: str
    data: Mapping[str, Any] | str


@dataclass(frozen=True, slots=True)
class MergedBox:
    """A merged box as the voting reads it; `emoji` is already the grouping key."""

    merged_id: int
    emoji: str
    cluster_id: str | None
    detection_count: int
    avg_confidence: float
    merged_bbox: Mapping[str, Any]
    labels: tuple[str, ...]
    contributing_services: tuple[str, ...]
    detections: tuple[Mapping[str, Any], ...]
    label: str = ""  # its name (windmill.box_names): what the picture's tag, export and the consensus call it

    @classmethod
    def from_row(cls, row: MergedBoxRow, emoji_key: EmojiKey) -> MergedBox:
        data = as_object(row.merged_data) or {}
        bbox = data.get("merged_bbox")
        return cls(
            merged_id=row.merged_id,
            emoji=emoji_key(data.get("emoji")),
            cluster_id=data.get("cluster_id"),
            detection_count=_number(data.get("detection_count"), 0),
            avg_confidence=_number(data.get("avg_confidence"), 0.0),
            merged_bbox=bbox if isinstance(bbox, Mapping) else {},
            labels=tuple(str(label) for label in as_list(data.get("labels"))),
            contributing_services=tuple(str(name) for name in as_list(data.get("contributing_services"))),
            detections=tuple(item for item in as_list(data.get("detections")) if isinstance(item, Mapping)),
            label=box_label(data),
        )


@dataclass(frozen=True, slots=True)
class Vote:
    """One service's vote for one emoji, with the evidence type that decides which bonus it feeds."""

    emoji: str
    service: str
    evidence_type: str
    confidence: float
    context: Mapping[str, Any]
    shiny: bool = False
    box: MergedBox | None = None


def as_object(value: Any) -> Mapping[str, Any] | None:
    """A JSON object given as a mapping or as JSON text (the reference parsed string data); else None."""
    if isinstance(value, Mapping):
        return value
    if isinstance(value, str | bytes):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, Mapping) else None
    return None


def as_list(value: Any) -> list[Any]:
    """A JSON array, or [] for anything else (missing, null, wrong type)."""
    return value if isinstance(value, list) else []


def _number(value: Any, default: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return value
