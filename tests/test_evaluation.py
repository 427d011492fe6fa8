"""COCO evaluation: ground truth from the sample sidecars, predictions injected with known geometry (perfect
boxes score AP 1; boxes shifted by a fifth of their width have IoU 2/3, so they count at IoU 0.50–0.65 only:
AP 0.4, AP50 1, AP75 0), merged boxes ranked by their fused score, the boxes the democratic filter turned
down as candidates, the best F1 over score thresholds, labels matched to categories, and the errors a user
can meet."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.farm_fixtures import running_farm
from tests.test_pipeline import SETTINGS, answer
from windmill.catalog import Catalog
from windmill.coco_classes import COCO_CATEGORY_IDS
from windmill.coco_eval import CategoryMatcher, Prediction, SourcePredictions, parse_ground_truth, score_sources
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.errors import WindmillError
from windmill.evaluation import evaluate_collection, format_eval_table, load_coco_annotations
from windmill.harmony import stored_score
from windmill.roles.merger import merge_image
from windmill.samples.coco import samples_to_coco

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
COCO_NAMES = {"coffee.jpg": {"cup": "cup", "spoon": "spoon", "saucer": "bowl", "dining table": "dining table"}}


@pytest.fixture(scope="module")
def truth_document() -> dict[str, Any]:
    return samples_to_coco(SAMPLES)


def coffee_objects() -> list[tuple[str, list[int]]]:
    """(COCO name, [x, y, w, h]) of coffee.jpg, read from its sidecar as written by hand."""
    sidecar = json.loads((SAMPLES / "coffee.boxes.json").read_text(encoding="utf-8"))
    return [(COCO_NAMES["coffee.jpg"][obj["label"]], obj["bbox"]) for obj in sidecar["objects"]]


def store_answer(conn: psycopg.Connection, image_id: int, service: str, boxes: list[tuple[str, list[float]]],
                 confidence: float = 0.9, *, extra: tuple[tuple[str, list[float], float], ...] = ()) -> None:
    """A detector's success row: `boxes` at `confidence`, and `extra` (label, box, confidence) besides."""
    predictions = [{"label": label, "emoji": "", "confidence": score, "bbox": {"x": x, "y": y, "width": w, "height": h}}
                   for label, (x, y, w, h), score in [*((label, box, confidence) for label, box in boxes), *extra]]
    conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, %s, %s, %s, 'success')",
                 (image_id, service, uuid.uuid4(), Jsonb({"predictions": predictions})))


def shifted(boxes: list[tuple[str, list[int]]], fraction: float) -> list[tuple[str, list[float]]]:
    return [(label, [x + fraction * w, y, w, h]) for label, (x, y, w, h) in boxes]


@pytest.fixture
def coffee(database: Database, conn: psycopg.Connection) -> int:
    add_paths(conn, [SAMPLES / "coffee.jpg"], group="demo")
    return conn.execute("SELECT image_id FROM images").fetchone()[0]


def by_source(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["source"]: row for row in rows}


def test_samples_become_coco_ground_truth(truth_document: dict[str, Any]) -> None:
    images = {image["file_name"]: image for image in truth_document["images"]}
    assert sorted(images) == sorted(p.name for p in SAMPLES.glob("*.jpg"))
    assert (images["coffee.jpg"]["width"], images["coffee.jpg"]["height"]) == (600, 400)
    names = {c["id"]: c["name"] for c in truth_document["categories"]}
    assert len(names) == 80 and names[1] == "person" and names[90] == "toothbrush"

    def annotated(file_name: str) -> list[tuple[str, list[int]]]:
        return sorted((names[a["category_id"]], a["bbox"]) for a in truth_document["annotations"]
                      if a["image_id"] == images[file_name]["id"])

    assert annotated("coffee.jpg") == sorted(coffee_objects())
    # A tripod and a tower are no COCO class; a rocket's scene holds none at all.
    assert [name for name, _ in annotated("camera.jpg")] == ["person"]
    assert annotated("rocket.jpg") == []
    parse_ground_truth(truth_document)  # what samples_to_coco writes, eval reads


def test_perfect_boxes_score_one_and_shifted_boxes_less(coffee: int, conn: psycopg.Connection,
                                                        truth_document: dict[str, Any]) -> None:
    truth = parse_ground_truth(truth_document)
    perfect = coffee_objects()
    store_answer(conn, coffee, "yolov8", perfect)
    store_answer(conn, coffee, "rtdetr", perfect, confidence=0.8)
    merge_image(conn, coffee, SETTINGS.harmony, "test")
    store_answer(conn, coffee, "detectron2", shifted(perfect, 0.2))  # after the merge: merged stays perfect

    rows = by_source(evaluate_collection(conn, truth))
    assert list(rows) == ["merged", "detectron2", "rtdetr", "yolov8"]
    # Every box found at the source's only score: F1 1 with that score as the threshold; merged: (2 + 1.7) / 4.
    for source, threshold in (("merged", 0.925), ("rtdetr", 0.8), ("yolov8", 0.9)):
        assert rows[source] == {"source": source, "images": 1, "predictions": 4, "unmatched": 0,
                                "AP": 1.0, "AP50": 1.0, "AP75": 1.0, "best_F1": 1.0, "F1_threshold": threshold,
                                "F1_precision": 1.0, "F1_recall": 1.0}
    worse = rows["detectron2"]
    assert (worse["AP"], worse["AP50"], worse["AP75"]) == (pytest.approx(0.4), 1.0, 0.0)


def test_merged_boxes_rank_by_their_fused_score(coffee: int, conn: psycopg.Connection,
                                                truth_document: dict[str, Any]) -> None:
    # Three detectors agree on the four objects at 0.5; detectron2 alone also sees a cup where there is none, at
    # 0.95 (loud enough to be kept). By avg_confidence the false cup (0.95) would rank above the true one (0.5):
    # the cup's AP50 would be 0.5 and the mean 0.875. By score, (3 + 1.5) / 6 beats (1 + 0.95) / 6.
    objects = coffee_objects()
    store_answer(conn, coffee, "yolov8", objects, 0.5)
    store_answer(conn, coffee, "rtdetr", objects, 0.5)
    store_answer(conn, coffee, "detectron2", objects, 0.5, extra=(("cup", [500, 300, 90, 90], 0.95),))
    merge_image(conn, coffee, SETTINGS.harmony, "test")
    merged = evaluate_collection(conn, parse_ground_truth(truth_document))[0]
    assert (merged["predictions"], merged["AP50"]) == (5, 1.0)
    assert (merged["best_F1"], merged["F1_threshold"]) == (1.0, 0.75)


def test_rejected_boxes_count_as_candidates_and_nothing_is_stored(coffee: int, conn: psycopg.Connection,
                                                                  truth_document: dict[str, Any]) -> None:
    # yolov8 and rtdetr agree on three objects; the spoon only yolov8 saw, at 0.5: the filter turns it down.
    objects = coffee_objects()
    agreed = [obj for obj in objects if obj[0] != "spoon"]
    spoon = next(obj for obj in objects if obj[0] == "spoon")
    store_answer(conn, coffee, "rtdetr", agreed, 0.8)
    store_answer(conn, coffee, "yolov8", agreed, 0.8, extra=((*spoon, 0.5),))
    merge_image(conn, coffee, SETTINGS.harmony, "test")
    # A newer yolov8 answer without the spoon, not merged yet: candidates come from what the merge read.
    store_answer(conn, coffee, "yolov8", agreed, 0.8)
    stored = conn.execute("SELECT merged_id, merged_data FROM merged_boxes ORDER BY merged_id").fetchall()
    merge_state = conn.execute("SELECT * FROM merged_images").fetchall()

    rows = by_source(evaluate_collection(conn, parse_ground_truth(truth_document), rejected_by=SETTINGS.harmony))
    assert list(rows) == ["merged", "merged+rejected", "rtdetr", "yolov8"]
    assert (rows["merged"]["predictions"], rows["merged"]["AP50"]) == (3, 0.75)  # the spoon missed
    with_rejected = rows["merged+rejected"]
    assert (with_rejected["predictions"], with_rejected["AP50"]) == (4, 1.0)
    # The candidate ranks below the agreed boxes: (1 + 0.5) / 4 against (2 + 1.6) / 4.
    assert (with_rejected["best_F1"], with_rejected["F1_threshold"]) == (1.0, 0.375)
    assert conn.execute("SELECT merged_id, merged_data FROM merged_boxes ORDER BY merged_id").fetchall() == stored
    assert conn.execute("SELECT * FROM merged_images").fetchall() == merge_state
    assert "merged+rejected" not in by_source(evaluate_collection(conn, parse_ground_truth(truth_document)))


@pytest.mark.parametrize(("data", "expected"), [
    ({"score": 0.42, "avg_confidence": 0.9}, 0.42),
    # Stored before boxes had a score: the same formula from its detections and the answers its merge read.
    ({"avg_confidence": 0.85, "detections": [{"confidence": 0.9}, {"confidence": 0.8}],
      "source_result_ids": [1, 2, 3]}, (2 + 1.7) / 6),
    ({"avg_confidence": 0.9, "detections": [{"confidence": 0.9}], "source_result_ids": []}, (1 + 0.9) / 2),
    ({"avg_confidence": 0.9}, 0.0),
])
def test_a_box_ranks_by_its_stored_score_or_the_same_formula(data: dict[str, Any], expected: float) -> None:
    assert stored_score(data) == pytest.approx(expected)


CAT_TRUTH = {"images": [{"id": 1, "file_name": "cats.jpg"}], "categories": [{"id": 1, "name": "cat"}],
             "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 100]},
                             {"image_id": 1, "category_id": 1, "bbox": [200, 0, 100, 100]}]}


@pytest.mark.parametrize(("predictions", "best"), [
    # Cuts: 1 box (1 hit of 2): F1 2/3; 2 boxes (1 hit): 1/2; 3 boxes (2 hits): 4/5, precision 2/3.
    ([(0.9, 0), (0.8, 500), (0.7, 200)], (0.8, 0.7, 0.6667, 1.0)),
    # The false box ties with the first hit: no threshold keeps one without the other (without ties: 2/3).
    ([(0.9, 0), (0.9, 500)], (0.5, 0.9, 0.5, 0.5)),
    ([(0.9, 0), (0.5, 200), (0.4, 500)], (1.0, 0.5, 1.0, 1.0)),
    ([], (0.0, None, None, None)),
])
def test_the_best_f1_is_cut_at_a_score_threshold(predictions: list[tuple[float, int]],
                                                  best: tuple[float, float | None, float | None, float | None]
                                                  ) -> None:
    source = SourcePredictions(frozenset({1}), tuple(Prediction(1, ("cat",), "", score, (x, 0, 100, 100))
                                                      for score, x in predictions))
    [row] = score_sources(parse_ground_truth(CAT_TRUTH), {"cats": source})
    assert (row["best_F1"], row["F1_threshold"], row["F1_precision"], row["F1_recall"]) == best


def test_boxes_named_outside_the_categories_are_counted_as_unmatched(coffee: int, conn: psycopg.Connection,
                                                                     truth_document: dict[str, Any]) -> None:
    truth = parse_ground_truth(truth_document)
    answer_boxes = [("Dining_Table", [0, 0, 600, 400]), ("mug", [172, 18, 238, 272]), ("tripod", [1, 1, 50, 50])]
    store_answer(conn, coffee, "yolov8", answer_boxes)
    [row] = evaluate_collection(conn, truth)[1:]
    assert (row["source"], row["predictions"], row["unmatched"]) == ("yolov8", 2, 1)
    # Two of the four categories found exactly (AP 1 each), two missed (AP 0).
    assert row["AP50"] == pytest.approx(0.5)


def test_only_the_named_group_is_evaluated(coffee: int, conn: psycopg.Connection,
                                           truth_document: dict[str, Any]) -> None:
    truth = parse_ground_truth(truth_document)
    store_answer(conn, coffee, "yolov8", coffee_objects())
    assert by_source(evaluate_collection(conn, truth, group="demo"))["yolov8"]["AP"] == 1.0
    with pytest.raises(WindmillError, match=r"none of the 6 images .* of group 'other'"):
        evaluate_collection(conn, truth, group="other")


def test_a_merged_image_without_boxes_counts_with_nothing_found(coffee: int, conn: psycopg.Connection,
                                                                truth_document: dict[str, Any]) -> None:
    store_answer(conn, coffee, "yolov8", [])
    merge_image(conn, coffee, SETTINGS.harmony, "test")
    merged = evaluate_collection(conn, parse_ground_truth(truth_document))[0]
    assert merged == {"source": "merged", "images": 1, "predictions": 0, "unmatched": 0,
                      "AP": 0.0, "AP50": 0.0, "AP75": 0.0, "best_F1": 0.0, "F1_threshold": None,
                      "F1_precision": None, "F1_recall": None}


@pytest.mark.parametrize(("labels", "emoji", "expected"), [
    (("cup",), "", "cup"),
    (("Dining_Table",), "", "dining table"),
    (("sofa",), "", "couch"),
    (("mug",), "", "cup"),
    (("tripod",), "", None),
    (("espresso",), "☕", "cup"),  # the emoji other boxes name "cup"
    (("espresso",), "", None),
    (("spoon", "ladle", "spoon", "cup"), "", "spoon"),  # most votes win
])
def test_labels_map_to_categories_by_name_synonym_or_emoji(labels: tuple[str, ...], emoji: str,
                                                           expected: str | None) -> None:
    matcher = CategoryMatcher.for_categories({cid: name for name, cid in COCO_CATEGORY_IDS.items()})
    matcher = matcher.learning_emoji([("cup", "☕"), ("cup", "☕"), ("espresso", "☕"), ("bowl", "☕")])
    assert matcher.category_of(labels, emoji) == (COCO_CATEGORY_IDS[expected] if expected else None)


def test_stand_in_detectors_are_scored_between_zero_and_one(database: Database, pool: ConnectionPool,
                                                            conn: psycopg.Connection, catalog: Catalog,
                                                            truth_document: dict[str, Any]) -> None:
    add_paths(conn, [SAMPLES / "coffee.jpg", SAMPLES / "chelsea.jpg"])
    images = [row[0] for row in conn.execute("SELECT image_id FROM images ORDER BY image_id")]
    with running_farm(catalog) as (_, farm_catalog):
        for image_id in images:
            for detector in ("yolov8", "rtdetr", "clip"):
                answer(pool, farm_catalog, conn, image_id, detector)
            merge_image(conn, image_id, SETTINGS.harmony, "test")
    rows = evaluate_collection(conn, parse_ground_truth(truth_document))
    assert [row["source"] for row in rows] == ["merged", "clip", "rtdetr", "yolov8"]
    for row in rows:
        assert row["images"] == 2 and row["predictions"] > 0
        assert 0.0 <= row["AP75"] <= row["AP50"] <= 1.0 and 0.0 <= row["AP"] <= row["AP50"]
    table = format_eval_table(rows)
    assert table.splitlines()[0].split()[:7] == ["source", "images", "predictions", "unmatched", "AP", "AP50", "AP75"]


def test_without_the_evaluator_package_the_error_says_what_to_install(
        coffee: int, conn: psycopg.Connection, truth_document: dict[str, Any],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, module, None)  # a third-party package missing: import fails
    with pytest.raises(WindmillError, match=r"pip install 'windmill-pipeline\[coco\]'"):
        evaluate_collection(conn, parse_ground_truth(truth_document))


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', r"images\[0\] needs an integer id"),
    ('{"images": [], "annotations": []}', "'categories' must be a list"),
    ('{"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "cat"}], '
     '"annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 5]}]}', "positive width and height"),
    ('{"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [], '
     '"annotations": [{"image_id": 1, "category_id": 7, "bbox": [0, 0, 5, 5]}]}', "category 7"),
])
def test_a_bad_annotations_file_is_a_user_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "annotations.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(WindmillError, match=message):
        load_coco_annotations(path)


def test_coco_file_names_with_directories_match_by_name() -> None:
    truth = parse_ground_truth({"images": [{"id": 3, "file_name": "val2017/coffee.jpg"}], "annotations": [],
                                "categories": []})
    assert truth.by_filename == {"coffee.jpg": 3}


def test_the_table_shows_three_decimals_and_dashes() -> None:
    table = format_eval_table([
        {"source": "merged", "images": 2, "predictions": 7, "unmatched": 1, "AP": 0.61234, "AP50": 1.0, "AP75": 0.5,
         "best_F1": 0.8, "F1_threshold": 0.4167, "F1_precision": 0.6667, "F1_recall": 1.0},
        {"source": "ocr", "images": 0, "predictions": 0, "unmatched": 0, "AP": None, "AP50": None, "AP75": None,
         "best_F1": None, "F1_threshold": None, "F1_precision": None, "F1_recall": None},
    ])
    lines = [line.split() for line in table.splitlines()]
    assert lines[0] == ["source", "images", "predictions", "unmatched", "AP", "AP50", "AP75", "best_F1", "at_score"]
    assert lines[1] == ["merged", "2", "7", "1", "0.612", "1.000", "0.500", "0.800", "0.417"]
    assert lines[2][-5:] == ["-", "-", "-", "-", "-"]
