"""The service role fed by RabbitMQ: every primary service answers every sample exactly once, a broker crash
(SIGKILL of a private node, then a restart on its data) mid-run loses and duplicates nothing, and a dead service
ends in error rows after bounded retries."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import FrameType

import pika
import psycopg
import pytest
from pika.adapters.blocking_connection import BlockingConnection
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, wait_until
from tests.farm_fixtures import running_farm
from tests.test_service_role import SAMPLES
from windmill.bench.chaos import write_catalog
from windmill.bench.private_rabbitmq import PrivateRabbitMQ
from windmill.broker.ledger import resend_lost
from windmill.broker.rabbitmq import ATTEMPTS_HEADER, RabbitMQBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.image_cache import ImageSource
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.roles.registry import RoleContext, build_role
from windmill.settings import Settings, settings_from_mapping
from windmill.worker.broker_worker import BrokerWorker
from windmill.worker.farm_client import process_farm_client

log = logging.getLogger(__name__)


def start_worker(amqp_url: str, database: Database, pool: ConnectionPool, catalog: Catalog, selection: str,
                 concurrency: int = 4, *, settings: Settings | None = None,
                 max_attempts: int = 5) -> tuple[BrokerWorker, threading.Thread]:
    settings = settings or settings_from_mapping({"WORKER_ID": "rabbit-service-test"})
    farm = process_farm_client(settings, catalog, database)
    context = RoleContext(settings=settings, database=database, pool=pool, jobs=JobQueue(pool), catalog=catalog,
                          worker_id="rabbit-service-test", farm=farm, images=ImageSource(settings),
                          service=selection)
    worker = BrokerWorker(amqp_url, build_role("service", context), pool, worker_id="rabbit-service-test",
                          concurrency=concurrency, retry_delay_s=0.05, max_attempts=max_attempts)

    def run() -> None:
        try:
            worker.run()
        finally:
            farm.close()

    thread = threading.Thread(target=run)
    thread.start()
    return worker, thread


def publish_samples(conn: psycopg.Connection, database: Database, amqp_url: str, catalog: Catalog,
                    selection: str, folder: Path = SAMPLES) -> int:
    add_paths(conn, [folder], recursive=True)
    with database.connect() as reader, RabbitMQBroker(amqp_url) as broker:
        return submit(reader, conn, broker, catalog.select(selection)).published


def results_count(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM results").fetchone()[0]


def test_every_primary_service_answers_every_sample_once_through_rabbitmq(
        amqp_url: str, database: Database, pool: ConnectionPool, conn: psycopg.Connection,
        private_queues: Catalog) -> None:
    with running_farm(private_queues) as (_, catalog):
        published = publish_samples(conn, database, amqp_url, catalog, "primary")
        worker, thread = start_worker(amqp_url, database, pool, catalog, "primary")
        try:
            wait_until(lambda: results_count(conn) >= published, timeout=90, message="every answer")
        finally:
            worker.request_stop()
            thread.join(timeout=60)
    rows = conn.execute("SELECT service, status, count(*) FROM results GROUP BY service, status").fetchall()
    images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    assert sorted(rows) == sorted((s.name, "success", images) for s in catalog.select("primary"))
    assert conn.execute("SELECT count(*) FROM jobs WHERE queue = 'merge'").fetchone()[0] == images


_POOL_FILES = ("threading.py", "queue.py", "thread.py", "handoff.py")  # a handler thread waiting for work is idle


def _handler_threads() -> str:
    """Where each of the consumer's handler threads is now (its innermost frames of ours): a stalled lane shows."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    busy = []
    for ident, frame in sys._current_frames().items():
        name = names.get(ident, "")
        if not name.startswith("windmill-consumer"):
            continue
        frames = [f"{Path(f.f_code.co_filename).name}:{f.f_lineno} {f.f_code.co_name}"
                  for f in _frames(frame) if not f.f_code.co_filename.endswith(_POOL_FILES)][:4]
        busy.append(f"{name}: {' < '.join(frames) or 'idle'}")
    return "handler threads: " + ("; ".join(busy) or "none")


def _frames(frame: FrameType | None) -> Iterator[FrameType]:
    while frame is not None:
        yield frame
        frame = frame.f_back


def _missing(conn: psycopg.Connection, amqp_url: str, catalog: Catalog) -> tuple[str, bool]:
    """Per service still unanswered: its answers so far and the tasks ready in its queue (a stalled consumer leaves
    them there; a broker that lost them does not). And whether every such queue was read and found empty."""
    answered = dict(conn.execute("SELECT service, count(*) FROM results GROUP BY service").fetchall())
    images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    ready: dict[str, int] = {}
    consumers: dict[str, int] = {}
    dead: dict[str, int] = {}
    note = ""
    try:
        connection = BlockingConnection(pika.URLParameters(amqp_url))
        try:
            channel = connection.channel()
            for service in catalog.select("primary"):
                queue = channel.queue_declare(service.queue_name, passive=True).method
                ready[service.name], consumers[service.name] = queue.message_count, queue.consumer_count
                dlq = channel.queue_declare(f"{service.queue_name}.dlq", passive=True).method
                dead[service.name] = dlq.message_count
        finally:
            if connection.is_open:
                connection.close()
    except Exception as error:  # only a diagnosis: say it could not be read
        note = f" (queues unreadable: {type(error).__name__})"
    behind = [service.name for service in catalog.select("primary") if answered.get(service.name, 0) < images]
    told = [f"{name} {answered.get(name, 0)}/{images} answered, {ready.get(name, '?')} ready, "
            f"{dead.get(name, '?')} dead-lettered, {consumers.get(name, '?')} consumers" for name in behind]
    gone = bool(behind) and all(ready.get(name) == 0 for name in behind)
    return "behind: " + (", ".join(told) or "none") + note, gone


def test_a_broker_restart_mid_run_loses_and_duplicates_nothing(
        private_rabbitmq: PrivateRabbitMQ, database: Database, pool: ConnectionPool, conn: psycopg.Connection,
        queues_on_private_node: Catalog, tmp_path: Path) -> None:
    amqp_url = private_rabbitmq.amqp_url
    for copy in range(12):  # 72 images: enough work to be mid-run when the broker goes
        shutil.copytree(SAMPLES, tmp_path / f"copy{copy}", ignore=shutil.ignore_patterns("*.py", "*.md"))
    # Slow services keep the run going while the broker restarts.
    with running_farm(queues_on_private_node, latency_ms=50) as (_, catalog):
        private_rabbitmq.declare_for_good([service.queue_name for service in catalog.select("primary")])
        published = publish_samples(conn, database, amqp_url, catalog, "primary", tmp_path)
        worker, thread = start_worker(amqp_url, database, pool, catalog, "primary", concurrency=2)

        def how_far() -> str:  # what a timeout reports: where the run and the consumer got to
            consumer = worker.consumer
            return (f"{results_count(conn)} of {published} answers; the consumer reached consuming "
                    f"{consumer.connections} times, {consumer.attempts} attempts failed (last: "
                    f"{consumer.last_failure or 'none'}); worker {'running' if thread.is_alive() else 'STOPPED'}; "
                    f"node {'up' if private_rabbitmq.running() else 'down'} (started {private_rabbitmq.starts} "
                    f"times); {_missing(conn, amqp_url, catalog)[0]}; {_handler_threads()}")

        try:
            wait_until(lambda: results_count(conn) >= published // 20,
                       message=lambda: f"the run to be under way: {how_far()}")
            private_rabbitmq.crash()  # unacked deliveries and the consumer's connections die with it
            assert results_count(conn) < published, "the crash happened mid-run"
            private_rabbitmq.start()
            # A worker that stopped will answer nothing more: say so at once rather than after the timeout.
            try:
                wait_until(lambda: results_count(conn) >= published or not thread.is_alive(), timeout=120,
                           message=lambda: f"every answer after restart: {how_far()}")
            except pytest.fail.Exception:
                # Seen in about one run of ten under load before the queues were declared for good first: after the
                # SIGKILL and restart, one queue's remaining tasks were gone. The node itself said the queue held
                # nothing, ready or unacked, and no channel held a delivery: RabbitMQ (3.10, classic queues) lost
                # confirmed messages in its recovery, with a declaration not yet written for good.
                # Windmill does not rely on it: the scheduler resends, from submit's ledger, the tasks of a queue
                # that holds none of them (done here at once rather than after WINDMILL_LOST_TASK_AFTER_S). Every
                # other outcome (tasks left in a queue, a stopped worker) still fails the test.
                if not (thread.is_alive() and _missing(conn, amqp_url, catalog)[1]):
                    raise
                lost = f"{how_far()}; {private_rabbitmq.describe()}"
                with RabbitMQBroker(amqp_url) as broker:
                    resent = resend_lost(conn, broker, [service.queue_name for service in catalog.services],
                                         older_than=timedelta(0)).resent
                assert resent, f"tasks gone from RabbitMQ and not in the ledger: {lost}"
                log.warning("RabbitMQ lost tasks in its crash; resent from the ledger: %s; %s", resent, lost)
                wait_until(lambda: results_count(conn) >= published or not thread.is_alive(), timeout=60,
                           message=lambda: f"every answer after resending {resent}: {how_far()}")
            assert results_count(conn) >= published, f"the worker stopped: {how_far()}"
        finally:
            worker.request_stop()
            thread.join(timeout=60)
    pairs = conn.execute("SELECT count(DISTINCT (image_id, service)) FROM results").fetchone()[0]
    assert (results_count(conn), pairs) == (published, published)
    assert conn.execute("SELECT count(*) FROM results WHERE status <> 'success'").fetchone()[0] == 0


def test_a_dead_service_ends_in_error_rows_once_its_outage_wait_is_over(
        amqp_url: str, database: Database, pool: ConnectionPool, conn: psycopg.Connection,
        private_queues: Catalog) -> None:
    settings = settings_from_mapping({"WORKER_ID": "rabbit-service-test", "WINDMILL_OUTAGE_WAIT_S": "1"})
    with running_farm(private_queues, services=["blip"]) as (_, catalog):  # nothing serves yolov8
        published = publish_samples(conn, database, amqp_url, catalog, "yolov8")
        worker, thread = start_worker(amqp_url, database, pool, catalog, "yolov8", settings=settings)
        try:
            wait_until(lambda: results_count(conn) >= published, timeout=60, message="an error row per task")
        finally:
            worker.request_stop()
            thread.join(timeout=60)
    rows = conn.execute("SELECT status, error_message FROM results").fetchall()
    assert len(rows) == published
    assert all(status == "error" and "yolov8" in message and "(down for " in message for status, message in rows)


def test_a_worker_process_takes_its_retry_budget_from_the_environment(
        amqp_url: str, database: Database, conn: psycopg.Connection, private_queues: Catalog,
        worker_env: dict[str, str], tmp_path: Path) -> None:
    # yolov8 answers every request with HTTP 500: every attempt fails, and the last one is dead-lettered.
    yolov8 = private_queues["yolov8"]
    config = tmp_path / "service_config.json"
    with running_farm(private_queues, services=["yolov8"], error_rate=1.0) as (_, shifted):
        catalog = write_catalog(shifted, config, port_offset=0, queue_prefix=yolov8.queue_prefix, timeout_s=1.0)
        published = publish_samples(conn, database, amqp_url, catalog, "yolov8", SAMPLES)
        env = {**worker_env, "WINDMILL_AMQP_URL": amqp_url, "WINDMILL_SERVICE_CONFIG": str(config),
               "WINDMILL_AMQP_TASK_ATTEMPTS": "2", "WINDMILL_AMQP_RETRY_DELAY_S": "0.05"}
        with open(tmp_path / "worker.log", "wb") as log:
            worker = subprocess.Popen([PYTHON, "-m", "windmill", "worker", "--role", "service", "--service", "yolov8",
                                       "--broker", "rabbitmq"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: results_count(conn) >= published, timeout=60, message="an error row per task")
        finally:
            worker.terminate()
            worker.wait(60)
    with BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        channel = connection.channel()
        dead = [channel.basic_get(catalog["yolov8"].queue_name + ".dlq", auto_ack=True)[1] for _ in range(published)]
    # Each task was tried twice, as the environment said (the dead letter's header counts the attempts made).
    assert [properties.headers[ATTEMPTS_HEADER] for properties in dead] == [2] * published


def test_run_takes_the_service_tasks_from_rabbitmq_when_it_is_configured(
        amqp_url: str, database: Database, conn: psycopg.Connection, private_queues: Catalog,
        worker_env: dict[str, str], tmp_path: Path) -> None:
    # `submit` sends the tasks to RabbitMQ when it is configured; `run` once claimed them from the job table only,
    # and every task waited in its queue with no consumer.
    with running_farm(private_queues, services=["metadata"]) as (_, shifted):
        config = tmp_path / "service_config.json"
        catalog = write_catalog(shifted, config, port_offset=0, queue_prefix=shifted["metadata"].queue_prefix,
                                timeout_s=10.0)
        published = publish_samples(conn, database, amqp_url, catalog, "metadata")
        env = {**worker_env, "WINDMILL_AMQP_URL": amqp_url, "WINDMILL_SERVICE_CONFIG": str(config),
               "WORKER_ID": "run-rabbitmq-test"}
        with open(tmp_path / "run.log", "wb") as log_file:
            machine = subprocess.Popen([PYTHON, "-m", "windmill", "run"], env=env, stdout=log_file,
                                       stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: results_count(conn) >= published, timeout=60,
                       message=lambda: f"`run` to answer the {published} RabbitMQ tasks; its log: "
                                       f"{(tmp_path / 'run.log').read_text()[-3000:]}")
        finally:
            machine.terminate()
            machine.wait(60)
    rows = conn.execute("SELECT service, status, count(*) FROM results GROUP BY service, status").fetchall()
    assert rows == [("metadata", "success", published)]
    assert machine.returncode == 0
