"""backfill(): each rule on rows written by hand, then a real run broken on purpose — backfill queues exactly the
repairs, the pipeline's roles carry them out, and a second backfill finds nothing left to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from tests.test_monitoring import add_box, add_image, add_job, add_postprocessing, add_result
from windmill.broker import JobTableBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.emoji import PERSON
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.roles.scheduler import run_backfill
from windmill.settings import settings_from_mapping
from windmill.worker.group import WorkerGroup, pipeline_idle
from windmill.worker.layout import SINGLE_MACHINE
from windmill.worker.runtime import WorkerOptions

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"


def queued_jobs(conn: psycopg.Connection) -> list[tuple[str, int | None, Any, str | None]]:
    return conn.execute("SELECT queue, image_id, payload, dedupe_key FROM jobs WHERE state = 'queued' "
                        "ORDER BY queue, image_id, dedupe_key").fetchall()


def lose_jobs(conn: psycopg.Connection) -> None:
    """What the triggers queued disappears: the situation backfill exists for."""
    conn.execute("DELETE FROM jobs")


# -- each rule -------------------------------------------------------------------------------------------------------


def test_nothing_to_do_on_an_empty_database(conn: psycopg.Connection) -> None:
    assert run_backfill(conn) == {}


def test_an_answer_of_any_service_needs_a_consensus_that_lists_it(conn: psycopg.Connection) -> None:
    # The vote lists every answering service with its time: even a metadata answer makes the consensus stale
    # (the reference's enable_consensus_triggers: false left such answers out for good).
    image = add_image(conn, "a.jpg")
    add_result(conn, image, "metadata")
    lose_jobs(conn)
    assert run_backfill(conn) == {"consensus": 1}


def test_merge_for_a_detector_answer_newer_than_the_boxes_or_never_merged(conn: psycopg.Connection) -> None:
    never, stale, fresh = add_image(conn, "a.jpg"), add_image(conn, "b.jpg"), add_image(conn, "c.jpg")
    for image in (never, stale, fresh):
        add_result(conn, image, "yolov8", seconds_ago=60)
    conn.execute("""INSERT INTO merged_images (image_id, boxes, source_result_ids, merged_at, changed_at)
                    VALUES (%s, 0, '{}', now() - interval '2 minutes', now() - interval '2 minutes'),
                           (%s, 0, '{}', now(), now() - interval '2 minutes')""", (stale, fresh))
    conn.execute("INSERT INTO consensus (image_id, consensus_data) SELECT image_id, '{}' FROM images")
    lose_jobs(conn)
    assert run_backfill(conn) == {"merge": 2}
    assert queued_jobs(conn) == [("merge", never, {"image_id": never}, f"merge:{never}"),
                                 ("merge", stale, {"image_id": stale}, f"merge:{stale}")]
    assert run_backfill(conn) == {}  # the queued jobs cover the work


def test_consensus_missing_or_older_than_answers_boxes_or_face_and_pose(conn: psycopg.Connection) -> None:
    missing, by_answer, by_boxes, by_face, fresh = (add_image(conn, f"{n}.jpg") for n in range(5))
    person = add_box(conn, by_face, PERSON, f"{PERSON}:0,0,9,9")
    for service in ("colors", "pose"):
        add_postprocessing(conn, by_face, person, service)
    conn.execute("UPDATE postprocessing SET result_created = now() - interval '5 minutes'")
    for image in (missing, by_answer, by_boxes, by_face, fresh):
        add_result(conn, image, "nsfw2", seconds_ago=300)
        conn.execute("""INSERT INTO merged_images (image_id, boxes, source_result_ids, merged_at, changed_at)
                        VALUES (%s, 0, '{}', now(), now() - interval '4 minutes')""", (image,))
    conn.execute("INSERT INTO consensus (image_id, consensus_data, consensus_created) "
                 "SELECT image_id, '{}', now() - interval '3 minutes' FROM images WHERE image_id <> %s", (missing,))
    add_result(conn, by_answer, "ocr", seconds_ago=60)
    conn.execute("UPDATE merged_images SET changed_at = now() WHERE image_id = %s", (by_boxes,))
    lose_jobs(conn)
    # by_face's pose answer is older than its consensus: its missing face row is work, its consensus is not.
    assert run_backfill(conn) == {"consensus": 3, "postprocess_face": 1}
    add_postprocessing(conn, by_face, person, "face")  # a new face answer is evidence for the vote...
    conn.execute("DELETE FROM jobs WHERE queue = 'consensus' AND image_id = %s", (by_face,))  # ...its job lost
    assert run_backfill(conn) == {"consensus": 1}
    assert [image for queue, image, _, _ in queued_jobs(conn) if queue == "consensus"] == sorted(
        [missing, by_answer, by_boxes, by_face])


def test_postprocessing_for_boxes_without_their_rows(conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    person = add_box(conn, image, PERSON, f"{PERSON}:0,0,9,9")
    labelled_person = add_box(conn, image, "", "person:20,0,9,9")  # no emoji: the class is the label
    dog = add_box(conn, image, "🐕", "🐕:40,0,9,9")
    add_postprocessing(conn, image, person, "colors")
    add_postprocessing(conn, image, person, "face", "error")  # an answer, even a failed one, is not missing
    add_postprocessing(conn, image, dog, "colors")
    lose_jobs(conn)
    assert run_backfill(conn) == {"consensus": 1, "postprocess_colors": 1, "postprocess_face": 1,
                                  "postprocess_pose": 2}
    wanted = [(queue, payload, key) for queue, _, payload, key in queued_jobs(conn) if queue.startswith("postprocess")]
    assert wanted == [
        ("postprocess_colors", {"merged_box_id": labelled_person, "image_id": image}, f"colors:{labelled_person}"),
        ("postprocess_face", {"merged_box_id": labelled_person, "image_id": image}, f"face:{labelled_person}"),
        ("postprocess_pose", {"merged_box_id": person, "image_id": image}, f"pose:{person}"),
        ("postprocess_pose", {"merged_box_id": labelled_person, "image_id": image}, f"pose:{labelled_person}"),
    ]


def test_caption_score_for_a_caption_newer_than_its_score(conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    add_result(conn, image, "blip", seconds_ago=60)
    add_result(conn, image, "ollama", seconds_ago=60)
    add_postprocessing(conn, image, None, "caption_score_ollama")  # newer than the ollama caption
    add_postprocessing(conn, image, None, "caption_score_blip")
    conn.execute("UPDATE postprocessing SET result_created = now() - interval '2 minutes' "
                 "WHERE service = 'caption_score_blip'")
    conn.execute("INSERT INTO consensus (image_id, consensus_data) VALUES (%s, '{}')", (image,))
    lose_jobs(conn)
    assert run_backfill(conn) == {"caption_score": 1}
    assert queued_jobs(conn) == [("caption_score", image, {"image_id": image, "service": "blip"},
                                  f"caption_score:blip:{image}")]


def test_expired_leases_go_back_to_the_queue_or_die_on_their_last_attempt(conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    expired = add_job(conn, "noop", "running", owner="gone", lease_s=-10)
    last = add_job(conn, "noop", "running", owner="gone", lease_s=-10)
    conn.execute("UPDATE jobs SET attempts = max_attempts WHERE id = %s", (last,))
    alive = add_job(conn, "noop", "running", image_id=image, owner="here", lease_s=30)
    assert run_backfill(conn) == {"expired_leases": 1}
    rows = {row[0]: row[1:] for row in conn.execute(
        "SELECT id, state::text, last_error, lease_owner, run_after <= now() FROM jobs")}
    assert rows[expired] == ("failed", "lease expired; requeued by backfill", None, True)
    assert rows[last] == ("dead", "lease expired on the last attempt; given up by backfill", None, True)
    assert rows[alive][0] == "running"


def test_work_covered_by_a_job_is_not_queued_again(conn: psycopg.Connection) -> None:
    waiting, running, retrying, dead_after, dead_before = (add_image(conn, f"{n}.jpg") for n in range(5))
    for image in (waiting, running, retrying, dead_after, dead_before):
        add_result(conn, image, "yolov8", seconds_ago=60)
    conn.execute("INSERT INTO consensus (image_id, consensus_data) SELECT image_id, '{}' FROM images")
    lose_jobs(conn)
    add_job(conn, "merge", "queued", image_id=waiting)
    add_job(conn, "merge", "running", image_id=running, owner="w", lease_s=30)
    add_job(conn, "merge", "failed", image_id=retrying, error="boom")
    # A job that died after the answer arrived has tried it: left to `jobs retry`. One that died before has not.
    add_job(conn, "merge", "dead", image_id=dead_after, seconds_ago=10, error="boom")
    add_job(conn, "merge", "dead", image_id=dead_before, seconds_ago=600, error="boom")
    assert run_backfill(conn) == {"merge": 1}
    assert conn.execute("SELECT image_id FROM jobs WHERE state = 'queued' AND queue = 'merge' AND image_id <> %s",
                        (waiting,)).fetchall() == [(dead_before,)]


def test_the_limit_bounds_each_category(conn: psycopg.Connection) -> None:
    for n in range(5):
        image = add_image(conn, f"{n}.jpg")
        add_result(conn, image, "yolov8")
        add_box(conn, image, "🐕", "🐕:0,0,9,9")
    lose_jobs(conn)
    assert run_backfill(conn, limit=2) == {"merge": 2, "consensus": 2, "postprocess_colors": 2}
    assert run_backfill(conn, limit=2) == {"merge": 2, "consensus": 2, "postprocess_colors": 2}
    assert run_backfill(conn, limit=2) == {"merge": 1, "consensus": 1, "postprocess_colors": 1}
    assert run_backfill(conn, limit=2) == {}


def test_two_backfills_at_once_do_the_work_once(database: Database, conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    add_result(conn, image, "yolov8")
    lose_jobs(conn)
    with database.connect() as other, other.transaction():
        assert run_backfill(other) == {"merge": 1, "consensus": 1}
        assert run_backfill(conn) == {}  # the first still runs (its transaction is open): this one steps aside


def test_backfill_works_from_any_search_path(conn: psycopg.Connection) -> None:
    """pg_cron calls it with the server's default search_path."""
    image = add_image(conn, "a.jpg")
    add_result(conn, image, "yolov8")
    lose_jobs(conn)
    conn.execute("SET search_path TO public")
    assert conn.execute("SELECT * FROM windmill.backfill() ORDER BY 1").fetchall() == [("consensus", 1), ("merge", 1)]


# -- a real run, broken on purpose -----------------------------------------------------------------------------------


def run_until_idle(database: Database, pool: ConnectionPool, catalog: Catalog) -> None:
    group = WorkerGroup(settings_from_mapping({"WORKER_ID": "backfill-test"}), database, pool, catalog, SINGLE_MACHINE,
                        jobs=JobQueue(pool, retry_base_s=0.05), options=WorkerOptions(poll_interval_s=0.1))
    with group:
        wait_until(lambda: pipeline_idle(pool), timeout=120, interval=0.1, message="the pipeline to go idle")


def products(conn: psycopg.Connection) -> dict[str, Any]:
    """What a repaired database must hold again: boxes, their postprocessing, consensus per image."""
    return {
        "boxes": conn.execute("SELECT image_id, crop_key FROM merged_boxes ORDER BY 1, 2").fetchall(),
        "post": conn.execute("SELECT mb.crop_key, p.service FROM postprocessing p JOIN merged_boxes mb "
                             "ON mb.merged_id = p.merged_box_id ORDER BY 1, 2").fetchall(),
        # latest_result_time moves with the answer the test re-dates; the vote itself must not. A repaired face
        # answer is for the box's current crop, which may be a few pixels off the crop first analysed (a nudged
        # box keeps its row and its answers): its confidence may differ, whether a face was found may not.
        "consensus": conn.execute("SELECT image_id, consensus_data - 'latest_result_time' "
                                  "#- '{special,face,confidence}' FROM consensus ORDER BY 1").fetchall(),
        "captions": conn.execute("SELECT image_id, service FROM postprocessing WHERE merged_box_id IS NULL "
                                 "ORDER BY 1, 2").fetchall(),
    }


def test_backfill_repairs_a_deliberately_broken_run(database: Database, pool: ConnectionPool,
                                                    conn: psycopg.Connection, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / name for name in ("coffee.jpg", "ascent.jpg", "chelsea.jpg", "rocket.jpg")])
    ids = dict(conn.execute("SELECT image_filename, image_id FROM images"))
    coffee, ascent, chelsea, rocket = (ids[f"{name}.jpg"] for name in ("coffee", "ascent", "chelsea", "rocket"))
    with running_farm(catalog) as (_, farm_catalog):
        with database.connect() as reader:
            submit(reader, conn, JobTableBroker(JobQueue(pool)), farm_catalog.select("primary"))
        run_until_idle(database, pool, farm_catalog)
        healthy = products(conn)
        assert run_backfill(conn) == {}, "a finished run needs no repair"
        assert conn.execute("SELECT bool_and(complete) FROM image_completeness").fetchone() == (True,)

        # Break it: a lost consensus, a lost face answer, an answer newer than the boxes, a worker that died.
        conn.execute("DELETE FROM consensus WHERE image_id = %s", (coffee,))
        face_box = conn.execute("""DELETE FROM postprocessing WHERE postprocessing_id = (
                                       SELECT min(postprocessing_id) FROM postprocessing
                                        WHERE image_id = %s AND service = 'face')
                                   RETURNING merged_box_id""", (ascent,)).fetchone()[0]
        conn.execute("""UPDATE results SET result_created = now() WHERE result_id = (
                            SELECT max(result_id) FROM results WHERE image_id = %s AND service = 'yolov8')""",
                     (chelsea,))
        lease_job = add_job(conn, "merge", "running", image_id=rocket, owner="killed-worker", lease_s=-60)
        conn.execute("UPDATE jobs SET payload = jsonb_build_object('image_id', image_id) WHERE id = %s", (lease_job,))

        assert run_backfill(conn) == {"expired_leases": 1, "merge": 1, "consensus": 2, "postprocess_face": 1}
        assert queued_jobs(conn) == sorted([
            ("consensus", coffee, {"image_id": coffee}, f"consensus:{coffee}"),
            ("consensus", chelsea, {"image_id": chelsea}, f"consensus:{chelsea}"),
            ("merge", chelsea, {"image_id": chelsea}, f"merge:{chelsea}"),
            ("postprocess_face", ascent, {"merged_box_id": face_box, "image_id": ascent}, f"face:{face_box}"),
        ], key=lambda job: (job[0], job[1], job[3]))
        assert conn.execute("SELECT state::text, last_error FROM jobs WHERE id = %s", (lease_job,)).fetchone() == (
            "failed", "lease expired; requeued by backfill")

        run_until_idle(database, pool, farm_catalog)
    assert conn.execute("SELECT state::text FROM jobs WHERE id = %s", (lease_job,)).fetchone() == ("done",)
    assert products(conn) == healthy
    assert run_backfill(conn) == {}


@pytest.mark.parametrize("limit", [0, -1])
def test_a_limit_below_one_is_refused(conn: psycopg.Connection, limit: int) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_limit must be at least 1"):
        run_backfill(conn, limit=limit)
