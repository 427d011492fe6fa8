"""The whole pipeline over real HTTP and real queues: progressive harmonization, postprocessing of new boxes
only, consensus equal to a one-shot recompute, caption scores replaced, concurrent mergers."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, wait_until
from tests.farm_fixtures import running_farm
from windmill.broker import JobTableBroker, Task
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.db.jsonb import as_stored
from windmill.emoji import PERSON
from windmill.farm import FarmClient
from windmill.harmony import DetectorResult, harmonize
from windmill.image_cache import ImageSource
from windmill.jobs import Job, JobQueue
from windmill.producer import submit
from windmill.roles.consensus import consensus_for_image
from windmill.roles.merger import crop_key, merge_image
from windmill.roles.postprocess import PostprocessHandler
from windmill.roles.registry import RoleContext
from windmill.roles.service import ServiceTaskHandler
from windmill.settings import settings_from_mapping
from windmill.worker.group import WorkerGroup, pipeline_idle
from windmill.worker.layout import RoleSpec
from windmill.worker.runtime import WorkerOptions

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
SETTINGS = settings_from_mapping({"WORKER_ID": "pipeline-test"})
PRODUCTS = (RoleSpec("merger", concurrency=2), RoleSpec("postprocess", "colors,face,pose", concurrency=4),
            RoleSpec("consensus", concurrency=2), RoleSpec("caption_score", concurrency=2))


@pytest.fixture
def farm_catalog(catalog: Catalog) -> Iterator[Catalog]:
    with running_farm(catalog) as (_, shifted):
        yield shifted


def run_group(database: Database, pool: ConnectionPool, catalog: Catalog, specs) -> None:
    """Run the given roles until none of their queues holds work."""
    jobs = JobQueue(pool, retry_base_s=0.05)
    group = WorkerGroup(SETTINGS, database, pool, catalog, specs, jobs=jobs, options=WorkerOptions(poll_interval_s=0.1))
    queues = [queue for worker in group.workers for queue in worker.role.queues]
    with group:
        wait_until(lambda: pipeline_idle(pool, queues), timeout=120, interval=0.1, message="the pipeline to go idle")


def answer(pool: ConnectionPool, catalog: Catalog, conn: psycopg.Connection, image_id: int, service: str) -> None:
    """One service's answer for one image, stored as the service role stores it."""
    image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images WHERE image_id = %s",
                         (image_id,)).fetchone()
    task = Task.for_image(dict(zip(("image_id", "image_filename", "image_path", "image_url"), image, strict=True)),
                          catalog[service])
    with FarmClient(catalog) as client:
        ServiceTaskHandler(pool, client, ImageSource(SETTINGS), catalog, "test").handle(task, final_attempt=True)


def image_id_of(conn: psycopg.Connection, name: str) -> int:
    return conn.execute("SELECT image_id FROM images WHERE image_filename = %s", (name,)).fetchone()[0]


def stored_boxes(conn: psycopg.Connection, image_id: int) -> dict[str, int]:
    return dict(conn.execute("SELECT crop_key, merged_id FROM merged_boxes WHERE image_id = %s", (image_id,)))


def expected_keys(conn: psycopg.Connection, image_id: int) -> set[str]:
    rows = conn.execute("""SELECT DISTINCT ON (service) result_id, service, data FROM results
                            WHERE image_id = %s AND status = 'success'
                              AND service IN ('yolov8', 'rtdetr', 'detectron2', 'clip', 'xception')
                            ORDER BY service, result_created DESC""", (image_id,)).fetchall()
    return {crop_key(box) for box in harmonize([DetectorResult(*row) for row in rows], SETTINGS.harmony)}


def test_the_whole_pipeline_end_to_end(database: Database, pool: ConnectionPool, conn: psycopg.Connection,
                                      farm_catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES])
    with database.connect() as reader:
        submit(reader, conn, JobTableBroker(JobQueue(pool)), farm_catalog.select("primary"))
    run_group(database, pool, farm_catalog, (RoleSpec("service", "primary", concurrency=8), *PRODUCTS))

    images = [row[0] for row in conn.execute("SELECT image_id FROM images ORDER BY image_id")]
    assert conn.execute("SELECT count(*) FROM results WHERE status = 'success'").fetchone()[0] == 11 * len(images)
    service_types = {service.name: service.service_type for service in farm_catalog.services}
    for image_id in images:
        # Boxes equal a fresh harmonization of the final answers; consensus equals a one-shot recompute.
        assert set(stored_boxes(conn, image_id)) == expected_keys(conn, image_id)
        stored = conn.execute("SELECT consensus_data FROM consensus WHERE image_id = %s", (image_id,)).fetchone()[0]
        assert stored == consensus_for_image(conn, image_id, service_types)
    # Every box has its colors; every person box its face and pose; none belongs to a vanished box.
    missing = conn.execute("""
        SELECT mb.merged_id, s.service FROM merged_boxes mb
          CROSS JOIN (VALUES ('colors'), ('face'), ('pose')) AS s(service)
         WHERE (s.service = 'colors' OR mb.merged_data->>'emoji' = %s)
           AND NOT EXISTS (SELECT 1 FROM postprocessing p
                            WHERE p.merged_box_id = mb.merged_id AND p.service = s.service)""", (PERSON,)).fetchall()
    assert missing == []
    assert conn.execute("SELECT count(*) FROM merged_boxes").fetchone()[0] > len(images)
    people = conn.execute("SELECT count(*) FROM postprocessing WHERE service = 'face'").fetchone()[0]
    assert people >= 3
    scores = conn.execute("SELECT service, count(*) FROM postprocessing WHERE service LIKE 'caption_score%%' "
                          "GROUP BY service ORDER BY service").fetchall()
    assert scores == [("caption_score_blip", len(images)), ("caption_score_ollama", len(images))]
    # A person's face, found in the crop, is reported in image coordinates inside the person's box.
    face, box = conn.execute("""SELECT p.data, mb.merged_data FROM postprocessing p
                                  JOIN merged_boxes mb ON mb.merged_id = p.merged_box_id
                                 WHERE p.service = 'face' AND p.status = 'success' LIMIT 1""").fetchone()
    inside, outer = face["predictions"][0]["bbox"], box["merged_bbox"]
    assert outer["x"] <= inside["x"] and inside["x"] + inside["width"] <= outer["x"] + outer["width"] + 1
    assert outer["y"] <= inside["y"] and inside["y"] + inside["height"] <= outer["y"] + outer["height"] + 1
    assert face["raw"]["predictions"][0]["bbox"] != inside or (outer["x"], outer["y"]) == (0, 0)


def test_boxes_are_right_after_each_detector_and_only_new_boxes_are_postprocessed(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, farm_catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "ascent.jpg"])
    image_id = image_id_of(conn, "ascent.jpg")
    previous: dict[str, int] = {}
    with FarmClient(farm_catalog) as farm:
        images = ImageSource(SETTINGS)
        context = RoleContext(settings=SETTINGS, database=database, pool=pool, jobs=JobQueue(pool),
                              catalog=farm_catalog, worker_id="test", farm=farm, images=images)
        colors = PostprocessHandler(context, farm, images)
        for detector in ("yolov8", "rtdetr", "detectron2", "clip", "xception"):
            answer(pool, farm_catalog, conn, image_id, detector)
            merge_image(conn, image_id, SETTINGS.harmony, "test")
            boxes = stored_boxes(conn, image_id)
            assert set(boxes) == expected_keys(conn, image_id), f"after {detector}"
            # A box whose crop did not change keeps its row; only new boxes get their image's colors job queued,
            # and the job sends only them.
            for key in set(boxes) & set(previous):
                assert boxes[key] == previous[key]
            new_boxes = set(boxes.values()) - set(previous.values())
            queued = conn.execute("DELETE FROM jobs WHERE queue = 'postprocess_colors' RETURNING id").fetchall()
            assert len(queued) == (1 if new_boxes else 0), f"after {detector}"
            sent = colors.handle(Job(1, "postprocess_colors", {"image_id": image_id}, image_id, 1, 5), "colors")
            assert len(sent) == len(new_boxes), f"after {detector}"
            previous = boxes
    assert len(previous) >= 2, "two people on the stairs"


def test_a_merge_without_new_answers_writes_no_box_and_queues_nothing(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, farm_catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "astronaut.jpg"])
    image_id = image_id_of(conn, "astronaut.jpg")
    for detector in ("yolov8", "rtdetr"):
        answer(pool, farm_catalog, conn, image_id, detector)
    merge_image(conn, image_id, SETTINGS.harmony, "test")
    boxes = "SELECT merged_id, merged_data, created FROM merged_boxes WHERE image_id = %s ORDER BY merged_id"
    before = conn.execute(boxes, (image_id,)).fetchall()
    changed_at = "SELECT changed_at FROM merged_images WHERE image_id = %s"
    first_change = conn.execute(changed_at, (image_id,)).fetchone()[0]
    jobs = conn.execute("SELECT count(*) FROM jobs WHERE queue LIKE 'postprocess\\_%%'").fetchone()[0]
    # The comparison that spares the UPDATE of an unchanged box: a recomputed box equals its stored row.
    rows = conn.execute("SELECT result_id, service, data FROM results WHERE image_id = %s", (image_id,)).fetchall()
    recomputed = harmonize([DetectorResult(*row) for row in rows], SETTINGS.harmony)
    stored = [data for _, data, _ in before]
    assert len(recomputed) == len(stored) and all(as_stored(box.to_merged_data()) in stored for box in recomputed)

    outcome = merge_image(conn, image_id, SETTINGS.harmony, "test")

    assert outcome.inserted == [] and outcome.deleted == 0 and outcome.kept == len(before) > 0
    assert conn.execute(boxes, (image_id,)).fetchall() == before  # same rows, same data, not even touched
    assert conn.execute(changed_at, (image_id,)).fetchone()[0] == first_change
    assert conn.execute("SELECT count(*) FROM jobs WHERE queue LIKE 'postprocess\\_%%'").fetchone()[0] == jobs


def test_an_image_without_detections_is_a_success_with_no_boxes(database: Database, pool: ConnectionPool,
                                                               conn: psycopg.Connection, farm_catalog: Catalog,
                                                               tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), "blue").save(tmp_path / "plain.png")
    add_paths(conn, [tmp_path / "plain.png"])
    image_id = image_id_of(conn, "plain.png")
    answer(pool, farm_catalog, conn, image_id, "yolov8")
    outcome = merge_image(conn, image_id, SETTINGS.harmony, "test")
    assert (outcome.boxes, stored_boxes(conn, image_id)) == (0, {})


def test_postprocessing_of_a_vanished_box_ends_cleanly(database: Database, pool: ConnectionPool,
                                                      conn: psycopg.Connection, farm_catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    image_id = image_id_of(conn, "chelsea.jpg")
    for detector in ("yolov8", "rtdetr"):
        answer(pool, farm_catalog, conn, image_id, detector)
    merge_image(conn, image_id, SETTINGS.harmony, "test")
    conn.execute("DELETE FROM merged_boxes WHERE image_id = %s", (image_id,))
    run_group(database, pool, farm_catalog, (RoleSpec("postprocess", "colors,face,pose"),))
    states = {row[0] for row in conn.execute("SELECT state::text FROM jobs WHERE queue LIKE 'postprocess\\_%%'")}
    assert states == {"done"}
    assert conn.execute("SELECT count(*) FROM postprocessing").fetchone()[0] == 0


def test_caption_scores_are_replaced_not_piled_up(database: Database, pool: ConnectionPool,
                                                 conn: psycopg.Connection, farm_catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "coffee.jpg"])
    image_id = image_id_of(conn, "coffee.jpg")
    for _ in range(2):
        answer(pool, farm_catalog, conn, image_id, "blip")
        run_group(database, pool, farm_catalog, (RoleSpec("caption_score"),))
    rows = conn.execute("SELECT status, data FROM postprocessing WHERE service = 'caption_score_blip'").fetchall()
    assert len(rows) == 1
    status, data = rows[0]
    latest = conn.execute("SELECT max(result_id) FROM results WHERE service = 'blip'").fetchone()[0]
    assert status == "success" and data["source_result_id"] == latest
    assert -1 <= data["similarity_score"] <= 1 and data["caption"]
    # The first Windmill's shape (reference-behaviour.md §9) is kept beside ours.
    assert data["caption_score"] == {"service": "blip", "caption": data["caption"], "original_confidence": 1.0,
                                     "similarity_score": data["similarity_score"],
                                     "scored_at": data["caption_score"]["scored_at"]}
    assert data["processing_algorithm"] == "clip_similarity_v1"
    assert data["processed_at"] == data["caption_score"]["scored_at"]


def test_concurrent_mergers_with_duplicated_jobs_leave_one_box_set(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, farm_catalog: Catalog,
        worker_env: dict[str, str]) -> None:
    add_paths(conn, [SAMPLES])
    images = [row[0] for row in conn.execute("SELECT image_id FROM images")]
    for image_id in images:
        for detector in ("yolov8", "rtdetr", "detectron2"):
            answer(pool, farm_catalog, conn, image_id, detector)
    conn.execute("DELETE FROM jobs")
    # Every merge job twelve times over, without dedupe keys, for 4 processes at once.
    conn.execute("""INSERT INTO jobs (queue, image_id, payload)
                    SELECT 'merge', image_id, jsonb_build_object('image_id', image_id)
                      FROM images, generate_series(1, 12)""")
    processes = [subprocess.Popen([PYTHON, "-m", "windmill", "worker", "--role", "merger", "--concurrency", "4"],
                                  env={**worker_env, "WORKER_ID": f"merger-{n}"}, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for n in range(4)]
    try:
        wait_until(lambda: pipeline_idle(pool, ["merge"]), timeout=60, message="all merge jobs")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
    for image_id in images:
        keys = [row[0] for row in conn.execute("SELECT crop_key FROM merged_boxes WHERE image_id = %s", (image_id,))]
        assert len(keys) == len(set(keys))
        assert set(keys) == expected_keys(conn, image_id)
    assert conn.execute("SELECT count(DISTINCT worker_id) FROM merged_boxes").fetchone()[0] >= 1


def test_a_merge_reads_only_the_latest_answer_of_each_detector(pool: ConnectionPool, conn: psycopg.Connection,
                                                              database: Database) -> None:
    image_id = conn.execute("INSERT INTO images (image_filename, image_path) VALUES ('x.jpg', '/x.jpg') "
                            "RETURNING image_id").fetchone()[0]
    box = {"label": "dog", "emoji": "🐕", "confidence": 0.9, "bbox": {"x": 10, "y": 10, "width": 50, "height": 50}}
    moved = {**box, "bbox": {"x": 200, "y": 200, "width": 50, "height": 50}}
    for service, prediction in (("yolov8", box), ("rtdetr", box), ("yolov8", moved), ("rtdetr", moved)):
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, %s, %s, %s, "
                     "'success')", (image_id, service, uuid.uuid4(), Jsonb({"predictions": [prediction]})))
    merge_image(conn, image_id, SETTINGS.harmony, "test")
    [(data,)] = conn.execute("SELECT merged_data FROM merged_boxes WHERE image_id = %s", (image_id,)).fetchall()
    assert data["merged_bbox"] == {"x": 200, "y": 200, "width": 50, "height": 50}
    assert data["detection_count"] == 2
