"""An image's record and its drawing, after a small real pipeline (stand-in farm, service handler, merger,
postprocessing, consensus): the record matches the database row for row; drawn boxes change the pixels
on their outlines, and detectors' raw boxes change more."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from PIL import Image
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.farm_fixtures import running_farm
from tests.test_pipeline import PRODUCTS, SETTINGS, answer, run_group
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.errors import WindmillError
from windmill.record import image_record
from windmill.render import MERGED_COLOUR, FontChoice, box_caption, render_boxes, render_image, save_png
from windmill.roles.merger import merge_image

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
DETECTORS = ("yolov8", "rtdetr", "detectron2")
RECORD_KEYS = {"extraction_info", "image", "ml_results", "merged_boxes", "merge", "consensus",
               "postprocessing_results", "caption_scores", "processing_summary"}


@pytest.fixture
def processed(database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog) -> Iterator[int]:
    """astronaut.jpg through three detectors and BLIP, merged, postprocessed and voted; one failed OCR row."""
    add_paths(conn, [SAMPLES / "astronaut.jpg"])
    image_id = conn.execute("SELECT image_id FROM images").fetchone()[0]
    with running_farm(catalog) as (_, farm_catalog):
        for service in (*DETECTORS, "blip"):
            answer(pool, farm_catalog, conn, image_id, service)
        answer(pool, farm_catalog, conn, image_id, "yolov8")  # a second answer: the record lists both
        merge_image(conn, image_id, SETTINGS.harmony, "test")
        run_group(database, pool, farm_catalog, PRODUCTS)
    conn.execute("INSERT INTO results (image_id, service, task_id, data, status, error_message) "
                 "VALUES (%s, 'ocr', %s, '{}', 'error', 'HTTP 500 from ocr')", (image_id, uuid.uuid4()))
    yield image_id


def test_the_record_holds_every_row_of_the_image(processed: int, conn: psycopg.Connection) -> None:
    record = image_record(conn, processed)
    assert set(record) == RECORD_KEYS
    json.dumps(record)  # JSON as it is: no default= needed
    assert record["image"]["image_filename"] == "astronaut.jpg"
    dt.datetime.fromisoformat(record["image"]["image_created"])
    dt.datetime.fromisoformat(record["extraction_info"]["extracted_at"])

    stored = conn.execute("SELECT service, status, result_id FROM results WHERE image_id = %s "
                          "ORDER BY service, result_created DESC, result_id DESC", (processed,)).fetchall()
    assert {s: [r["result_id"] for r in rows] for s, rows in record["ml_results"].items()} == {
        service: [rid for s, _status, rid in stored if s == service] for service in {s for s, _, _ in stored}}
    assert len(record["ml_results"]["yolov8"]) == 2
    [ocr] = record["ml_results"]["ocr"]
    assert (ocr["status"], ocr["error_message"]) == ("error", "HTTP 500 from ocr")
    assert {"processing_time", "data", "result_created"} <= set(ocr)
    counts = Counter((service, status) for service, status, _ in stored)
    assert record["processing_summary"]["results"] == {
        service: {status: n for (s, status), n in counts.items() if s == service} for service, _ in counts}

    boxes = conn.execute("SELECT merged_id, crop_key, merged_data FROM merged_boxes WHERE image_id = %s "
                         "ORDER BY merged_id", (processed,)).fetchall()
    assert len(boxes) >= 2  # the astronaut and the shuttle
    assert [(b["merged_id"], b["crop_key"], b["merged_data"]) for b in record["merged_boxes"]] == boxes
    assert record["processing_summary"]["merged_boxes"] == len(boxes)
    assert record["merge"]["boxes"] == len(boxes)

    post = conn.execute("SELECT merged_box_id, service, postprocessing_id FROM postprocessing "
                        "WHERE image_id = %s AND merged_box_id IS NOT NULL", (processed,)).fetchall()
    assert post, "every box has colors"
    assert {(int(box), service, row["postprocessing_id"]) for box, services in record["postprocessing_results"].items()
            for service, row in services.items()} == set(post)
    [(score_id,)] = conn.execute("SELECT postprocessing_id FROM postprocessing WHERE service = 'caption_score_blip'")
    assert record["caption_scores"]["caption_score_blip"]["postprocessing_id"] == score_id
    consensus = conn.execute("SELECT consensus_data FROM consensus WHERE image_id = %s", (processed,)).fetchone()[0]
    assert record["consensus"]["consensus_data"] == consensus


def test_an_unknown_image_is_a_user_error(conn: psycopg.Connection, database: Database) -> None:
    with pytest.raises(WindmillError, match="no image with id 999"):
        image_record(conn, 999)


def _changed(drawn: Image.Image, original: Image.Image) -> np.ndarray:
    return (np.asarray(drawn, dtype=np.int16) != np.asarray(original, dtype=np.int16)).any(axis=2)


def test_drawn_boxes_change_their_outlines_and_detectors_add_more(processed: int, conn: psycopg.Connection,
                                                                   tmp_path: Path) -> None:
    original = Image.open(SAMPLES / "astronaut.jpg").convert("RGB")
    merged = render_image(conn, SETTINGS, processed, detectors=False)
    path = tmp_path / "boxes.png"
    save_png(merged, path)
    with Image.open(path) as written:
        assert (written.format, written.size) == ("PNG", original.size)
    changed = _changed(merged, original)
    for (data,) in conn.execute("SELECT merged_data FROM merged_boxes WHERE image_id = %s", (processed,)):
        box = data["merged_bbox"]
        x1, y1 = box["x"], box["y"]
        x2, y2 = min(x1 + box["width"], original.width) - 1, min(y1 + box["height"], original.height) - 1
        ring = np.concatenate([changed[y1:y2 + 1, x1], changed[y1:y2 + 1, x2], changed[y1, x1:x2 + 1],
                               changed[y2, x1:x2 + 1]])
        assert ring.all(), f"outline of {data['cluster_id']}"
    # Outside the boxes (and the tags above them) the picture is the original.
    assert changed.mean() < 0.25

    with_detectors = render_image(conn, SETTINGS, processed, detectors=True)
    assert with_detectors.size == original.size
    assert _changed(with_detectors, original).sum() > changed.sum()


def test_drawing_without_fonts_still_labels_every_box() -> None:
    image = Image.new("RGB", (200, 120), (90, 90, 90))
    box = {"emoji": "🐱", "labels": ["cat"], "merged_bbox": {"x": 40, "y": 40, "width": 100, "height": 60},
           "detection_count": 2, "detections": [{"label": "cat"}, {"label": "cat"}]}
    drawn = render_boxes(image, [box], {"yolov8": [{"bbox": [10, 10, 30, 30], "label": "cat", "confidence": 0.5}]},
                         fonts=FontChoice())
    pixels = np.asarray(drawn)
    assert tuple(pixels[70, 40]) == MERGED_COLOUR  # the left edge of the box
    assert (pixels[22:40, 40:100] == MERGED_COLOUR).all(axis=2).any()  # the tag above it
    assert np.asarray(image).max() == 90  # the caller's image is not drawn on
    assert render_boxes(image, []).tobytes() == image.tobytes()


@pytest.mark.parametrize(("box", "caption"), [
    ({"labels": ["cup", "espresso"], "detection_count": 3,
      "detections": [{"label": "espresso"}, {"label": "cup"}, {"label": "cup"}]}, "cup ×3"),
    ({"labels": ["person"], "detection_count": 1}, "person ×1"),
    ({"cluster_id": "🚀_2", "detections": [{"service": "clip"}]}, "🚀 ×1"),
])
def test_a_box_is_captioned_by_its_most_common_label_and_its_agreement(box: dict[str, Any], caption: str) -> None:
    assert box_caption(box) == caption


def test_a_label_of_a_million_characters_is_drawn_cut_short() -> None:
    # `show --png` ended in a traceback: Pillow refuses such a text ("too many characters in string").
    image = Image.new("RGB", (200, 120), (90, 90, 90))
    box = {"merged_bbox": {"x": 40, "y": 40, "width": 100, "height": 60}, "detection_count": 1,
           "detections": [{"label": "x" * 1_000_000}]}
    assert box_caption(box) == "x" * 59 + "… ×1"
    assert render_boxes(image, [box], fonts=FontChoice()).size == (200, 120)


def test_unreadable_boxes_are_skipped_not_fatal() -> None:
    image = Image.new("RGB", (50, 50))
    boxes = [{"merged_bbox": {"x": "a"}}, {"merged_bbox": None}, {"merged_bbox": {"x": 60, "y": 60, "width": 5,
                                                                                   "height": 5}}]
    assert render_boxes(image, boxes, {"rtdetr": [{"bbox": None}]}, fonts=FontChoice()).size == (50, 50)


def test_a_png_that_cannot_be_written_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(WindmillError, match="cannot write"):
        save_png(Image.new("RGB", (4, 4)), tmp_path / "missing" / "out.png")


def test_the_image_an_answer_came_from_need_not_have_boxes(database: Database, conn: psycopg.Connection,
                                                           tmp_path: Path) -> None:
    Image.new("RGB", (64, 48), "blue").save(tmp_path / "plain.png")
    add_paths(conn, [tmp_path / "plain.png"])
    image_id = conn.execute("SELECT image_id FROM images").fetchone()[0]
    conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, 'yolov8', %s, %s, "
                 "'success')", (image_id, uuid.uuid4(), Jsonb({"predictions": []})))
    drawn = render_image(conn, SETTINGS, image_id, detectors=True)
    assert drawn.size == (64, 48)
    record = image_record(conn, image_id)
    assert (record["merged_boxes"], record["consensus"], record["merge"]) == ([], None, None)
