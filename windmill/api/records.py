"""Typed, frozen views of what Windmill stores about an image: the collection's image rows and the full record
`windmill-cli show` prints (windmill/record.py builds it; `ImageRecord.as_dict()` is that JSON, unchanged)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# Fields holding instants: the record carries them as ISO 8601 text, the typed views as datetimes.
_INSTANTS = frozenset({"created", "image_created", "result_created", "merged_at", "changed_at", "consensus_created",
                       "extracted_at"})
_Row = TypeVar("_Row", bound="DataclassInstance")


@dataclass(frozen=True)
class Image:
    """One image of the collection."""

    image_id: int
    image_filename: str
    image_path: str | None  # a file on the workers' machines, or
    image_url: str | None  # an http(s) URL
    image_group: str | None
    image_created: dt.datetime


@dataclass(frozen=True)
class Answer:
    """One answer row of a service for the image (`results`)."""

    result_id: int
    task_id: str | None
    status: str  # success, error or timeout
    error_message: str | None
    processing_time: float | None
    result_created: dt.datetime
    worker_id: str | None
    data: Any  # the service's normalised answer (V3 envelope)


@dataclass(frozen=True)
class MergedBox:
    """One harmonized box: several detectors' boxes agreed on (`merged_data` holds label, bbox, agreement)."""

    merged_id: int
    crop_key: str | None
    status: str
    created: dt.datetime
    worker_id: str | None
    source_result_ids: list[int]
    merged_data: dict[str, Any]

    @property
    def emoji(self) -> str | None:
        return self.merged_data.get("emoji")

    @property
    def labels(self) -> list[str]:
        """The detectors' labels of this box."""
        return list(self.merged_data.get("labels", []))

    @property
    def bbox(self) -> dict[str, Any]:
        """The merged box: x, y, width, height in pixels."""
        return dict(self.merged_data.get("merged_bbox", {}))


@dataclass(frozen=True)
class MergeState:
    """When the image's boxes were last recomputed and last changed, from which answers."""

    merged_at: dt.datetime
    changed_at: dt.datetime | None
    boxes: int
    source_result_ids: list[int]
    worker_id: str | None


@dataclass(frozen=True)
class PostprocessingAnswer:
    """An answer of a postprocessing service (colors, face, pose) for a box, or a caption score."""

    postprocessing_id: int
    merged_box_id: int | None
    status: str
    error_message: str | None
    processing_time: float | None
    result_created: dt.datetime
    worker_id: str | None
    data: Any


@dataclass(frozen=True)
class Consensus:
    """The V3 vote across every service's answers (`consensus_data`)."""

    consensus_id: int
    consensus_data: dict[str, Any]
    processing_time: float | None
    consensus_created: dt.datetime
    worker_id: str | None

    @property
    def emoji(self) -> list[str]:
        """The voted emoji, strongest first."""
        return [item["emoji"] for item in self.consensus_data.get("votes", {}).get("consensus", [])]


@dataclass(frozen=True)
class ImageRecord:
    """Everything stored about one image, read from one snapshot."""

    image: Image
    extracted_at: dt.datetime
    answers: Mapping[str, list[Answer]]  # per service, latest first
    merged_boxes: list[MergedBox]
    merge: MergeState | None  # None before the first merge
    consensus: Consensus | None
    postprocessing: Mapping[str, Mapping[str, PostprocessingAnswer]]  # per box id (or "image"), per service
    caption_scores: Mapping[str, PostprocessingAnswer]  # per caption_score_<source>
    summary: Mapping[str, Any]  # row counts by service and status
    _record: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> ImageRecord:
        """The typed view of the JSON record windmill.record.image_record() builds."""
        return cls(
            image=from_row(Image, record["image"]),
            extracted_at=_instant(record["extraction_info"]["extracted_at"]),
            answers={service: [from_row(Answer, row) for row in rows]
                     for service, rows in record["ml_results"].items()},
            merged_boxes=[from_row(MergedBox, row) for row in record["merged_boxes"]],
            merge=from_row(MergeState, record["merge"]) if record["merge"] is not None else None,
            consensus=from_row(Consensus, record["consensus"]) if record["consensus"] is not None else None,
            postprocessing={box: {service: from_row(PostprocessingAnswer, row) for service, row in by_service.items()}
                            for box, by_service in record["postprocessing_results"].items()},
            caption_scores={service: from_row(PostprocessingAnswer, row)
                            for service, row in record["caption_scores"].items()},
            summary=record["processing_summary"],
            _record=record,
        )

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data: exactly what `windmill-cli show` prints."""
        return self._record

    def latest(self, service: str) -> Answer | None:
        """The service's latest answer, or None when it has not answered."""
        answers = self.answers.get(service)
        return answers[0] if answers else None


def from_row(kind: type[_Row], row: Mapping[str, Any]) -> _Row:
    """A typed view of a row or record part: its fields by name (columns it does not know are left out)."""
    values = {item.name: row.get(item.name) for item in fields(kind)}
    return kind(**{name: _instant(value) if name in _INSTANTS else value for name, value in values.items()})


def _instant(value: Any) -> Any:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value
