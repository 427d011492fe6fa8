"""`dlq list` shows dead-lettered tasks without consuming them; `dlq replay` publishes them again under new task
ids with fresh attempts, through submit's ledger, and only then removes them from the DLQ. Real RabbitMQ, real
PostgreSQL; the end-to-end test dead-letters a task against a service that is down and replays it once it is up."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from dataclasses import replace

import pika
import psycopg
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from tests.test_rabbitmq import depth, drain_queue
from tests.test_service_rabbitmq import publish_samples, results_count, start_worker
from tests.test_service_role import SAMPLES
from windmill.broker import Task
from windmill.broker.dead_letters import DeadLetter, list_dead_letters, replay_dead_letters
from windmill.broker.ledger import enter_in_flight
from windmill.broker.queues import refusal_answered
from windmill.broker.rabbitmq import ATTEMPTS_HEADER, LAST_ERROR_HEADER, RabbitMQBroker, declare_queue, task_body
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.settings import settings_from_mapping
from windmill.simfarm import SimFarm

MALFORMED = b"not a task"
# A service that is down is waited for a second, then its task's attempts go (windmill.farm.outages).
QUICK_TO_GIVE_UP = settings_from_mapping({"WORKER_ID": "rabbit-service-test", "WINDMILL_OUTAGE_WAIT_S": "1"})


def tasks_for_images(conn: psycopg.Connection, queue: str) -> list[Task]:
    rows = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images ORDER BY image_id")
    return [Task(task_id=str(uuid.uuid4()), image_id=image_id, image_filename=name, image_path=path, image_url=url,
                 submitted_at="2026-01-01T00:00:00+00:00", service_name="blip", queue_name=queue)
            for image_id, name, path, url in rows]


def dead_letter(admin: BlockingChannel, queue: str, body: bytes, attempts: int | None = 5) -> None:
    """A message in the queue's DLQ, as the consumer leaves it there."""
    headers = {ATTEMPTS_HEADER: attempts, LAST_ERROR_HEADER: "TimeoutError: the service timed out"} if attempts \
        else None
    admin.basic_publish("", queue + ".dlq", body, pika.BasicProperties(delivery_mode=2, headers=headers))


def test_dlq_list_shows_dead_letters_and_leaves_them_in_place(amqp_url: str, admin: BlockingChannel,
                                                              queue_name: str, conn: psycopg.Connection) -> None:
    declare_queue(admin, queue_name)
    add_paths(conn, [SAMPLES / "chelsea.jpg", SAMPLES / "coffee.jpg"])
    first, second = tasks_for_images(conn, queue_name)
    dead_letter(admin, queue_name, task_body(first))
    dead_letter(admin, queue_name, MALFORMED, attempts=None)
    dead_letter(admin, queue_name, task_body(second), attempts=2)
    listed = list_dead_letters(amqp_url, [queue_name, "queue_never_declared"])
    assert listed == [
        DeadLetter(queue_name, first.task_id, first.image_id, "blip", 5, "TimeoutError: the service timed out"),
        DeadLetter(queue_name, None, None, None, None, "not a task: the body is not JSON: Expecting value: line 1 "
                                                       "column 1 (char 0)"),
        DeadLetter(queue_name, second.task_id, second.image_id, "blip", 2, "TimeoutError: the service timed out"),
    ]
    assert depth(admin, queue_name + ".dlq") == 3
    assert list_dead_letters(amqp_url, [queue_name]) == listed, "a listing moved or consumed a message"
    assert list_dead_letters(amqp_url, [queue_name], limit=1) == listed[:1]


def test_dlq_replay_publishes_tasks_again_under_new_ids_through_the_ledger(
        amqp_url: str, admin: BlockingChannel, queue_name: str, conn: psycopg.Connection, catalog: Catalog) -> None:
    declare_queue(admin, queue_name)
    add_paths(conn, [SAMPLES / "chelsea.jpg", SAMPLES / "coffee.jpg", SAMPLES / "astronaut.jpg"])
    free, busy, unrecorded = tasks_for_images(conn, queue_name)
    enter_in_flight(conn, [replace(busy, task_id=str(uuid.uuid4()))])  # another task of that pair is in flight
    enter_in_flight(conn, [unrecorded])  # dead-lettered without its row: its entry is still there
    for task in (free, busy, unrecorded):
        dead_letter(admin, queue_name, task_body(task))
    dead_letter(admin, queue_name, MALFORMED, attempts=None)

    report = replay_dead_letters(amqp_url, conn, [queue_name])

    assert (report.replayed, report.skipped, report.malformed) == (2, 1, 1)
    replayed = {(task.image_id, task.task_id): properties for properties, body in drain_queue(admin, queue_name)
                for task in [Task(**json.loads(body))]}
    assert sorted(image for image, _ in replayed) == [free.image_id, unrecorded.image_id]
    assert not {task_id for _, task_id in replayed} & {free.task_id, unrecorded.task_id}, "replayed under old ids"
    assert all(ATTEMPTS_HEADER not in (properties.headers or {}) for properties in replayed.values())
    ledger = dict(conn.execute("SELECT image_id, task_id::text FROM service_tasks_in_flight").fetchall())
    assert {(image, ledger[image]) for image in (free.image_id, unrecorded.image_id)} == set(replayed)
    left = [body for _properties, body in drain_queue(admin, queue_name + ".dlq")]
    assert sorted(left) == sorted([task_body(busy), MALFORMED])


def test_a_task_dead_lettered_while_its_service_was_down_is_replayed_from_the_command_line(
        run, monkeypatch, amqp_url: str, database: Database, pool: ConnectionPool, conn: psycopg.Connection,
        private_queues: Catalog, admin: BlockingChannel) -> None:
    monkeypatch.setenv("WINDMILL_AMQP_URL", amqp_url)
    with running_farm(private_queues, services=["blip"]) as (_, catalog):  # nothing serves yolov8
        queue = catalog["yolov8"].queue_name
        published = publish_samples(conn, database, amqp_url, catalog, "yolov8", SAMPLES / "chelsea.jpg")
        worker, thread = start_worker(amqp_url, database, pool, catalog, "yolov8", max_attempts=2,
                                      settings=QUICK_TO_GIVE_UP)
        try:
            wait_until(lambda: depth(admin, queue + ".dlq") == published, timeout=30, message="the task in the DLQ")
        finally:
            worker.request_stop()
            thread.join(timeout=30)
        assert conn.execute("SELECT status FROM results").fetchall() == [("error",)], "its row before the DLQ"
        [listed] = json.loads(run("dlq", "list", "--queue", queue + ".dlq", "--json").output)
        assert (listed["service"], listed["attempts"]) == ("yolov8", 2) and "yolov8" in listed["last_error"]
        mistyped = run("dlq", "list", "--queue", queue + "8")  # once it was an empty listing, as for a queue at rest
        assert mistyped.exit_code == 1 and f"Error: unknown task queue '{queue}8'; valid task queues: " in (
            mistyped.output), mistyped.output

        offset = catalog["yolov8"].port - private_queues["yolov8"].port
        up = SimFarm(private_queues, services=["yolov8"], port_offset=offset)  # the service is back
        up.start()
        try:
            replayed = run("dlq", "replay", "--queue", queue)
            assert "Replayed 1 dead-lettered task(s)" in replayed.output, replayed.output
            assert depth(admin, queue + ".dlq") == 0
            worker, thread = start_worker(amqp_url, database, pool, catalog, "yolov8", max_attempts=2)
            try:
                wait_until(lambda: results_count(conn) == 2, timeout=30, message="the replayed task's row")
            finally:
                worker.request_stop()
                thread.join(timeout=30)
        finally:
            up.stop()
    statuses = [row[0] for row in conn.execute("SELECT status FROM results ORDER BY result_id")]
    assert statuses == ["error", "success"]
    assert conn.execute("SELECT count(*) FROM service_tasks_in_flight").fetchone()[0] == 0


def test_queues_never_declared_read_as_empty_without_a_warning(amqp_url: str, queue_name: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """A service whose queues nobody declared yet is no fault: `dlq list` and `tasks resend` read it as empty, and
    pika's warning about the channel the broker closed is not printed (it was, a line per queue)."""
    caplog.set_level(logging.WARNING, logger="pika")  # the command line shows pika's lines at DEBUG only
    assert list_dead_letters(amqp_url, [queue_name, queue_name + "_too"]) == []
    with RabbitMQBroker(amqp_url) as broker:
        assert broker.queue_depths([queue_name, queue_name + "_too"]) == {}
        declare_queue(broker._ensure_channel(), queue_name)
        assert broker.queue_depths([queue_name + "_too", queue_name]) == {queue_name: 0}
    assert [record.getMessage() for record in caplog.records if record.name.startswith("pika")] == []


def test_a_refusal_is_silenced_only_in_the_thread_that_answers_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pika")  # the command line shows pika's lines at DEBUG only
    channel_log = logging.getLogger("pika.channel")

    def close_warning(code: int) -> None:
        channel_log.warning("Received remote Channel.Close (%s): %r on %s", code, "NOT_FOUND - no queue", "channel")

    with refusal_answered(404):
        close_warning(404)  # answered here
        close_warning(406)  # not this one
        elsewhere = threading.Thread(target=close_warning, args=(404,))
        elsewhere.start()
        elsewhere.join()
    close_warning(404)  # after the block
    assert [record.args[0] for record in caplog.records if record.name == "pika.channel"] == [406, 404, 404]
