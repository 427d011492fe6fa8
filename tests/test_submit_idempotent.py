"""Idempotent submit: while an image × service pair has a task queued, running or waiting for a retry, in either
broker, `submit` adds nothing for it and says how many it skipped. The job table's rows are their own ledger (a
unique index); RabbitMQ tasks are entered in PostgreSQL's ledger before they are published and leave it with their
final row."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from tests.test_service_rabbitmq import start_worker
from tests.test_service_role import SAMPLES
from windmill.broker import Broker, JobTableBroker, Task
from windmill.broker.ledger import enter_in_flight, publish_in_flight
from windmill.broker.rabbitmq import RabbitMQBroker, RabbitMQError
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.db.migrations import available_migrations
from windmill.image_cache import ImageSource
from windmill.jobs import JobQueue
from windmill.monitor import format_status, tasks_in_flight
from windmill.producer import SubmitReport, submit
from windmill.roles.registry import RoleContext, build_role
from windmill.settings import settings_from_mapping
from windmill.worker.farm_client import process_farm_client
from windmill.worker.runtime import Worker, WorkerOptions

SERVICES = "nsfw2,metadata,colors"


def count(conn: psycopg.Connection, sql: str, *params: object) -> int:
    return conn.execute(sql, params).fetchone()[0]


def results(conn: psycopg.Connection) -> int:
    return count(conn, "SELECT count(*) FROM results")


def task_for(conn: psycopg.Connection, image_id: int, service: str, catalog: Catalog) -> Task:
    row = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images WHERE image_id = %s",
                       (image_id,)).fetchone()
    return Task.for_image(dict(zip(("image_id", "image_filename", "image_path", "image_url"), row, strict=True)),
                          catalog[service])


def answer(conn: psycopg.Connection, task: Task, status: str = "success") -> None:
    """The task's final row, as the service role writes it."""
    conn.execute("INSERT INTO results (image_id, service, task_id, data, status, error_message) "
                  "VALUES (%s, %s, %s, '{}', %s, %s)", (task.image_id, task.service_name, task.task_id, status,
                                                         None if status == "success" else "failed"))


@contextmanager
def job_table_worker(database: Database, pool: ConnectionPool, catalog: Catalog) -> Iterator[None]:
    jobs = JobQueue(pool, lease=timedelta(seconds=30), retry_base_s=0.01)
    settings = settings_from_mapping({"WORKER_ID": "idempotent"})
    with process_farm_client(settings, catalog, database) as farm:
        context = RoleContext(settings=settings, database=database, pool=pool, jobs=jobs, catalog=catalog,
                              worker_id="idempotent", farm=farm, images=ImageSource(settings), service=SERVICES)
        worker = Worker(jobs, build_role("service", context), worker_id="idempotent",
                        listen_conninfo=database.conninfo,
                        options=WorkerOptions(concurrency=2, batch_size=4, poll_interval_s=0.1))
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            yield
        finally:
            worker.request_stop()
            thread.join(timeout=30)


@contextmanager
def rabbitmq_worker(amqp_url: str, database: Database, pool: ConnectionPool, catalog: Catalog) -> Iterator[None]:
    worker, thread = start_worker(amqp_url, database, pool, catalog, SERVICES, concurrency=2)
    try:
        yield
    finally:
        worker.request_stop()
        thread.join(timeout=30)


@pytest.mark.parametrize("kind", ["postgres", "rabbitmq"])
def test_a_second_submit_while_workers_process_adds_nothing_and_each_pair_gets_one_row(
        kind: str, request: pytest.FixtureRequest, database: Database, pool: ConnectionPool,
        conn: psycopg.Connection, catalog: Catalog) -> None:
    amqp_url = request.getfixturevalue("amqp_url") if kind == "rabbitmq" else ""
    queues = request.getfixturevalue("private_queues") if kind == "rabbitmq" else catalog
    add_paths(conn, [SAMPLES])
    pairs = count(conn, "SELECT count(*) FROM images") * len(SERVICES.split(","))

    with running_farm(queues, latency_ms=150) as (_, shifted):

        def submit_all() -> SubmitReport:
            broker: Broker = RabbitMQBroker(amqp_url) if amqp_url else JobTableBroker(JobQueue(pool))
            with database.connect() as reader:
                try:
                    return submit(reader, conn, broker, shifted.select(SERVICES))
                finally:
                    broker.close()

        first = submit_all()
        assert (first.published, first.skipped_in_flight) == (pairs, 0)
        worker = (rabbitmq_worker(amqp_url, database, pool, shifted) if amqp_url
                  else job_table_worker(database, pool, shifted))
        with worker:
            wait_until(lambda: 0 < results(conn) < pairs // 2, message="the workers to be under way")
            second = submit_all()
            wait_until(lambda: results(conn) >= pairs, timeout=60, message="every pair answered")
            wait_until(lambda: not count(conn, "SELECT count(*) FROM jobs WHERE state <> 'done' AND queue <> ALL(%s)",
                                         ["merge", "consensus", "caption_score"]), message="every job recorded")
    assert second.published == 0, "the second submit sent tasks for pairs already in flight"
    assert second.skipped_in_flight > 0 and second.skipped_in_flight + second.skipped_answered == pairs
    assert conn.execute("SELECT count(*), count(DISTINCT (image_id, service)) FROM results").fetchone() == (pairs,
                                                                                                             pairs)
    if amqp_url:
        assert count(conn, "SELECT count(*) FROM service_tasks_in_flight") == 0, "an answered task kept its entry"
    else:
        queued = [service.queue_name for service in shifted.select(SERVICES)]
        # A pair whose job completed between the second submit's look for answers and its insert got a new job,
        # marked done at once (drop_answered_service_tasks): a job no worker ever saw, not a task sent twice.
        assert count(conn, "SELECT count(*) FROM jobs WHERE queue = ANY(%s) "
                           "AND last_error IS DISTINCT FROM 'answered while submit ran'", queued) == pairs


# -- the ledger --------------------------------------------------------------------------------------------------


def test_a_task_leaves_the_ledger_with_its_own_final_row_only(conn: psycopg.Connection, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    task = task_for(conn, 1, "blip", catalog)
    assert enter_in_flight(conn, [task]).tasks == [task]
    assert enter_in_flight(conn, [task_for(conn, 1, "blip", catalog)]).tasks == [], "a second task for the pair"
    answer(conn, task_for(conn, 1, "blip", catalog))  # a row of another task (an older duplicate)
    assert count(conn, "SELECT count(*) FROM service_tasks_in_flight") == 1
    answer(conn, task, status="error")  # its final row, even an error, frees the pair
    assert count(conn, "SELECT count(*) FROM service_tasks_in_flight") == 0
    assert enter_in_flight(conn, [task_for(conn, 1, "clip", catalog)]).tasks
    conn.execute("DELETE FROM images")  # the entries of a deleted image go with it
    assert count(conn, "SELECT count(*) FROM service_tasks_in_flight") == 0


def test_a_pair_answered_while_submit_enters_its_task_is_not_sent(
        conn: psycopg.Connection, pool: ConnectionPool, catalog: Catalog, amqp_url: str, queue_name: str) -> None:
    """Submit reads the answers before it enters its tasks; an answer committed in between (its task's entry gone,
    its job done) is caught by a second look after the entry, for both brokers."""
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    answer(conn, task_for(conn, 1, "blip", catalog))
    job_table = task_for(conn, 1, "blip", catalog)
    assert publish_in_flight(conn, JobTableBroker(JobQueue(pool)), [job_table], unless_answered=True) == []
    assert count(conn, "SELECT count(*) FROM jobs WHERE queue = 'queue_blip' AND state <> 'done'") == 0
    with RabbitMQBroker(amqp_url) as broker:
        rabbit = replace(task_for(conn, 1, "blip", catalog), queue_name=queue_name)
        assert publish_in_flight(conn, broker, [rabbit], unless_answered=True) == []
        assert count(conn, "SELECT count(*) FROM service_tasks_in_flight") == 0
        forced = replace(task_for(conn, 1, "blip", catalog), queue_name=queue_name)
        assert publish_in_flight(conn, broker, [forced], unless_answered=False) == [forced]  # --force
        assert broker.queue_depths([queue_name]) == {queue_name: 1}


def test_tasks_rabbitmq_did_not_confirm_leave_the_ledger_again(conn: psycopg.Connection, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    tasks = [task_for(conn, 1, service, catalog) for service in ("blip", "clip")]
    unreachable = RabbitMQBroker("amqp://guest:guest@127.0.0.1:1/%2F", connection_attempts=1)
    with pytest.raises(RabbitMQError):
        publish_in_flight(conn, unreachable, tasks, unless_answered=True)
    assert count(conn, "SELECT count(*) FROM service_tasks_in_flight") == 0, "a pair kept from the next submit"


def test_the_job_table_refuses_a_second_task_in_flight_and_jobs_retry_leaves_it_dead(
        conn: psycopg.Connection, pool: ConnectionPool, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    broker = JobTableBroker(JobQueue(pool))
    first = task_for(conn, 1, "blip", catalog)
    assert broker.publish([first]) == [first]
    conn.execute("UPDATE jobs SET state = 'dead'")
    second = task_for(conn, 1, "blip", catalog)
    assert broker.publish([second]) == [second], "a dead task is not in flight"
    for state in ("running", "failed"):
        conn.execute("UPDATE jobs SET state = %s WHERE payload ->> 'task_id' = %s", (state, second.task_id))
        assert broker.publish([task_for(conn, 1, "blip", catalog)]) == [], f"a {state} task is in flight"
    assert JobQueue(pool).retry_dead() == [], "retrying the dead task would run the pair twice"
    conn.execute("UPDATE jobs SET state = 'done' WHERE payload ->> 'task_id' = %s", (second.task_id,))
    assert len(JobQueue(pool).retry_dead()) == 1


def test_the_job_table_skips_a_pair_whose_rabbitmq_task_is_in_flight(
        conn: psycopg.Connection, pool: ConnectionPool, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    assert enter_in_flight(conn, [task_for(conn, 1, "blip", catalog)]).tasks
    assert JobTableBroker(JobQueue(pool)).publish([task_for(conn, 1, "blip", catalog)]) == []
    conn.execute("DELETE FROM service_tasks_in_flight")
    job = task_for(conn, 1, "blip", catalog)
    assert JobTableBroker(JobQueue(pool)).publish([job]) == [job]
    assert enter_in_flight(conn, [task_for(conn, 1, "blip", catalog)]).tasks == [], "the job-table task is in flight"


def test_migration_0020_keeps_one_in_flight_task_per_pair(empty_database: str) -> None:
    with Database(empty_database).connect() as conn:
        conn.execute("CREATE SCHEMA windmill")
        for migration in available_migrations():
            if migration.version < 20:
                conn.execute(migration.sql)
        conn.execute("INSERT INTO images (image_filename, image_path) VALUES ('a.jpg', '/a.jpg')")
        jobs = [("queue_blip", "queued"), ("queue_blip", "running"), ("queue_blip", "failed"),
                ("queue_yolov8", "failed"), ("queue_yolov8", "queued"), ("queue_clip", "queued")]
        for queue, state in jobs:
            conn.execute("INSERT INTO jobs (queue, image_id, payload, state) VALUES (%s, 1, %s, %s)",
                         (queue, Jsonb({"task_id": str(uuid.uuid4())}), state))
        conn.execute("INSERT INTO jobs (queue, image_id, payload, state) VALUES ('merge', 1, '{}', 'running'), "
                     "('merge', 1, '{}', 'queued')")
        [migration] = [m for m in available_migrations() if m.version == 20]
        conn.execute(migration.sql)
        states = conn.execute("SELECT queue, state::text FROM jobs ORDER BY id").fetchall()
    assert states == [("queue_blip", "done"), ("queue_blip", "running"), ("queue_blip", "done"),
                      ("queue_yolov8", "failed"), ("queue_yolov8", "done"), ("queue_clip", "queued"),
                      ("merge", "running"), ("merge", "queued")]


def test_status_shows_entries_without_a_message_and_tasks_forget_frees_their_pairs(
        run, conn: psycopg.Connection, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    enter_in_flight(conn, [task_for(conn, 1, "blip", catalog), task_for(conn, 1, "clip", catalog)])
    ledger = json.loads(run("status", "--json").output)["in_flight"]
    assert [(row["service"], row["in_flight"]) for row in ledger] == [("blip", 1), ("clip", 1)]
    # What RabbitMQ's management API says: queue_blip holds one message, queue_clip none (it was purged).
    broker = {"available": True, "queues": [{"queue": "queue_blip", "ready": 0, "unacked": 1}]}
    compared = tasks_in_flight(ledger, broker)
    assert [(row["in_rabbitmq"], row["unaccounted"]) for row in compared] == [(1, 0), (0, 1)]
    assert "windmill-cli tasks resend --older-than 0" in format_status({
        **json.loads(run("status", "--json").output), "in_flight": compared, "rabbitmq": {**broker, "url": "x"}})
    listed = json.loads(run("tasks", "list", "--json").output)
    assert len(listed) == 2 and all(isinstance(row["age_s"], float) for row in listed)  # a number, as in status
    assert run("tasks", "forget").exit_code == 2, "forgetting everything needs --all"
    assert "Forgot 0 task(s)" in run("tasks", "forget", "--all", "--older-than", "3600").output
    assert "Forgot 1 task(s)" in run("tasks", "forget", "--service", "clip").output
    assert [row["service"] for row in json.loads(run("tasks", "list", "--json").output)] == ["blip"]
    # A mistyped service is said to be one (once an empty list, or "Forgot 0"); a known one at rest answers empty.
    for command in ("list", "forget"):
        mistyped = run("tasks", command, "--service", "bilp")
        assert mistyped.exit_code == 1 and mistyped.output.startswith(
            "Error: unknown service 'bilp'; valid services: blip, caption_score, clip, "), mistyped.output
    assert json.loads(run("tasks", "list", "--service", "clip", "--json").output) == []
