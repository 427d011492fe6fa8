"""Reading what `export` writes: images in id order, a page at a time (keyset), each with its latest answers, merged
boxes, postprocessing, consensus and, when asked, its detectors' latest successful answers. Memory holds one page."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import psycopg
from psycopg.rows import dict_row

from windmill.db.queries import fetch_value, query
from windmill.db.snapshot import read_only_snapshot

PAGE_SIZE = 500  # images per page: a few MB of rows, and few enough round trips at a million images


@dataclass(frozen=True)
class Selection:
    """Which images and answers to export. `services` None: every service's answers."""

    group: str | None = None
    since: dt.datetime | None = None
    after_id: int = 0
    services: tuple[str, ...] | None = None

    def params(self) -> dict[str, Any]:
        return {"group": self.group, "since": self.since, "after_id": self.after_id}


@dataclass
class ImageExport:
    """One image and everything exported about it, as rows of the record_* and export_* queries."""

    image: dict[str, Any]
    answers: list[dict[str, Any]] = field(default_factory=list)
    boxes: list[dict[str, Any]] = field(default_factory=list)
    postprocessing: list[dict[str, Any]] = field(default_factory=list)
    consensus: dict[str, Any] | None = None
    detector_answers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def image_id(self) -> int:
        return int(self.image["image_id"])

    def size(self) -> tuple[int, int] | None:
        """(width, height) as the metadata service measured the image, when it did."""
        dimensions = self.image.get("dimensions")
        if not isinstance(dimensions, dict):
            return None
        width, height = dimensions.get("width"), dimensions.get("height")
        if _is_side(width) and _is_side(height):
            return width, height
        return None


def _is_side(value: object) -> TypeGuard[int]:
    """A measured side: a positive whole number of pixels."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def count_images(conn: psycopg.Connection, selection: Selection) -> int:
    """How many images the export walks through."""
    return int(fetch_value(conn, "export_image_count", selection.params()))


def first_image_between(conn: psycopg.Connection, selection: Selection, after_id: int, through: int,
                        with_boxes: bool) -> int | None:
    """The first image of the selection after `after_id` up to `through` (with a merged box, when `with_boxes`)."""
    rows = _rows(conn, "export_first_image_between", {**selection.params(), "after_id": after_id, "through": through,
                                                      "with_boxes": with_boxes})
    return int(rows[0]["image_id"]) if rows else None


def detector_names(conn: psycopg.Connection) -> list[str]:
    """Every detector the database knows, those of the catalog and any it held before."""
    return [str(row["name"]) for row in _rows(conn, "export_detector_names", {})]


def image_pages(conn: psycopg.Connection, selection: Selection, *, detectors: bool = False,
                page_size: int = PAGE_SIZE) -> Iterator[list[ImageExport]]:
    """Pages of images after `selection.after_id`, each page read in one snapshot (a REPEATABLE READ transaction,
    so an image's boxes and their postprocessing agree) and released before the next page is read."""
    after_id = selection.after_id
    while True:
        with read_only_snapshot(conn):
            images = _rows(conn, "export_image_page", {**selection.params(), "after_id": after_id, "limit": page_size})
            if not images:
                return
            page = read_page(conn, images, selection.services, detectors=detectors)
        yield page
        after_id = page[-1].image_id
        del page, images  # not held while the next page is read: memory holds one page, not two


def read_page(conn: psycopg.Connection, images: Sequence[dict[str, Any]], services: Sequence[str] | None, *,
              detectors: bool) -> list[ImageExport]:
    """The rows of a page of images, grouped by image."""
    by_id = {int(image["image_id"]): ImageExport(image) for image in images}
    ids = {"image_ids": list(by_id)}
    for row in _rows(conn, "export_latest_answers", {**ids, "services": list(services) if services else None}):
        by_id[row["image_id"]].answers.append(row)
    for row in _rows(conn, "record_boxes", ids):
        by_id[row["image_id"]].boxes.append(row)
    for row in _rows(conn, "record_postprocessing", ids):
        by_id[row["image_id"]].postprocessing.append(row)
    for row in _rows(conn, "record_consensus", ids):
        by_id[row["image_id"]].consensus = row
    if detectors:
        for row in _rows(conn, "eval_detector_results", ids):
            if services is None or row["service"] in services:
                by_id[row["image_id"]].detector_answers.append(row)
    return list(by_id.values())


def latest_postprocessing(rows: Sequence[dict[str, Any]]) -> tuple[dict[int, dict[str, dict[str, Any]]],
                                                                    dict[str, dict[str, Any]]]:
    """Rows (latest first per box and service) → ({box id: {service: row}}, {whole-image service: row})."""
    per_box: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    whole_image: dict[str, dict[str, Any]] = {}
    for row in rows:
        box = row["merged_box_id"]
        (whole_image if box is None else per_box[box]).setdefault(row["service"], row)
    return dict(per_box), whole_image


def _rows(conn: psycopg.Connection, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(query(name), params).fetchall()
