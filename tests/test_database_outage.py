"""A database error is not an attempt. While PostgreSQL is away a task waits (RabbitMQ: unacked; job table: its job
released uncounted) however long the outage, a task reaches the DLQ only once its final row is committed, and a
stop during the outage leaves the task to RabbitMQ. The outages here are real: the worker's connections are
terminated and new ones refused (ALTER DATABASE … ALLOW_CONNECTIONS false) for longer than the retry budget."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import psycopg
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from tests.test_rabbitmq import Recorder, consumer_for, depth, drain_queue, make_tasks, running
from tests.test_service_rabbitmq import publish_samples, results_count, start_worker
from tests.test_service_role import submit_samples
from windmill.broker.rabbitmq import ATTEMPTS_HEADER, RabbitMQBroker
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.image_cache import ImageSource
from windmill.jobs import Job, JobQueue
from windmill.roles.registry import RoleContext, build_role
from windmill.settings import settings_from_mapping
from windmill.worker.farm_client import process_farm_client
from windmill.worker.runtime import Worker, WorkerHooks, WorkerOptions

WORKER_APPLICATION = "windmill-outage-worker"


def database_error(call: int) -> psycopg.OperationalError:
    return psycopg.OperationalError(f"server closed the connection unexpectedly (call {call})")


# -- the consumer's rule, with a handler that meets the database away ---------------------------------------------


def test_a_database_error_is_not_an_attempt_the_task_waits_until_it_is_handled(
        amqp_url: str, admin: BlockingChannel, queue_name: str) -> None:
    [task] = make_tasks(queue_name, 1)

    def behave(_task: object, call: int) -> None:
        if call <= 4:  # twice the attempt budget
            raise database_error(call)

    handler = Recorder(behave)
    dead: list[object] = []
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish([task])
        with running(consumer_for(amqp_url, queue_name, handler, max_attempts=2,
                                  on_dead_letter=lambda task, error: dead.append(task))):
            wait_until(lambda: handler.counts()[task.task_id] == 5, message="the fifth call, which succeeds")
            wait_until(lambda: depth(admin, queue_name) == 0, message="the task acked")
    assert depth(admin, queue_name + ".dlq") == 0 and dead == []
    assert handler.first_flags(task) == [True, False, False, False, False]


def test_a_task_reaches_the_dlq_only_once_its_final_row_is_recorded(
        amqp_url: str, admin: BlockingChannel, queue_name: str) -> None:
    [task] = make_tasks(queue_name, 1)
    recorded: list[int] = []

    def record_final_row(_task: object, _error: BaseException) -> None:
        recorded.append(len(recorded) + 1)
        if len(recorded) <= 3:
            raise database_error(len(recorded))

    def fail(_task: object, call: int) -> None:
        raise TimeoutError(f"the service timed out (call {call})")

    handler = Recorder(fail)
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish([task])
        with running(consumer_for(amqp_url, queue_name, handler, max_attempts=2, on_dead_letter=record_final_row)):
            wait_until(lambda: depth(admin, queue_name + ".dlq") == 1, message="the task in the DLQ")
            assert len(recorded) == 4, "dead-lettered before its row was recorded"
    [(properties, _body)] = drain_queue(admin, queue_name + ".dlq")
    assert properties.headers[ATTEMPTS_HEADER] == 2  # the waits for the database were not counted


def test_a_stop_while_the_database_is_away_leaves_the_task_in_its_queue_uncounted(
        amqp_url: str, admin: BlockingChannel, queue_name: str) -> None:
    [task] = make_tasks(queue_name, 1)

    def away(_task: object, call: int) -> None:
        raise database_error(call)

    handler = Recorder(away)
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish([task])
        with running(consumer_for(amqp_url, queue_name, handler, max_attempts=2)):
            wait_until(lambda: handler.counts()[task.task_id] >= 3, message="the task to wait for the database")
    assert depth(admin, queue_name + ".dlq") == 0
    [(properties, _body)] = drain_queue(admin, queue_name)
    assert (properties.headers or {}).get(ATTEMPTS_HEADER) is None, "a wait for the database counted as an attempt"


# -- real outages --------------------------------------------------------------------------------------------------


@pytest.fixture
def database_away(server_conninfo: str, conn: psycopg.Connection):
    """PostgreSQL gone for the worker: its connections terminated, every new connection to the test database
    refused (this test's own open connection stays) until the block ends."""

    @contextmanager
    def away(application_name: str) -> Iterator[None]:
        with psycopg.connect(server_conninfo, autocommit=True) as server:  # not the database it closes
            server.execute(f'ALTER DATABASE "{conn.info.dbname}" ALLOW_CONNECTIONS false')
            try:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND application_name = %s", (application_name,))
                yield
            finally:
                server.execute(f'ALTER DATABASE "{conn.info.dbname}" ALLOW_CONNECTIONS true')

    return away


@pytest.fixture
def worker_database(database_url: str) -> Database:
    return Database(database_url, application_name=WORKER_APPLICATION)


@pytest.fixture
def worker_pool(worker_database: Database, database: Database) -> Iterator[ConnectionPool]:
    with worker_database.pool(max_size=6, name="outage") as pool:
        pool.timeout = 1.0  # a connection not available within a second is the database being away
        yield pool


def waits_per_task(caplog: pytest.LogCaptureFixture) -> Counter[str]:
    return Counter(str(record.args[0]) for record in caplog.records  # type: ignore[index]
                   if getattr(record, "action", None) == "task_waits_for_database")


def test_a_rabbitmq_task_waits_out_an_outage_longer_than_its_retry_budget(
        amqp_url: str, database: Database, conn: psycopg.Connection, worker_database: Database,
        worker_pool: ConnectionPool, private_queues: Catalog, admin: BlockingChannel, database_away,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="windmill.broker.consumer")
    with running_farm(private_queues, latency_ms=200) as (_, catalog):
        published = publish_samples(conn, database, amqp_url, catalog, "nsfw2")
        queue = catalog["nsfw2"].queue_name
        worker, thread = start_worker(amqp_url, worker_database, worker_pool, catalog, "nsfw2", max_attempts=2)
        try:
            wait_until(lambda: depth(admin, queue) < published, message="the worker to take tasks")
            with database_away(WORKER_APPLICATION):
                wait_until(lambda: max(waits_per_task(caplog).values(), default=0) > 2
                           or depth(admin, queue + ".dlq") > 0, timeout=60,
                           message="a task to wait for the database longer than its 2 attempts")
                assert depth(admin, queue + ".dlq") == 0, "a task was dead-lettered during the outage"
                worker.request_stop()  # a stop while PostgreSQL is away: the tasks go back to their queue
                thread.join(timeout=60)
                assert not thread.is_alive()
                assert results_count(conn) == 0
                wait_until(lambda: depth(admin, queue) == published, message="every task back in its queue")
            with worker_database.pool(max_size=6, name="after-outage") as pool:  # a worker started afresh
                worker, thread = start_worker(amqp_url, worker_database, pool, catalog, "nsfw2", max_attempts=2)
                wait_until(lambda: results_count(conn) >= published, timeout=60, message="a row per task")
                worker.request_stop()
                thread.join(timeout=60)
        finally:
            worker.request_stop()
            thread.join(timeout=60)
    rows = conn.execute("SELECT count(*), count(DISTINCT (image_id, service)), "
                        "count(*) FILTER (WHERE status = 'success') FROM results").fetchone()
    assert rows == (published, published, published)
    assert depth(admin, queue + ".dlq") == 0
    assert conn.execute("SELECT count(*) FROM service_tasks_in_flight").fetchone()[0] == 0


def test_a_job_table_task_that_meets_the_database_away_is_put_back_without_using_an_attempt(
        conn: psycopg.Connection, database: Database, pool: ConnectionPool, worker_database: Database,
        worker_pool: ConnectionPool, catalog: Catalog, database_away) -> None:
    failed: list[BaseException] = []
    claimed = threading.Event()

    def handled(_job: Job, error: BaseException | None, _seconds: float) -> None:
        if error is not None:
            failed.append(error)

    settings = settings_from_mapping({"WORKER_ID": "outage"})
    with running_farm(catalog, latency_ms=300) as (_, shifted), \
            process_farm_client(settings, shifted, worker_database) as farm:
        published = submit_samples(conn, pool, shifted, "nsfw2", worker_database)
        jobs = JobQueue(worker_pool, lease=timedelta(seconds=60), retry_base_s=0.05)
        context = RoleContext(settings=settings, database=worker_database, pool=worker_pool, jobs=jobs,
                              catalog=shifted, worker_id="outage", farm=farm, images=ImageSource(settings),
                              service="nsfw2")
        worker = Worker(jobs, build_role("service", context), worker_id="outage",
                        listen_conninfo=worker_database.conninfo,
                        options=WorkerOptions(concurrency=published, batch_size=published, poll_interval_s=0.1),
                        hooks=WorkerHooks(on_claimed=lambda job: claimed.set(), on_handled=handled))
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            assert claimed.wait(30)
            with database_away(WORKER_APPLICATION):
                wait_until(lambda: len(failed) == published, timeout=30,
                           message="every handler to fail writing its row")
            wait_until(lambda: results_count(conn) == published, timeout=60, message="a row per task")
            wait_until(lambda: not conn.execute("SELECT count(*) FROM jobs WHERE state <> 'done' AND queue = %s",
                                                (shifted["nsfw2"].queue_name,)).fetchone()[0],
                       message="every job recorded")
        finally:
            worker.request_stop()
            thread.join(timeout=60)
    assert all(isinstance(error, psycopg.OperationalError) for error in failed)
    attempts = [row[0] for row in conn.execute("SELECT attempts FROM jobs WHERE queue = %s",
                                               (shifted["nsfw2"].queue_name,))]
    assert attempts == [1] * published, "the database being away used an attempt"
    rows = conn.execute("SELECT count(*), count(DISTINCT (image_id, service)) FROM results").fetchone()
    assert rows == (published, published)
