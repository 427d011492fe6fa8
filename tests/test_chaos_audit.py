"""The chaos run's audit can fail: a healthy pipeline's final state passes it, and each way of breaking that state
(one per end condition, undone afterwards) is named by the check that owns it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pika
import psycopg
import pytest
from pika.adapters.blocking_connection import BlockingConnection

from tests.conftest import _fresh_database
from tests.farm_fixtures import running_farm
from tests.test_pipeline import PRODUCTS, SAMPLES, run_group
from windmill.bench.chaos.audit import (
    ANSWERS,
    BACKFILL,
    BOXES,
    CAPTION_SCORES,
    CONSENSUS,
    JOBS,
    POSTPROCESSING,
    QUEUES,
    SERVICES_DOWN,
    Audit,
    audit,
    final_backfill,
    queue_state,
)
from windmill.broker import JobTableBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.db.schema import init_database
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.settings import settings_from_mapping
from windmill.worker.group import RoleSpec

HARMONY = settings_from_mapping({}).harmony


@pytest.fixture(scope="module")
def healthy(server_conninfo: str, catalog: Catalog) -> Iterator[tuple[Database, Catalog]]:
    """A database of its own holding the end state of a calm pipeline run over the samples."""
    database = Database(_fresh_database(server_conninfo, "windmill_chaos_audit"))
    with running_farm(catalog) as (_, farm_catalog), database.connect() as conn:
        init_database(conn, farm_catalog)
        with database.pool(max_size=12, name="audit-test") as pool, database.connect() as reader:
            add_paths(conn, [SAMPLES])
            submit(reader, conn, JobTableBroker(JobQueue(pool)), farm_catalog.select("primary"))
            run_group(database, pool, farm_catalog, (RoleSpec("service", "primary", concurrency=8), *PRODUCTS))
        yield database, farm_catalog


def audit_of(database: Database, catalog: Catalog, breakage: Callable[[psycopg.Connection], object]) -> Audit:
    """The audit, final backfill included, of the healthy state with `breakage` applied (then rolled back)."""
    with database.connect() as conn, conn.transaction(force_rollback=True):
        breakage(conn)
        return audit(conn, catalog, HARMONY, backfill=final_backfill(conn))


def one(conn: psycopg.Connection, sql: str) -> object:
    return conn.execute(sql).fetchone()[0]


def late_detector_answer_without_its_jobs(conn: psycopg.Connection) -> None:
    """An answer committed as a merge was reading (the lost wake-up of issue 11): it is stored, nothing runs."""
    conn.execute("""INSERT INTO results (image_id, service, task_id, data, status)
                    SELECT image_id, service, gen_random_uuid(), data, status FROM results
                     WHERE service = 'yolov8' AND status = 'success' ORDER BY result_id LIMIT 1""")
    conn.execute("DELETE FROM jobs WHERE state = 'queued'")


BREAKAGES: dict[str, tuple[str, Callable[[psycopg.Connection], object]]] = {
    "a pair without its answer": (ANSWERS, lambda conn: conn.execute(
        "DELETE FROM results WHERE result_id = (SELECT min(result_id) FROM results WHERE service = 'metadata')")),
    "a pair answered twice": (ANSWERS, lambda conn: conn.execute(
        """INSERT INTO results (image_id, service, task_id, data, status)
           SELECT image_id, service, gen_random_uuid(), data, status FROM results WHERE service = 'ocr' LIMIT 1""")),
    "an error without its reason": (ANSWERS, lambda conn: conn.execute(
        """UPDATE results SET status = 'error', error_message = ''
            WHERE result_id = (SELECT min(result_id) FROM results WHERE service = 'nsfw2')""")),
    "an error of ours, not the service's": (ANSWERS, lambda conn: conn.execute(
        """UPDATE results SET status = 'error', error_message = 'PoolTimeout: no connection',
                  data = '{"error": {"kind": "worker", "message": "PoolTimeout: no connection"}}'
            WHERE result_id = (SELECT min(result_id) FROM results WHERE service = 'blip')""")),
    "a box tampered": (BOXES, lambda conn: conn.execute(
        """UPDATE merged_boxes SET merged_data = jsonb_set(merged_data, '{avg_confidence}', '0.01')
            WHERE merged_id = (SELECT min(merged_id) FROM merged_boxes)""")),
    "a box naming other answers": (BOXES, lambda conn: conn.execute(
        """UPDATE merged_boxes SET source_result_ids = source_result_ids[1:1]
            WHERE merged_id = (SELECT min(merged_id) FROM merged_boxes
                                WHERE array_length(source_result_ids, 1) > 1)""")),
    "a late detector answer never merged": (BOXES, late_detector_answer_without_its_jobs),
    "a merge record naming other answers": (BOXES, lambda conn: conn.execute(
        "UPDATE merged_images SET source_result_ids = '{}' WHERE image_id = (SELECT min(image_id) FROM images)")),
    "a box without its colors": (POSTPROCESSING, lambda conn: conn.execute(
        """DELETE FROM postprocessing WHERE postprocessing_id =
             (SELECT min(postprocessing_id) FROM postprocessing WHERE service = 'colors')""")),
    "a face row on a box without a person": (POSTPROCESSING, lambda conn: conn.execute(
        """INSERT INTO postprocessing (image_id, merged_box_id, service, data, status)
           SELECT image_id, merged_id, 'face', '{}', 'success' FROM merged_boxes
            WHERE NOT is_person_box(merged_data, crop_key) LIMIT 1""")),
    "a failed postprocessing row without its reason": (POSTPROCESSING, lambda conn: conn.execute(
        """UPDATE postprocessing SET status = 'error', error_message = NULL
            WHERE postprocessing_id = (SELECT min(postprocessing_id) FROM postprocessing
                                        WHERE merged_box_id IS NOT NULL)""")),
    "a consensus tampered": (CONSENSUS, lambda conn: conn.execute(
        """UPDATE consensus SET consensus_data = consensus_data - 'services_list'
            WHERE image_id = (SELECT min(image_id) FROM images)""")),
    "an image without a consensus": (CONSENSUS, lambda conn: conn.execute(
        "DELETE FROM consensus WHERE image_id = (SELECT max(image_id) FROM images)")),
    "a caption without its score": (CAPTION_SCORES, lambda conn: conn.execute(
        """DELETE FROM postprocessing WHERE postprocessing_id =
             (SELECT min(postprocessing_id) FROM postprocessing WHERE service = 'caption_score_blip')""")),
    "the score of another caption": (CAPTION_SCORES, lambda conn: conn.execute(
        """UPDATE postprocessing SET source_result_id = 0
            WHERE postprocessing_id = (SELECT min(postprocessing_id) FROM postprocessing
                                        WHERE service = 'caption_score_ollama')""")),
    "a caption scored twice": (CAPTION_SCORES, lambda conn: conn.execute(
        """INSERT INTO postprocessing (image_id, service, data, status)
           SELECT image_id, service, data, status FROM postprocessing WHERE service = 'caption_score_blip'
            LIMIT 1""")),
    "a late answer only the backfill finds": (BACKFILL, late_detector_answer_without_its_jobs),
    "an image whose merge was lost": (BACKFILL, lambda conn: conn.execute(
        "DELETE FROM merged_images WHERE image_id = (SELECT min(image_id) FROM images)")),
    "a dead job": (JOBS, lambda conn: conn.execute(
        "UPDATE jobs SET state = 'dead', last_error = 'gave up' WHERE id = (SELECT min(id) FROM jobs)")),
    "a job left running": (JOBS, lambda conn: conn.execute(
        """UPDATE jobs SET state = 'running', lease_expires_at = now() + interval '1 hour'
            WHERE id = (SELECT max(id) FROM jobs)""")),
    "a job waiting for its retry": (JOBS, lambda conn: conn.execute(
        "UPDATE jobs SET state = 'failed', last_error = 'HTTP 500' WHERE id = (SELECT max(id) FROM jobs)")),
    "an answer failed for want of a connection": (SERVICES_DOWN, lambda conn: conn.execute(
        """UPDATE results SET status = 'error', error_message = 'ocr: cannot connect to http://127.0.0.1:1',
                  data = '{"error": {"kind": "connect", "message": "cannot connect"}}'
            WHERE result_id = (SELECT min(result_id) FROM results WHERE service = 'ocr')""")),
    "a crop's colors failed for want of a connection": (SERVICES_DOWN, lambda conn: conn.execute(
        """UPDATE postprocessing SET status = 'error', error_message = 'colors: cannot connect',
                  data = '{"error": {"kind": "connect", "message": "cannot connect"}}'
            WHERE postprocessing_id = (SELECT min(postprocessing_id) FROM postprocessing WHERE service = 'colors')""")),
    "a task left in the ledger of tasks in flight": (QUEUES, lambda conn: conn.execute(
        """INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id)
           SELECT image_id, 'ocr', 'queue_ocr', gen_random_uuid() FROM images LIMIT 1""")),
}


def test_the_final_state_of_a_calm_run_passes_every_check(healthy: tuple[Database, Catalog]) -> None:
    found = audit_of(*healthy, lambda conn: None)
    assert found.failed == [], found.problems
    assert found.images == 6 and found.boxes > found.images  # the audit looked at something
    assert found.backfill == {}


def test_an_image_whose_detectors_all_failed_needs_no_merge_record(healthy: tuple[Database, Catalog]) -> None:
    def every_detector_failed(conn: psycopg.Connection) -> None:
        image = one(conn, "SELECT min(image_id) FROM merged_boxes")
        conn.execute("""UPDATE results SET status = 'error', error_message = 'HTTP 500',
                                            data = '{"error": {"kind": "http_5xx", "message": "HTTP 500"}}'
                         WHERE image_id = %s AND service IN (SELECT name FROM services WHERE is_detector)""",
                     (image,))
        conn.execute("DELETE FROM merged_boxes WHERE image_id = %s", (image,))
        conn.execute("DELETE FROM merged_images WHERE image_id = %s", (image,))

    assert BOXES not in audit_of(*healthy, every_detector_failed).failed


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_each_broken_end_condition_is_reported_by_its_check(healthy: tuple[Database, Catalog],
                                                            breakage: str) -> None:
    check, breaking = BREAKAGES[breakage]
    found = audit_of(*healthy, breaking)
    assert check in found.failed, f"{breakage} went unnoticed: {found.problems}"


def test_rabbitmq_tasks_left_or_dead_lettered_without_their_row_are_reported(
        healthy: tuple[Database, Catalog], amqp_url: str) -> None:
    database, catalog = healthy
    queue = f"queue_windmill_test_{uuid.uuid4().hex[:10]}"
    connection = BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()  # each message in its queue before the audit reads it on a connection of its own

    def audited() -> Audit:
        with database.connect() as conn:
            return audit(conn, catalog, HARMONY, queues=queue_state(amqp_url, [queue]))

    try:
        for name in (queue, queue + ".dlq"):
            channel.queue_declare(name, durable=True)
        with database.connect() as conn:
            answered = one(conn, "SELECT task_id::text FROM results ORDER BY result_id LIMIT 1")
        channel.basic_publish("", queue + ".dlq", b"{}", pika.BasicProperties(message_id=answered))
        with_its_row = audited()
        channel.basic_publish("", queue + ".dlq", b"{}", pika.BasicProperties(message_id=str(uuid.uuid4())))
        one_lost = audited()
        channel.basic_publish("", queue, b"{}", pika.BasicProperties(message_id=str(uuid.uuid4())))
        one_left = audited()
    finally:
        for name in (queue, queue + ".dlq"):
            channel.queue_delete(name)
        connection.close()
    assert QUEUES not in with_its_row.failed and with_its_row.dead_lettered == 1, with_its_row.problems
    assert one_lost.checks[QUEUES].failures == 1 and one_lost.dead_lettered == 2, one_lost.problems
    assert one_left.checks[QUEUES].failures == 2, one_left.problems  # looking left the dead letters in place


def test_queues_never_declared_hold_nothing_as_after_a_run_via_the_job_table(amqp_url: str) -> None:
    """`bench chaos --broker postgres` declares no task queue: each queue and its DLQ are absent, and count as empty."""
    missing = [f"queue_windmill_test_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    state = queue_state(amqp_url, missing)
    assert (state.left, state.dead_lettered) == (0, [])
