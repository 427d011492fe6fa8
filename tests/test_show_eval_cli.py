"""`windmill-cli show` and `windmill-cli eval` against a real database: the record as JSON, the drawing as a
PNG of the image's size, the COCO table; user errors are one sentence."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image
from psycopg.types.json import Jsonb

from tests.test_pipeline import SETTINGS
from windmill.collection import add_paths
from windmill.roles.merger import merge_image
from windmill.samples.coco import samples_to_coco

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
# chelsea.jpg holds one cat: its sidecar box, as two detectors report it exactly.
CAT = {"label": "cat", "emoji": "🐱", "confidence": 0.9, "bbox": {"x": 0, "y": 0, "width": 451, "height": 300}}


@pytest.fixture
def cat_image(conn: psycopg.Connection) -> int:
    """chelsea.jpg with a small cat box from yolov8 and rtdetr (inside the picture, so its outline shows),
    merged."""
    add_paths(conn, [SAMPLES / "chelsea.jpg"], group="pets")
    image_id = conn.execute("SELECT image_id FROM images").fetchone()[0]
    small = {**CAT, "bbox": {"x": 100, "y": 50, "width": 200, "height": 150}}
    for service, prediction in (("yolov8", small), ("rtdetr", small), ("detectron2", CAT)):
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, %s, %s, %s, "
                     "'success')", (image_id, service, uuid.uuid4(), Jsonb({"predictions": [prediction]})))
        if service == "rtdetr":
            merge_image(conn, image_id, SETTINGS.harmony, "test")
    return image_id


def test_show_prints_the_record_as_json(run, cat_image: int) -> None:
    result = run("show", str(cat_image))
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert record["image"]["image_filename"] == "chelsea.jpg"
    assert sorted(record["ml_results"]) == ["detectron2", "rtdetr", "yolov8"]
    [box] = record["merged_boxes"]
    assert box["merged_data"]["detection_count"] == 2


def test_show_png_draws_the_boxes_and_detectors_draw_more(run, cat_image: int, tmp_path: Path) -> None:
    original = np.asarray(Image.open(SAMPLES / "chelsea.jpg").convert("RGB"), dtype=np.int16)
    changed = {}
    for name, extra in (("merged.png", ()), ("detectors.png", ("--detectors",))):
        result = run("show", str(cat_image), "--png", str(tmp_path / name), *extra)
        assert result.exit_code == 0, result.output
        with Image.open(tmp_path / name) as written:
            assert (written.format, written.size) == ("PNG", (451, 300))
            changed[name] = (np.asarray(written.convert("RGB"), dtype=np.int16) != original).any(axis=2)
    merged = changed["merged.png"]
    assert merged[50:200, 100].all() and merged[50:200, 299].all()  # the left and right edges of the box
    assert merged[199, 100:300].all()  # its bottom edge
    assert changed["detectors.png"].sum() > merged.sum()


def test_show_errors_are_one_sentence(run, cat_image: int, tmp_path: Path) -> None:
    unknown = run("show", "999")
    assert unknown.exit_code == 1 and unknown.output.strip() == "Error: no image with id 999"
    assert run("show", str(cat_image), "--detectors").exit_code == 2  # a usage error: --detectors needs --png
    unwritable = run("show", str(cat_image), "--png", str(tmp_path / "missing" / "out.png"))
    assert unwritable.exit_code == 1 and "cannot write" in unwritable.output


def test_eval_prints_ap_per_source(run, cat_image: int, tmp_path: Path) -> None:
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps(samples_to_coco(SAMPLES)), encoding="utf-8")
    result = run("eval", "--coco", str(annotations), "--group", "pets")
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.output.strip().splitlines()]
    assert lines[0] == ["source", "images", "predictions", "unmatched", "AP", "AP50", "AP75", "best_F1", "at_score"]
    rows = {line[0]: line[1:] for line in lines[1:]}
    # detectron2 reported the cat's box exactly: every threshold matches, from its confidence on.
    assert rows["detectron2"] == ["1", "1", "0", "1.000", "1.000", "1.000", "1.000", "0.900"]
    assert set(rows) == {"merged", "detectron2", "rtdetr", "yolov8"}
    with_rejected = run("eval", "--coco", str(annotations), "--group", "pets", "--include-rejected")
    assert with_rejected.exit_code == 0, with_rejected.output
    assert [line.split()[0] for line in with_rejected.output.strip().splitlines()[1:3]] == ["merged", "merged+rejected"]

    as_json = json.loads(run("eval", "--coco", str(annotations), "--json").output)
    assert {row["source"]: row["AP"] for row in as_json}["detectron2"] == 1.0


def test_eval_errors_are_one_sentence(run, cat_image: int, tmp_path: Path) -> None:
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps(samples_to_coco(SAMPLES)), encoding="utf-8")
    other = run("eval", "--coco", str(annotations), "--group", "other")
    assert other.exit_code == 1 and other.output.startswith("Error: none of the 6 images")
    broken = tmp_path / "broken.json"
    broken.write_text("{", encoding="utf-8")
    assert run("eval", "--coco", str(broken)).output.startswith("Error: broken.json is not valid JSON")
