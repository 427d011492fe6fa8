"""A slow service holds only its own lane (windmill.worker.lanes): a real worker process for Ollama and YOLOv8,
against the stand-in with Ollama taking a minute per request one at a time, answers every YOLOv8 task while every
Ollama task is still in flight or waiting, and has taken no more Ollama tasks than its Ollama lane can start (from
RabbitMQ, one more: the one its prefetch keeps waiting, windmill.worker.lanes). Both brokers. Not a timed
assertion: what is counted is what finished while the slow tasks had not."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pika
import psycopg
import pytest
from pika.adapters.blocking_connection import BlockingConnection
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, wait_until
from tests.farm_fixtures import running_farm
from tests.test_service_role import SAMPLES
from windmill.broker import JobTableBroker
from windmill.broker.rabbitmq import RabbitMQBroker
from windmill.catalog import bundled_catalog_path, load_catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.simfarm.contract import PROFILES
from windmill.simfarm.latency import parse_profile
from windmill.worker.lanes import plan_lanes

SLOW, FAST = "ollama", "yolov8"
THREADS = 4  # the worker's budget: two lanes of two threads
COPIES = 2  # of the samples: a dozen images, so the slow service's queue outlasts its lane many times over


def profile():
    """Ollama a minute per request, one at a time (no Ollama task can finish during the test); YOLOv8 quick."""
    return parse_profile({"services": {SLOW: {"mean_ms": 60_000, "capacity": 1},
                                       FAST: {"mean_ms": 20, "capacity": 2}}},
                         name="one slow service", source="test", known_services=PROFILES)


def catalog_file(folder: Path, queue_prefix: str | None) -> Path:
    """The bundled catalog, with queue names of our own when given (RabbitMQ is shared by every test run)."""
    document = json.loads(bundled_catalog_path().read_text())
    for entry in document["services"].values():
        entry["queue_prefix"] = queue_prefix or entry.get("queue_prefix", "queue_")
    path = folder / "service_config.json"
    path.write_text(json.dumps(document))
    return path


def add_images(conn: psycopg.Connection, folder: Path) -> int:
    for copy in range(COPIES):
        shutil.copytree(SAMPLES, folder / f"copy{copy}")
    add_paths(conn, [folder], recursive=True)
    return conn.execute("SELECT count(*) FROM images").fetchone()[0]


def answers(conn: psycopg.Connection, service: str) -> int:
    return conn.execute("SELECT count(*) FROM results WHERE service = %s", (service,)).fetchone()[0]


def ready_in_rabbitmq(amqp_url: str, queue: str) -> int:
    """Messages of the queue that no consumer holds (a passive declare counts only those)."""
    connection = BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


@pytest.mark.parametrize("broker", ["postgres", "rabbitmq"])
def test_detector_tasks_complete_while_every_task_of_a_slow_service_is_still_in_flight(
        request: pytest.FixtureRequest, database: Database, conn: psycopg.Connection, pool: ConnectionPool,
        worker_env: dict[str, str], tmp_path: Path, broker: str) -> None:
    amqp_url = request.getfixturevalue("amqp_url") if broker == "rabbitmq" else None
    # With RabbitMQ, queues of our own, deleted afterwards.
    prefix = request.getfixturevalue("private_queues")[SLOW].queue_prefix if amqp_url else None
    catalog_path = catalog_file(tmp_path, prefix)
    catalog = load_catalog(catalog_path)
    env = {**worker_env, "WINDMILL_SERVICE_CONFIG": str(catalog_path), "WORKER_ID": "isolation"}
    if amqp_url:
        env["WINDMILL_AMQP_URL"] = amqp_url
    images = add_images(conn, tmp_path / "images")
    [slow_lane, _] = plan_lanes((catalog[SLOW].queue_name, catalog[FAST].queue_name),
                                {catalog[SLOW].queue_name: None, catalog[FAST].queue_name: None}, THREADS)

    def publish(service: str) -> None:
        with database.connect() as reader:
            if amqp_url:
                with RabbitMQBroker(amqp_url) as rabbitmq:
                    submit(reader, conn, rabbitmq, shifted.select(service))
            else:
                submit(reader, conn, JobTableBroker(JobQueue(pool)), shifted.select(service))

    with running_farm(catalog, services=[SLOW, FAST], latency_profile=profile()) as (farm, shifted):
        env["WINDMILL_PORT_OFFSET"] = str(shifted[SLOW].port - catalog[SLOW].port)
        worker = subprocess.Popen([PYTHON, "-m", "windmill", "worker", "--role", "service", "--service",
                                   f"{SLOW},{FAST}", "--concurrency", str(THREADS), "--broker", broker,
                                   "--drain-timeout", "0"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            # The slow service's tasks come first and take every thread they may; the detector's come after.
            publish(SLOW)
            wait_until(lambda: farm.load_stats()[SLOW].held >= slow_lane.threads, timeout=60, interval=0.1,
                       message="the slow service's lane busy")
            publish(FAST)
            wait_until(lambda: answers(conn, FAST) == images, timeout=60, interval=0.1,
                       message="every detector task answered while the slow service holds its lane")
            slow = farm.load_stats()[SLOW]
            slow_answers = answers(conn, SLOW)
            if amqp_url:
                not_taken = ready_in_rabbitmq(amqp_url, catalog[SLOW].queue_name)
            else:
                not_taken = conn.execute("SELECT count(*) FROM jobs WHERE queue = %s AND state = 'queued'",
                                         (catalog[SLOW].queue_name,)).fetchone()[0]
        finally:
            worker.terminate()
            worker.wait(timeout=60)
    assert slow_answers == 0 and slow.requests == slow_lane.threads, "every slow task still in flight or waiting"
    assert slow.held == slow_lane.threads, f"the slow service holds {slow.held} of the worker's threads"
    # From RabbitMQ a lane holds one task besides those it runs, so that a thread that finishes starts the next at
    # once; from the job table it claims no more than it can start.
    taken = slow_lane.prefetch if amqp_url else slow_lane.threads
    assert not_taken == images - taken, "a lane takes no more tasks than it can start, and from RabbitMQ one waiting"
