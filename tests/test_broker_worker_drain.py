"""A RabbitMQ-fed worker process honours its drain: after --drain-timeout it leaves, a second SIGTERM leaves at once,
and the message its blocked handler held goes back to the queue (RabbitMQ redelivers it). The handler blocks on the
stand-in farm, which answers after five minutes; the service's own timeout is two."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from tests.conftest import PYTHON, wait_until
from tests.farm_fixtures import running_farm
from tests.test_rabbitmq import depth
from tests.test_service_role import SAMPLES
from windmill.bench.stage import bench_environment
from windmill.broker import Task
from windmill.broker.rabbitmq import RabbitMQBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths

SERVICE = "ollama"  # its 120 s timeout keeps the handler blocked longer than the old 60 s drain


@dataclass
class BlockedWorker:
    process: subprocess.Popen
    log: Path
    queue: str


@pytest.fixture
def blocked_worker(amqp_url: str, database_url: str, conn: psycopg.Connection, catalog: Catalog,
                   admin: BlockingChannel, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BlockedWorker]:
    """A service worker process whose one task is stuck in a call to the farm; --drain-timeout from the test."""
    drain_timeout = request.param
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images").fetchone()
    with running_farm(catalog, services=[SERVICE], latency_ms=300_000) as (_, shifted), \
            bench_environment(shifted, database_url, amqp_url) as environment:
        queue = next(name for name in environment.queue_names if name.endswith(SERVICE))
        task = Task.for_image(dict(zip(("image_id", "image_filename", "image_path", "image_url"), image, strict=True)),
                              shifted[SERVICE])
        log = tmp_path / "worker.log"
        with RabbitMQBroker(amqp_url) as broker, log.open("ab") as output:
            broker.publish([Task(**{**task.to_message(), "queue_name": queue})])
            process = subprocess.Popen(
                [PYTHON, "-m", "windmill", "worker", "--role", "service", "--service", SERVICE, "--broker", "rabbitmq",
                 "--drain-timeout", str(drain_timeout)],
                env={**environment.env, "LOG_LEVEL": "INFO", "WORKER_ID": "drainer"}, stdout=output, stderr=output,
                cwd=tmp_path)
        try:
            wait_until(lambda: depth(admin, queue) == 0 or process.poll() is not None, timeout=60,
                       message="the worker to take its task")
            assert process.poll() is None, log.read_text()
            yield BlockedWorker(process, log, queue)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


def leaves_and_hands_its_task_back(worker: BlockedWorker, admin: BlockingChannel, why_not: str) -> None:
    """The process exits cleanly well before its blocked handler could return, and RabbitMQ redelivers the task."""
    try:
        assert worker.process.wait(timeout=30) == 0
    except subprocess.TimeoutExpired:
        pytest.fail(why_not)
    wait_until(lambda: depth(admin, worker.queue) == 1, message="the unfinished task back in its queue")


@pytest.mark.parametrize("blocked_worker", [1], indirect=True)
def test_after_the_drain_timeout_a_rabbitmq_worker_leaves_and_its_task_is_redelivered(
        blocked_worker: BlockedWorker, admin: BlockingChannel) -> None:
    blocked_worker.process.send_signal(signal.SIGTERM)
    leaves_and_hands_its_task_back(blocked_worker, admin, "the worker waited for its handler past the drain timeout")
    assert "after the drain timeout (1 s)" in blocked_worker.log.read_text()


@pytest.mark.parametrize("blocked_worker", [600], indirect=True)
def test_a_second_sigterm_makes_a_rabbitmq_worker_leave_at_once(blocked_worker: BlockedWorker,
                                                                admin: BlockingChannel) -> None:
    blocked_worker.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "draining in-flight jobs" in blocked_worker.log.read_text(), message="the first signal seen")
    blocked_worker.process.send_signal(signal.SIGTERM)
    leaves_and_hands_its_task_back(blocked_worker, admin, "the second SIGTERM did not make the worker leave")
