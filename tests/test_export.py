"""`export`: each format loaded by the library that reads it (pycocotools and faster-coco-eval, pyarrow, csv, json)
holds what SQL says the collection holds; the filters select what SQL selects; an interrupted export continues
with --after-id into the same file and ends equal to an uninterrupted one; bad requests are one sentence."""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from tests.conftest import PYTHON, REPOSITORY
from tests.results_fixtures import SAMPLE_GROUP, URL_GROUP, processed_collection
from windmill.catalog import Catalog
from windmill.coco_classes import COCO_CATEGORY_IDS, category_name
from windmill.db.connect import Database
from windmill.errors import WindmillError
from windmill.export import ExportRequest, ExportStop, ExportStopped, Selection, export
from windmill.export.coco import results_path, stable_category_id

DETECTORS = ("clip", "detectron2", "rtdetr", "xception", "yolov8")


@pytest.fixture(scope="module")
def collection(database_url: str, catalog: Catalog) -> Iterator[Database]:
    with processed_collection(database_url, catalog) as database:
        yield database


@pytest.fixture
def conn(collection: Database) -> Iterator[psycopg.Connection]:
    with collection.connect() as connection:
        yield connection


def scalar(conn: psycopg.Connection, statement: str, *params: Any) -> Any:
    return conn.execute(statement, params).fetchone()[0]


def run_export(conn: psycopg.Connection, fmt: str, out: Path, **options: Any) -> Any:
    detectors = options.pop("detectors", False)
    page_size = options.pop("page_size", 500)
    return export(conn, ExportRequest(fmt, out, Selection(**options), detectors=detectors), page_size=page_size)


# -- each format, read back ----------------------------------------------------------------------------------------


def test_coco_loads_in_pycocotools_and_faster_coco_eval_with_every_box_and_detection(conn, tmp_path: Path) -> None:
    from faster_coco_eval import COCO as FasterCOCO
    from faster_coco_eval import COCOeval_faster
    from pycocotools.coco import COCO

    out = tmp_path / "windmill.json"
    report = run_export(conn, "coco", out, detectors=True)
    truth = COCO(str(out))
    # Every image whose size the metadata service measured, under its path (unique: two folders may hold one name);
    # the others are left out (FiftyOne's importer needs every image's size) and the report says so.
    widths = dict(conn.execute("SELECT image_id, (data #>> '{predictions,0,dimensions,width}')::int FROM results "
                               "WHERE service = 'metadata' AND status = 'success'"))
    assert {image["id"]: image["width"] for image in truth.dataset["images"]} == widths
    paths = dict(conn.execute("SELECT image_id, coalesce(image_path, image_url) FROM images"))
    assert all(image["file_name"] == paths[image["id"]] for image in truth.dataset["images"])
    unmeasured = scalar(conn, "SELECT count(*) FROM images") - len(widths)
    assert unmeasured > 0 and report.notes == [f"{unmeasured} image(s) left out of the COCO file: their size is not "
                                               "known yet (the metadata service has not measured them: not processed, "
                                               "failed, or not an image)"]
    assert report.images == len(widths), "the summary's count is of the images in the file"
    boxes = conn.execute("SELECT merged_id, merged_data FROM merged_boxes ORDER BY merged_id").fetchall()
    assert sorted(truth.getAnnIds()) == [merged_id for merged_id, _ in boxes]
    for merged_id, data in boxes:
        [annotation] = truth.loadAnns([merged_id])
        assert annotation["score"] == data.get("score", data["avg_confidence"])
        assert annotation["bbox"] == [data["merged_bbox"][key] for key in ("x", "y", "width", "height")]
        assert annotation["contributing_services"] == data["contributing_services"]
        assert truth.loadCats([annotation["category_id"]])[0]["name"] in map(category_name, data["labels"])

    # One results file per detector, with every box of its latest successful answers; loadable as results.
    assert report.files == [out, *(results_path(out, service) for service in DETECTORS)]
    for service in DETECTORS:
        stored = scalar(conn, """SELECT count(*) FROM (SELECT DISTINCT ON (image_id) data FROM results
                                  WHERE service = %s AND status = 'success'
                                  ORDER BY image_id, result_created DESC) latest,
                                 jsonb_array_elements(latest.data->'predictions') AS p WHERE p ? 'bbox'""", service)
        detections = truth.loadRes(str(results_path(out, service)))
        assert len(detections.getAnnIds()) == stored > 0
        faster = FasterCOCO(str(out))
        evaluation = COCOeval_faster(faster, faster.loadRes(str(results_path(out, service))), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()


def test_coco_category_ids_are_the_same_in_every_export(conn, tmp_path: Path) -> None:
    # A stream's incremental exports, or two groups', are read together: a label keeps its id. COCO's classes keep
    # COCO's own ids, as in COCO's files.
    ids = []
    for name, after_id in (("whole", 0), ("later", 3)):
        run_export(conn, "coco", tmp_path / f"{name}.json", after_id=after_id, detectors=True)
        ids.append({category["name"]: category["id"]
                    for category in json.loads((tmp_path / f"{name}.json").read_text())["categories"]})
    whole, later = ids
    assert later and all(whole[name] == category_id for name, category_id in later.items())
    assert whole["person"] == 1 and len(set(whole.values())) == len(whole)
    assert stable_category_id("dining_table") == stable_category_id("dining table") == COCO_CATEGORY_IDS["dining table"]
    assert stable_category_id("space_shuttle") >= 1000
    assert stable_category_id("space_shuttle", {stable_category_id("space_shuttle")}) != stable_category_id(
        "space_shuttle")


@pytest.mark.parametrize("labels", list(itertools.permutations(["dining_table", "dining table", "Dining  Table "])))
def test_spellings_of_one_class_are_one_category_with_cocos_id_whatever_the_order(tmp_path: Path,
                                                                                  labels: tuple[str, ...]) -> None:
    # Xception writes `dining_table`: as a category of its own, pycocotools scored its boxes against no ground truth.
    from windmill.export.coco import CocoWriter

    writer = CocoWriter(tmp_path / "out.json", detectors=False)
    try:
        ids = [writer.category(label, "\U0001f37d") for label in labels]
        ids += [writer.category(label, "\U0001f9d1") for label in ("Person", "person")]
    finally:
        writer.abort(None)
    assert ids == [COCO_CATEGORY_IDS["dining table"]] * 3 + [COCO_CATEGORY_IDS["person"]] * 2
    assert [(category["name"], category["id"]) for category in writer.categories.values()] == [
        ("dining table", COCO_CATEGORY_IDS["dining table"]), ("person", COCO_CATEGORY_IDS["person"])]


def test_two_labels_ids_do_not_depend_on_the_order_an_export_meets_them(tmp_path: Path) -> None:
    # These two drew one id under CRC-32 over a million ids, and the one met second took the next: two incremental
    # exports gave one id to different classes.
    from windmill.export.coco import CocoWriter

    found = []
    for labels in (["red suitcase", "red clock"], ["red clock", "red suitcase"]):
        writer = CocoWriter(tmp_path / "out.json", detectors=False)
        try:
            found.append({label: writer.category(label, "") for label in labels})
        finally:
            writer.abort(None)
    assert found[0] == found[1] and len(set(found[0].values())) == 2
    assert all(1000 <= category_id <= 2**31 - 1 for category_id in found[0].values())


def test_a_detector_writing_dining_table_scores_against_cocos_dining_table(conn, tmp_path: Path) -> None:
    # rtdetr's `dining table` is met first (the detectors' answers come in name order), then xception's `dining_table`:
    # it once went to a category of its own, with no ground truth to score against.
    from pycocotools.coco import COCO

    out = tmp_path / "windmill.json"
    with conn.transaction(force_rollback=True):
        for service, label in (("rtdetr", "dining table"), ("xception", "dining_table")):
            answer = {"predictions": [{"label": label, "emoji": "\U0001f37d", "confidence": 0.9,
                                       "bbox": {"x": 10, "y": 20, "width": 30, "height": 40}}]}
            conn.execute("INSERT INTO results (image_id, service, task_id, data, status) "
                         "VALUES (1, %s, gen_random_uuid(), %s, 'success')", (service, Jsonb(answer)))
        run_export(conn, "coco", out, detectors=True, services=("rtdetr", "xception"))
    truth = COCO(str(out))
    for service in ("rtdetr", "xception"):
        [found] = [result for result in json.loads(results_path(out, service).read_text()) if result["image_id"] == 1]
        assert found["category_id"] == COCO_CATEGORY_IDS["dining table"], service
        truth.loadRes(str(results_path(out, service)))
    assert truth.loadCats([COCO_CATEGORY_IDS["dining table"]])[0]["name"] == "dining table"
    names = [category["name"] for category in truth.dataset["categories"]]
    assert len(names) == len(set(names)) and "dining_table" not in names


def test_two_url_images_of_one_file_name_are_two_file_names(conn, tmp_path: Path) -> None:
    # Both were `ascent.jpg`: FiftyOne's COCO importer indexes images by file_name, and gave both samples one image's
    # boxes or stopped with a KeyError.
    from pycocotools.coco import COCO

    out = tmp_path / "windmill.json"
    urls = ["http://h.example.invalid/a/ascent.jpg", "http://h.example.invalid/b/ascent.jpg"]
    measured = Jsonb({"predictions": [{"dimensions": {"width": 640, "height": 480}}]})
    with conn.transaction(force_rollback=True):
        ids = [conn.execute("INSERT INTO images (image_filename, image_url, image_group) VALUES ('ascent.jpg', %s, "
                            "'urls') RETURNING image_id", (url,)).fetchone()[0] for url in urls]
        for image_id in ids:
            conn.execute("INSERT INTO results (image_id, service, task_id, data, status) "
                         "VALUES (%s, 'metadata', gen_random_uuid(), %s, 'success')", (image_id, measured))
        run_export(conn, "coco", out, group="urls")
    images = COCO(str(out)).loadImgs(ids)
    assert [(image["file_name"], image["coco_url"]) for image in images] == [(url, url) for url in urls]


def test_a_coco_export_removes_the_results_files_an_earlier_one_left_beside_it(conn, tmp_path: Path) -> None:
    # They stayed: loaded against the new file they passed for its detectors' boxes, or pycocotools refused them
    # ("Results do not correspond to current coco set").
    from pycocotools.coco import COCO

    out = tmp_path / "windmill.json"
    run_export(conn, "coco", out, detectors=True)
    assert sorted(tmp_path.iterdir()) == sorted([out, *(results_path(out, service) for service in DETECTORS)])
    report = run_export(conn, "coco", out, detectors=True, services=("yolov8",), group=SAMPLE_GROUP, after_id=3)
    assert sorted(tmp_path.iterdir()) == [out, results_path(out, "yolov8")]
    earlier = ", ".join(results_path(out, service).name for service in DETECTORS if service != "yolov8")
    assert report.notes[-1] == (f"removed {earlier}: an earlier export's results files beside windmill.json, which "
                                "this export did not write (they would not match it)")
    COCO(str(out)).loadRes(str(results_path(out, "yolov8")))
    report = run_export(conn, "coco", out)  # without --detectors: no results file belongs to it
    assert sorted(tmp_path.iterdir()) == [out]
    assert report.notes[-1].startswith(f"removed {results_path(out, 'yolov8').name}: ")
    assert "removed" not in " ".join(run_export(conn, "coco", out).notes)


def test_jsonl_has_one_line_per_image_with_its_latest_answers_boxes_and_consensus(conn, tmp_path: Path) -> None:
    out = tmp_path / "windmill.jsonl"
    run_export(conn, "jsonl", out)
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["image_id"] for line in lines] == [row[0] for row in conn.execute("SELECT image_id FROM images "
                                                                                  "ORDER BY image_id")]
    for line in lines:
        image_id = line["image_id"]
        services = [row[0] for row in conn.execute("SELECT DISTINCT service FROM results WHERE image_id = %s "
                                                   "ORDER BY 1", (image_id,))]
        assert sorted(line["answers"]) == services
        merged = [row[0] for row in conn.execute("SELECT merged_id FROM merged_boxes WHERE image_id = %s "
                                                 "ORDER BY merged_id", (image_id,))]
        assert [box["merged_id"] for box in line["boxes"]] == merged
        for box in line["boxes"]:
            colors = conn.execute("SELECT status, data FROM postprocessing WHERE merged_box_id = %s "
                                  "AND service = 'colors'", (box["merged_id"],)).fetchone()
            assert (box["colors"]["status"], box["colors"]["data"]) == tuple(colors)
            person = box["emoji"] == "🧑"
            assert (box["face"] is not None, box["pose"] is not None) == (person, person)
        stored = conn.execute("SELECT consensus_data FROM consensus WHERE image_id = %s", (image_id,)).fetchone()
        assert (line["consensus"] or {}).get("data") == (stored[0] if stored else None)
        scores = [row[0] for row in conn.execute("SELECT service FROM postprocessing WHERE image_id = %s AND "
                                                 "merged_box_id IS NULL ORDER BY 1", (image_id,))]
        assert sorted(line["caption_scores"]) == scores
    # The answer the boxes came from, not the failure that followed it; a service that only failed, as a failure.
    assert lines[0]["answers"]["yolov8"]["status"] == "success"
    [gone] = [line for line in lines if line["group"] == URL_GROUP]
    assert gone["answers"] == {"blip": {**gone["answers"]["blip"], "status": "error",
                                        "error": "blip: the image answered HTTP 404"}}
    assert gone["boxes"] == [] and gone["consensus"] is None and gone["width"] is None


def test_parquet_tables_hold_what_sql_holds(conn, tmp_path: Path) -> None:
    import pyarrow.dataset

    out = tmp_path / "windmill.parquet"
    run_export(conn, "parquet", out)

    def table(name: str) -> Any:
        return pyarrow.dataset.dataset(out / name, format="parquet").to_table()

    expected = {
        "images": "SELECT count(*) FROM images",
        "answers": "SELECT count(*) FROM (SELECT DISTINCT image_id, service FROM results) pairs",
        "boxes": "SELECT count(*) FROM merged_boxes",
        "postprocessing": "SELECT count(*) FROM postprocessing",
        "consensus": "SELECT count(*) FROM consensus",
    }
    for name, statement in expected.items():
        assert table(name).num_rows == scalar(conn, statement), name
    boxes = table("boxes").to_pylist()
    stored = dict(conn.execute("SELECT merged_id, merged_data FROM merged_boxes"))
    for box in boxes:
        data = stored[box["merged_id"]]
        assert json.loads(box["merged_data"]) == data
        assert (box["x"], box["y"], box["width"], box["height"]) == tuple(
            data["merged_bbox"][key] for key in ("x", "y", "width", "height"))
        assert box["contributing_services"] == data["contributing_services"]
    consensus = {row["image_id"]: row for row in table("consensus").to_pylist()}
    for image_id, data in conn.execute("SELECT image_id, consensus_data FROM consensus"):
        assert consensus[image_id]["top_emoji"] == data["votes"]["consensus"][0]["emoji"]
    created = table("images").column("created").type
    assert str(created) == "timestamp[us, tz=UTC]"


def test_csv_has_one_row_per_merged_box(conn, tmp_path: Path) -> None:
    out = tmp_path / "boxes.csv"
    run_export(conn, "csv", out)
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    stored = conn.execute("SELECT b.merged_id, b.image_id, i.image_filename, b.merged_data FROM merged_boxes b "
                          "JOIN images i USING (image_id) ORDER BY b.image_id, b.merged_id").fetchall()
    assert [(int(row["merged_id"]), int(row["image_id"]), row["file_name"]) for row in rows] == [
        (merged_id, image_id, name) for merged_id, image_id, name, _ in stored]
    for row, (_, _, _, data) in zip(rows, stored, strict=True):
        assert row["emoji"] == data["emoji"] and row["label"] in data["labels"]
        assert row["contributing_services"].split(";") == data["contributing_services"]
        assert row["primary_color"].startswith("#")


def test_a_csv_cell_that_would_be_a_spreadsheet_formula_is_written_as_text(conn, tmp_path: Path) -> None:
    # A label an ML service gave, or a file name someone chose, reached the CSV as it was: `=HYPERLINK(…)` opened
    # in a spreadsheet runs as a formula (OWASP's CSV injection).
    out = tmp_path / "boxes.csv"
    with conn.transaction(force_rollback=True):
        merged_id = scalar(conn, "SELECT min(merged_id) FROM merged_boxes")
        image_id = scalar(conn, "SELECT image_id FROM merged_boxes WHERE merged_id = %s", merged_id)
        conn.execute("UPDATE merged_boxes SET merged_data = jsonb_set(merged_data, '{detections}', "
                     "(SELECT jsonb_agg(d || '{\"label\": \"=HYPERLINK(\\\"http://evil\\\")\"}') "
                     "FROM jsonb_array_elements(merged_data->'detections') d)) WHERE merged_id = %s", (merged_id,))
        conn.execute("UPDATE images SET image_filename = '@SUM(1+1).jpg' WHERE image_id = %s", (image_id,))
        run_export(conn, "csv", out)
    with open(out, newline="", encoding="utf-8") as handle:
        row = next(row for row in csv.DictReader(handle) if int(row["merged_id"]) == merged_id)
    assert (row["label"], row["file_name"]) == ("'=HYPERLINK(\"http://evil\")", "'@SUM(1+1).jpg")
    assert all(not value.startswith(("=", "+", "-", "@")) for value in row.values())


# -- what is selected ------------------------------------------------------------------------------------------------


def exported_ids(path: Path) -> list[int]:
    return [json.loads(line)["image_id"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_group_since_after_id_and_services_select_what_sql_selects(conn, tmp_path: Path) -> None:
    out = tmp_path / "selected.jsonl"
    run_export(conn, "jsonl", out, group=URL_GROUP)
    assert exported_ids(out) == [row[0] for row in conn.execute("SELECT image_id FROM images WHERE image_group = %s",
                                                                (URL_GROUP,))]
    after = tmp_path / "after.jsonl"  # --after-id into an existing file would continue it
    run_export(conn, "jsonl", after, after_id=3)
    assert exported_ids(after) == [row[0] for row in conn.execute("SELECT image_id FROM images WHERE image_id > 3 "
                                                                "ORDER BY 1")]
    # --since: only images with something new since then; one new answer brings its image back.
    latest = scalar(conn, "SELECT greatest((SELECT max(result_created) FROM results), "
                          "(SELECT max(result_created) FROM postprocessing), "
                          "(SELECT max(consensus_created) FROM consensus), "
                          "(SELECT max(changed_at) FROM merged_images), (SELECT max(image_created) FROM images))")
    run_export(conn, "jsonl", out, since=latest + dt.timedelta(microseconds=1))
    assert exported_ids(out) == []
    before = scalar(conn, "SELECT now()")
    with conn.transaction(force_rollback=True):
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status) "
                     "VALUES (2, 'ocr', gen_random_uuid(), '{\"predictions\": []}', 'success')")
        run_export(conn, "jsonl", out, since=before)
        assert exported_ids(out) == [2]
    run_export(conn, "jsonl", out, group=SAMPLE_GROUP, services=("blip", "yolov8"))
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {service for line in lines for service in line["answers"]} == {"blip", "yolov8"}
    assert sum(len(line["boxes"]) for line in lines) == scalar(conn, "SELECT count(*) FROM merged_boxes")


def test_a_change_committing_during_an_export_is_in_the_next_one_from_the_since_it_names(
        conn, collection: Database, tmp_path: Path) -> None:
    # A change is dated by when its transaction began: one begun before an export and committed after the export
    # had read its image was in neither that export nor a next one `--since` its start.
    out = tmp_path / "stream.jsonl"
    with collection.connect() as writer:
        writer.autocommit = False
        writer.execute("INSERT INTO results (image_id, service, task_id, data, status) "
                       "VALUES (2, 'ocr', gen_random_uuid(), '{\"predictions\": []}', 'success')")
        report = run_export(conn, "jsonl", out, since=scalar(conn, "SELECT now()"))
        writer.commit()
    assert 2 not in exported_ids(out) and report.next_since is not None
    run_export(conn, "jsonl", out, since=report.next_since)
    assert 2 in exported_ids(out), "the change committed during the export"
    scalar(conn, "DELETE FROM results WHERE image_id = 2 AND service = 'ocr' AND result_created > %s RETURNING 1",
           report.next_since)


def test_parquet_ranges_ids_and_times_but_not_json_documents(conn, tmp_path: Path) -> None:
    """Min/max statistics where readers filter (ids, instants, numbers, names), none on JSON and messages: the
    writer holds each row group's statistics until the part closes, and a JSON document's range filters nothing."""
    import pyarrow.parquet

    out = tmp_path / "windmill.parquet"
    run_export(conn, "parquet", out)
    boxes = pyarrow.parquet.ParquetFile(next((out / "boxes").glob("part-*.parquet"))).metadata.row_group(0)
    ranged = {boxes.column(i).path_in_schema for i in range(boxes.num_columns) if boxes.column(i).is_stats_set}
    assert {"merged_id", "image_id", "label", "score", "created"} <= ranged
    assert not {"merged_data"} & ranged
    answers = pyarrow.parquet.ParquetFile(next((out / "answers").glob("part-*.parquet"))).metadata.row_group(0)
    assert {answers.column(i).path_in_schema: answers.column(i).is_stats_set for i in range(answers.num_columns)} == {
        "result_id": True, "image_id": True, "service": True, "status": True, "error_message": False,
        "processing_time": True, "created": True, "worker_id": True, "data": False}


# -- stopping and continuing -----------------------------------------------------------------------------------------


class StopAfterPages(ExportStop):
    def __init__(self, pages: int) -> None:
        super().__init__()
        self.pages = pages

    def progress(self, images: int) -> None:
        self.pages -= 1
        if self.pages == 0:
            self.request_stop()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_a_stopped_export_continues_with_after_id_into_the_same_output(conn, tmp_path: Path, fmt: str) -> None:
    whole, parts = tmp_path / f"whole.{fmt}", tmp_path / f"parts.{fmt}"
    run_export(conn, fmt, whole, page_size=2)
    stop = StopAfterPages(2)
    with pytest.raises(ExportStopped, match=r"holds every image up to id 4; continue with --after-id 4"):
        export(conn, ExportRequest(fmt, parts, Selection()), progress=stop.progress, stop=stop, page_size=2)
    if fmt != "parquet":
        with open(parts, "ab") as handle:
            handle.write(b'{"image_id": 5, "half a li')  # what a crash in the middle of a page leaves
    with pytest.raises(WindmillError, match=r"already holds image(s up to)? 4, after --after-id 3; continue with "
                                            r"--after-id 4"):
        run_export(conn, fmt, parts, after_id=3, page_size=2)
    run_export(conn, fmt, parts, after_id=4, page_size=2)
    assert_same_output(fmt, whole, parts)
    if fmt == "parquet":
        assert len(list((parts / "images").glob("part-*.parquet"))) == 2


def assert_same_output(fmt: str, whole: Path, parts: Path) -> None:
    """An export continued into `parts` holds what the uninterrupted one, `whole`, does."""
    if fmt == "parquet":
        import pyarrow.dataset

        for table in ("images", "answers", "boxes", "postprocessing", "consensus"):
            read = [pyarrow.dataset.dataset(folder / table, format="parquet").to_table().sort_by(
                [(pyarrow.dataset.dataset(folder / table).schema.names[0], "ascending")]).to_pylist()
                for folder in (whole, parts)]
            assert read[0] == read[1], table
    else:
        assert parts.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_after_id_past_the_end_of_the_output_is_refused_with_the_id_to_use(conn, tmp_path: Path, fmt: str) -> None:
    # `head -500 big.jsonl > gap.jsonl; export --out gap.jsonl --after-id 1000` left images 501…1000 out without a
    # word. A csv file has rows for boxes only: it ends at the last image with a box, and images without one after it
    # are no gap.
    whole, parts = tmp_path / f"whole.{fmt}", tmp_path / f"parts.{fmt}"
    run_export(conn, fmt, whole, page_size=2)
    stop = StopAfterPages(1)
    with pytest.raises(ExportStopped, match=r"continue with --after-id 2$"):
        export(conn, ExportRequest(fmt, parts, Selection()), progress=stop.progress, stop=stop, page_size=2)
    boxes = "EXISTS (SELECT 1 FROM merged_boxes b WHERE b.image_id = i.image_id)" if fmt == "csv" else "true"
    ends_at = scalar(conn, f"SELECT max(image_id) FROM images i WHERE image_id <= 2 AND {boxes}")
    missing = scalar(conn, f"SELECT min(image_id) FROM images i WHERE image_id > %s AND {boxes}", ends_at)
    last = scalar(conn, "SELECT max(image_id) FROM images")
    for after_id in (missing, last):
        with pytest.raises(WindmillError, match=rf"ends at image {ends_at}: --after-id {after_id} would leave out "
                                                rf"image {missing} \(.*\); continue with --after-id {ends_at}$"):
            run_export(conn, fmt, parts, after_id=after_id, page_size=2)
    run_export(conn, fmt, parts, after_id=ends_at, page_size=2)
    assert_same_output(fmt, whole, parts)
    # Whole now: after its last image (for csv the last with a box; the URL image after it has none) nothing is left
    # out, and nothing is written.
    if fmt == "csv":
        assert scalar(conn, "SELECT NOT EXISTS (SELECT 1 FROM merged_boxes WHERE image_id = %s)", last)
    run_export(conn, fmt, parts, after_id=last, page_size=2)
    assert_same_output(fmt, whole, parts)


def put_a_newline_in_a_path(conn: psycopg.Connection) -> tuple[int, int]:
    """(J, K), in the caller's transaction: image K, of two boxes or more, has a newline and quotes in its path, so its
    CSV records hold a quoted field across two lines, its quotes doubled; J is the image with boxes before it."""
    image_id = scalar(conn, "SELECT max(image_id) FROM (SELECT image_id FROM merged_boxes GROUP BY image_id "
                            "HAVING count(*) >= 2) many")
    before = scalar(conn, "SELECT max(image_id) FROM merged_boxes WHERE image_id < %s", image_id)
    assert before > 1  # (--after-id 0 is no continuation)
    conn.execute("""UPDATE images SET image_path = image_path || E'\\n"second" line' WHERE image_id = %s""",
                 (image_id,))
    return before, image_id


def test_a_csv_export_continues_after_a_page_whose_last_record_holds_a_newline(conn, tmp_path: Path) -> None:
    # The file's tail was read line by line: the last record's second line is no record, and the export refused to
    # continue ("does not end with a line of this format").
    whole, parts = tmp_path / "whole.csv", tmp_path / "parts.csv"
    with conn.transaction(force_rollback=True):
        _, image_id = put_a_newline_in_a_path(conn)
        run_export(conn, "csv", whole)
        stop = StopAfterPages(1)
        with pytest.raises(ExportStopped, match=rf"continue with --after-id {image_id}$"):
            export(conn, ExportRequest("csv", parts, Selection()), progress=stop.progress, stop=stop,
                   page_size=image_id)
        assert parts.read_bytes().splitlines()[-1].startswith(b'""second"" line')  # the last record's second line
        run_export(conn, "csv", parts, after_id=image_id)
    assert parts.read_bytes() == whole.read_bytes()


def test_a_csv_file_cut_after_a_newline_in_a_quoted_field_goes_back_to_the_last_whole_record(conn,
                                                                                            tmp_path: Path) -> None:
    # Cut after the newline inside image K's quoted path, the file's last "line" was the start of K's record: K was
    # named the last image, and the continued file held a broken record.
    whole, kept = tmp_path / "whole.csv", tmp_path / "kept.csv"
    with conn.transaction(force_rollback=True):
        before, image_id = put_a_newline_in_a_path(conn)
        run_export(conn, "csv", whole)
        data = whole.read_bytes()
        first_row = data.index(b"\n%d," % image_id) + 1
        end = data.index(b"\n", first_row) + 1
        path = scalar(conn, "SELECT image_path FROM images WHERE image_id = %s", image_id)
        assert data[first_row:end].endswith(b'"' + path.split("\n")[0].encode() + b"\n")
        kept.write_bytes(data[:end])
        with pytest.raises(WindmillError, match=rf"already holds image(s up to)? {before}, after --after-id "
                                                rf"{before - 1}; continue with --after-id {before}$"):
            run_export(conn, "csv", kept, after_id=before - 1)
        run_export(conn, "csv", kept, after_id=before)
    assert kept.read_bytes() == data


def test_a_csv_file_cut_in_an_images_second_row_goes_back_to_the_image_before(conn, tmp_path: Path) -> None:
    # An image has a row per box: cut in image K's second row, K's first row was taken for the whole image, --after-id
    # K was the id to use, and K's other rows never came.
    whole, kept = tmp_path / "whole.csv", tmp_path / "kept.csv"
    image_id = scalar(conn, "SELECT max(image_id) FROM (SELECT image_id FROM merged_boxes GROUP BY image_id "
                            "HAVING count(*) >= 2) many")
    before = scalar(conn, "SELECT max(image_id) FROM merged_boxes WHERE image_id < %s", image_id)
    run_export(conn, "csv", whole)
    data = whole.read_bytes()
    second_row = data.index(b"\n%d," % image_id, data.index(b"\n%d," % image_id) + 1) + 1
    kept.write_bytes(data[:data.index(b",", second_row) + 4])  # the image id whole, and a little more
    with pytest.raises(WindmillError, match=rf"ends at image {before}: --after-id {image_id} would leave out image "
                                            rf"{image_id} \(.*\); continue with --after-id {before}$"):
        run_export(conn, "csv", kept, after_id=image_id)
    run_export(conn, "csv", kept, after_id=before)
    assert kept.read_bytes() == data


def test_a_stopped_coco_export_writes_nothing(conn, tmp_path: Path) -> None:
    out = tmp_path / "windmill.json"
    stop = StopAfterPages(1)
    with pytest.raises(ExportStopped, match="nothing was written"):
        export(conn, ExportRequest("coco", out, Selection(), detectors=True), progress=stop.progress, stop=stop,
               page_size=2)
    assert list(tmp_path.iterdir()) == []


READER = "windmill_export_reader"


@pytest.fixture
def monitor_conn(collection: Database, database_url: str) -> Iterator[psycopg.Connection]:
    """A connection as a login that is a member of windmill_monitor (deploy/roles.sql), the dashboard's and the
    exporter's least privilege."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute((REPOSITORY / "deploy" / "roles.sql").read_text(encoding="utf-8"))
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (READER,)).fetchone() is None:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(READER)))
        admin.execute(sql.SQL("GRANT windmill_monitor TO {}").format(sql.Identifier(READER)))
        try:
            with Database(make_conninfo(database_url, user=READER)).connect() as conn:
                yield conn
        finally:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(READER)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(READER)))


def test_the_monitor_login_exports_the_detectors_answers_too(conn, monitor_conn, tmp_path: Path) -> None:
    # It reads no `services` table: the detectors are named by a view (sql/0119); it once failed with "permission
    # denied for table services".
    out = tmp_path / "windmill.json"
    run_export(monitor_conn, "coco", out, detectors=True)
    written = sorted(path.name for path in tmp_path.glob("windmill.*.results.json"))
    assert written == [f"windmill.{name}.results.json" for name in DETECTORS]
    assert json.loads(results_path(out, "yolov8").read_text())  # with the detections


# A file may grow only so far (RLIMIT_FSIZE, with SIGXFSZ ignored: the write fails with EFBIG, as on a full disk),
# in a process of its own, exporting a page of 2 images at a time. It prints the ExportStopped message.
FULL_DISK = """
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
fmt, out, url, limit = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
from windmill.db.connect import Database
from windmill.export import ExportRequest, ExportStopped, Selection, export
with Database(url).connect() as conn:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        export(conn, ExportRequest(fmt, out, Selection()), page_size=2)
    except ExportStopped as stopped:
        print(stopped)
"""


def export_until_the_disk_is_full(database_url: str, fmt: str, out: Path, limit: int) -> str:
    done = subprocess.run([PYTHON, "-c", FULL_DISK, fmt, str(out), database_url, str(limit)], capture_output=True,
                          text=True, timeout=120, cwd=REPOSITORY)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    return done.stdout.strip()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_full_disk_leaves_the_line_formats_ending_at_the_last_whole_page(conn, database_url: str, tmp_path: Path,
                                                                          fmt: str) -> None:
    whole, cut = tmp_path / f"whole.{fmt}", tmp_path / f"cut.{fmt}"
    run_export(conn, fmt, whole, page_size=2)
    said = export_until_the_disk_is_full(database_url, fmt, cut, whole.stat().st_size - 1)  # in the last page
    found = re.fullmatch(rf"export stopped \(File too large\): {re.escape(str(cut))} holds every image up to id "
                         r"(\d+); continue with --after-id (\d+)", said)
    assert found and found.group(1) == found.group(2), said
    kept = cut.read_bytes()
    assert whole.read_bytes().startswith(kept) and kept.endswith(b"\n")  # whole lines of whole pages, nothing more
    run_export(conn, fmt, cut, after_id=int(found.group(1)), page_size=2)
    assert cut.read_bytes() == whole.read_bytes()


@pytest.mark.parametrize("fmt", ["parquet", "coco"])
def test_a_full_disk_leaves_no_parquet_part_or_coco_file_cut_short(conn, database_url: str, tmp_path: Path,
                                                                   fmt: str) -> None:
    # Parquet: the only part is cut in the middle of a page (its tables are written one after another); COCO: the
    # document is never whole. Neither can be trimmed to whole pages, so nothing is left, hidden files included.
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_export(conn, fmt, whole, page_size=2)
    largest = max(path.stat().st_size for path in ([whole] if whole.is_file() else whole.rglob("*.parquet")))
    said = export_until_the_disk_is_full(database_url, fmt, cut, largest // 2)
    assert said.startswith("export stopped (") and "File too large" in said, said
    assert said.endswith(f"); nothing was written to {cut}"), said
    left = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file()
                  and not path.is_relative_to(whole))
    assert left == []


def test_a_disk_full_before_a_parquet_part_has_its_first_bytes_leaves_nothing(database_url: str,
                                                                              tmp_path: Path) -> None:
    # Opening a part's files writes their first bytes: failing there once published empty parts and named an
    # --after-id past an image no part held.
    cut = tmp_path / "cut"
    said = export_until_the_disk_is_full(database_url, "parquet", cut, 2)
    assert said.startswith("export stopped (") and said.endswith(f"); nothing was written to {cut}"), said
    assert [path for path in cut.rglob("*") if path.is_file()] == []


# -- the command -----------------------------------------------------------------------------------------------------


@pytest.fixture
def cli(collection: Database, database_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WINDMILL_DATABASE_URL", database_url)
    monkeypatch.setenv("WINDMILL_HOME", str(tmp_path / "home"))

    def invoke(*args: str) -> Any:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_the_command_exports_with_a_progress_bar_and_refuses_bad_requests_in_one_sentence(cli, conn,
                                                                                           tmp_path: Path) -> None:
    result = cli("export", "--format", "csv", "--out", "boxes.csv", "--group", SAMPLE_GROUP)
    assert result.exit_code == 0, result.output
    images = scalar(conn, "SELECT count(*) FROM images WHERE image_group = %s", SAMPLE_GROUP)
    assert f"Exported {images} image(s)" in result.stdout and "Exporting" in result.stderr
    # A group no image is in exports an empty file, as asked, and says the name may be mistyped.
    mistyped = cli("export", "--format", "csv", "--out", "none.csv", "--group", SAMPLE_GROUP[:-1])
    assert mistyped.exit_code == 0 and "Exported 0 image(s)" in mistyped.stdout
    assert f"Warning: no image is in group {SAMPLE_GROUP[:-1]!r}; did you mean {SAMPLE_GROUP!r}?" in mistyped.stderr
    assert "Warning" not in cli("export", "--format", "csv", "--out", "none.csv", "--group", SAMPLE_GROUP,
                                "--since", "2999-01-01T00:00Z").stderr, "a group with nothing new is no typo"
    for args, message in [
        (("--format", "jsonl", "--detectors"), "--detectors adds COCO results files: use it with --format coco"),
        (("--format", "csv", "--services", "blip"), "the csv format holds merged boxes only"),
        (("--format", "jsonl", "--services", "nonsense"), "unknown service"),
        (("--format", "jsonl", "--since", "yesterday"), "--since takes an ISO 8601 instant"),
        (("--format", "coco", "--detectors", "--services", "metadata"),  # once wrote no results file, saying nothing
         "--services metadata names no detector, so --detectors would add no results file; the detectors are "),
    ]:
        result = cli("export", "--out", "x.out", *args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    # An --out of the wrong kind is refused before anything is written; coco wrote its parts beside it and failed
    # with a traceback at the end, leaving them there.
    folder = tmp_path / "exports"
    folder.mkdir()
    (folder / "boxes.csv").write_text("")
    for args, message in [
        (("--format", "coco", "--out", str(folder)), f"{folder} is a directory: give the coco file to write, "
                                                     f"e.g. {folder / 'collection.json'}"),
        (("--format", "parquet", "--out", str(folder / "boxes.csv")), "is a file, and parquet writes a directory"),
    ]:
        result = cli("export", *args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".exports")]
    # An id past PostgreSQL's bigint is an option's bad value (it once reached the server, whose answer advised
    # running init-db).
    beyond = cli("export", "--format", "jsonl", "--out", "x.out", "--after-id", str(2**63))
    assert beyond.exit_code == 2 and "is not in the range 0<=x<=9223372036854775807" in beyond.output


def test_out_dash_writes_to_standard_output_for_a_pipe(cli, conn, tmp_path: Path) -> None:
    """`export --out - | jq`: the line formats and COCO go to standard output and the summary to stderr; a file
    named '-' was written before. Formats that write several files are refused."""
    images = scalar(conn, "SELECT count(*) FROM images")
    lines = cli("export", "--format", "jsonl", "--out", "-")
    assert lines.exit_code == 0, lines.output
    assert [json.loads(line)["image_id"] for line in lines.stdout.splitlines()] == [
        row[0] for row in conn.execute("SELECT image_id FROM images ORDER BY image_id")]
    assert f"Exported {images} image(s)" in lines.stderr and "to standard output" in lines.stderr
    assert cli("-q", "export", "--format", "jsonl", "--out", "-").stderr == "", "-q: stderr for warnings and errors"
    rows = cli("export", "--format", "csv", "--out", "-", "--after-id", "1").stdout.splitlines()
    assert rows[0].startswith("image_id,") and len(rows) - 1 == scalar(
        conn, "SELECT count(*) FROM merged_boxes WHERE image_id > 1")
    document = json.loads(cli("export", "--format", "coco", "--out", "-").stdout)
    assert len(document["images"]) == scalar(conn, "SELECT count(*) FROM results WHERE service = 'metadata' "
                                                   "AND status = 'success'")
    assert len(document["annotations"]) == scalar(conn, "SELECT count(*) FROM merged_boxes")
    for args, message in [(("--format", "parquet"), "parquet writes a directory of tables, which standard output"),
                          (("--format", "coco", "--detectors"), "--detectors writes a results file per detector")]:
        refused = cli("export", "--out", "-", *args)
        assert refused.exit_code == 1 and message in refused.output, (args, refused.output)
    assert not (tmp_path / "-").exists()


def test_a_coco_category_carries_its_emoji_without_presentation_selectors(tmp_path: Path) -> None:
    from windmill.export.coco import CocoWriter

    writer = CocoWriter(tmp_path / "out.json", detectors=False)
    try:
        writer.category("plate", "\U0001f37d\ufe0f")  # 🍽️, as one detector writes it
        writer.category("dining table", "\U0001f37d")  # 🍽
    finally:
        writer.finish()
    assert {category["emoji"] for category in writer.categories.values()} == {"\U0001f37d"}
