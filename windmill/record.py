"""One image's full record as JSON-ready data: what `windmill-cli show IMAGE_ID` prints.

The keys follow the reference's extract_record.py (§11) so records stay comparable: `image`,
`ml_results`, `merged_boxes`, `consensus`, `postprocessing_results`, `caption_scores`,
`processing_summary`, plus `merge` (when the boxes were last recomputed). Unlike the reference,
every merged box is listed, not only those with two or more detections.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter, defaultdict
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from windmill.db.queries import query
from windmill.db.snapshot import read_only_snapshot
from windmill.errors import NoSuchImage

CAPTION_SCORE_PREFIX = "caption_score_"
# Postprocessing rows that belong to no box and are not caption scores are listed under this key.
WHOLE_IMAGE = "image"


def image_record(conn: psycopg.Connection, image_id: int) -> dict[str, Any]:
    """Everything stored about one image, read from one snapshot; `NoSuchImage` for an unknown id."""
    # Workers keep writing while we read: one snapshot keeps boxes and their postprocessing in step.
    with read_only_snapshot(conn):
        image = _rows(conn, "record_image", image_id)
        if not image:
            raise NoSuchImage(image_id)
        results = _rows(conn, "record_results", image_id)
        boxes = _rows(conn, "record_boxes", image_id)
        merge = _rows(conn, "record_merge_state", image_id)
        postprocessing = _rows(conn, "record_postprocessing", image_id)
        consensus = _rows(conn, "record_consensus", image_id)
    extracted_at = image[0].pop("extracted_at")
    return build_record(image[0], results, boxes, merge[0] if merge else None, postprocessing,
                        consensus[0] if consensus else None, extracted_at=extracted_at)


def build_record(
    image: dict[str, Any],
    results: list[dict[str, Any]],
    boxes: list[dict[str, Any]],
    merge: dict[str, Any] | None,
    postprocessing: list[dict[str, Any]],
    consensus: dict[str, Any] | None,
    *,
    extracted_at: dt.datetime | None = None,
) -> dict[str, Any]:
    """Assemble the record from rows (pure). Rows arrive ordered as the record_* queries order them."""
    ml_results: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in results:
        ml_results[row["service"]].append(_jsonable({k: v for k, v in row.items() if k != "service"}))

    by_box: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    caption_scores: dict[str, dict[str, Any]] = {}
    for row in postprocessing:
        service, box = row["service"], row["merged_box_id"]
        entry = _jsonable({k: v for k, v in row.items() if k != "service"})
        if box is None and service.startswith(CAPTION_SCORE_PREFIX):
            caption_scores.setdefault(service, entry)  # latest first: keep the first seen
        else:
            by_box[WHOLE_IMAGE if box is None else str(box)].setdefault(service, entry)

    return {
        "extraction_info": {"extracted_at": _jsonable(extracted_at), "image_id": image["image_id"]},
        "image": _jsonable(image),
        "ml_results": dict(sorted(ml_results.items())),
        "merged_boxes": [_jsonable(row) for row in boxes],
        "merge": _jsonable(merge) if merge is not None else None,
        "consensus": _jsonable(consensus) if consensus is not None else None,
        "postprocessing_results": dict(by_box),
        "caption_scores": dict(sorted(caption_scores.items())),
        "processing_summary": _summary(results, boxes, postprocessing),
    }


def _summary(results: list[dict[str, Any]], boxes: list[dict[str, Any]],
             postprocessing: list[dict[str, Any]]) -> dict[str, Any]:
    """Row counts by service and status: how far the pipeline got with this image."""
    return {
        "results": _counts(results),
        "postprocessing": _counts(postprocessing),
        "merged_boxes": len(boxes),
    }


def _counts(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counted = Counter((row["service"], row["status"]) for row in rows)
    nested: dict[str, dict[str, int]] = defaultdict(dict)
    for (service, status), count in sorted(counted.items()):
        nested[service][status] = count
    return dict(nested)


def _rows(conn: psycopg.Connection, name: str, image_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        # The box, postprocessing and consensus queries read a list of images (export reads them by page).
        cursor.execute(query(name), {"image_id": image_id, "image_ids": [image_id]})
        return cursor.fetchall()


def _jsonable(value: Any) -> Any:
    """Column values as JSON types: instants as ISO 8601 strings, UUIDs as strings, numerics as floats."""
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    return value
