"""A service that is down: a worker's calls wait for it (windmill/farm/outages.py) instead of spending their
attempts, one call at a time tries it again, its first answer lets the others go, and past WINDMILL_OUTAGE_WAIT_S a
failure of the service is final. The outages of the worker tests are real: the stand-in's ports closed, then
served again."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client import generate_latest
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, wait_until
from tests.farm_fixtures import running_farm
from tests.test_rabbitmq import depth, drain_queue
from tests.test_service_rabbitmq import publish_samples, results_count, start_worker
from tests.test_service_role import SAMPLES, submit_samples
from windmill.bench.stage import bench_environment
from windmill.broker import Task
from windmill.broker.rabbitmq import ATTEMPTS_HEADER, RabbitMQBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.errors import AttemptGivenBack
from windmill.farm import FarmClient, ServiceCallError
from windmill.farm.outages import OutageWaitStopped, ServiceOutages
from windmill.image_cache import ImageSource
from windmill.jobs import JobQueue
from windmill.metrics import WorkerMetrics
from windmill.monitor import collect_status, format_status
from windmill.roles.registry import RoleContext, build_role
from windmill.settings import settings_from_mapping
from windmill.worker.runtime import Worker, WorkerOptions

REFUSED = ServiceCallError("connection refused", kind="connect", service="yolov8")


class Service:
    """A stand-in for one call's target: refuses until `up`, then answers; counts the calls at once."""

    def __init__(self, *, failure: ServiceCallError = REFUSED) -> None:
        self.up = threading.Event()
        self.failure = failure
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def call(self) -> str:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(0.01)
            if not self.up.is_set():
                raise self.failure
            return "answer"
        finally:
            with self._lock:
                self.in_flight -= 1


def fast(wait_s: float = 60.0) -> ServiceOutages:
    return ServiceOutages(wait_s, first_probe_s=0.05, probe_cap_s=0.1)


def in_threads(count: int, target: Callable[[], object]) -> tuple[list[threading.Thread], list[object]]:
    outcomes: list[object] = []

    def run() -> None:
        try:
            outcomes.append(target())
        except BaseException as error:
            outcomes.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads, outcomes


# -- the rule ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failure", [REFUSED, ServiceCallError("HTTP 503", kind="http_5xx", status_code=503),
                                     ServiceCallError("HTTP 502", kind="http_5xx", status_code=502),
                                     ServiceCallError("HTTP 429", kind="http_429", status_code=429)])
def test_calls_wait_for_a_service_that_is_down_one_trying_at_a_time_and_go_when_it_answers(
        failure: ServiceCallError) -> None:
    outages, service = fast(), Service(failure=failure)
    threads, outcomes = in_threads(4, lambda: outages.call("yolov8", service.call))
    wait_until(lambda: service.calls >= 8, message="the service tried again and again")
    assert outages.down().keys() == {"yolov8"}
    service.up.set()
    for thread in threads:
        thread.join(10)
    assert outcomes == ["answer"] * 4
    assert outages.down() == {}


def test_while_a_service_is_down_only_its_probe_goes_out() -> None:
    outages, service = fast(), Service()
    first, _ = in_threads(1, lambda: outages.call("yolov8", service.call))
    wait_until(lambda: "yolov8" in outages.down(), message="the service found down")
    later, outcomes = in_threads(5, lambda: outages.call("yolov8", service.call))  # these meet it down
    wait_until(lambda: service.calls >= 10, message="ten probes")
    assert service.most_in_flight == 1, "calls went out together while the service was known to be down"
    service.up.set()
    for thread in first + later:
        thread.join(10)
    assert outcomes == ["answer"] * 5


def test_a_failure_of_the_call_rather_than_the_service_is_the_queues_to_retry() -> None:
    outages = fast()
    for failure in (ServiceCallError("HTTP 500", kind="http_5xx", status_code=500),
                    ServiceCallError("the connection broke", kind="network"),
                    ServiceCallError("no answer in 30 s", kind="timeout"),
                    ServiceCallError("image too large", kind="rejected", status_code=413)):
        service = Service(failure=failure)
        with pytest.raises(ServiceCallError) as raised:
            outages.call("yolov8", service.call)
        assert raised.value is failure and service.calls == 1
        assert outages.down() == {}


def test_a_service_down_longer_than_the_wait_fails_the_call_which_says_how_long_for_the_queue_to_retry() -> None:
    outages, service = fast(wait_s=0.4), Service()
    started = time.monotonic()
    with pytest.raises(ServiceCallError) as raised:
        outages.call("yolov8", service.call)
    assert time.monotonic() - started >= 0.4
    assert raised.value.kind == "connect" and raised.value.retryable
    assert "connection refused (down for 0 s)" in raised.value.reason
    assert service.calls >= 3, "it was not tried again while it was down"
    started = time.monotonic()  # past the wait, a call is not held: it fails at once
    with pytest.raises(ServiceCallError):
        outages.call("yolov8", service.call)
    assert time.monotonic() - started < 0.2
    service.up.set()
    assert outages.call("yolov8", service.call) == "answer" and outages.down() == {}


def test_a_stop_ends_the_waits_and_gives_the_attempts_back() -> None:
    outages, service = fast(), Service()
    threads, outcomes = in_threads(3, lambda: outages.call("yolov8", service.call))
    wait_until(lambda: service.calls >= 5, message="the service found down")
    outages.stop()
    for thread in threads:
        thread.join(5)
    assert len(outcomes) == 3 and all(isinstance(outcome, OutageWaitStopped) for outcome in outcomes)
    assert all(isinstance(outcome, AttemptGivenBack) for outcome in outcomes)


def test_a_stopping_worker_still_calls_a_service_that_answers() -> None:
    outages, down, up = fast(), Service(), Service()
    up.up.set()
    threads, outcomes = in_threads(1, lambda: outages.call("yolov8", down.call))
    wait_until(lambda: "yolov8" in outages.down(), message="yolov8 found down")
    outages.stop()  # a handler that had not reached its call when the stop came finishes it (the drain)
    assert outages.call("rtdetr", up.call) == "answer"
    threads[0].join(5)
    assert len(outcomes) == 1 and isinstance(outcomes[0], OutageWaitStopped)
    with pytest.raises(OutageWaitStopped):
        outages.call("yolov8", down.call)


def test_other_services_do_not_wait_for_one_that_is_down() -> None:
    outages, down, up = fast(), Service(), Service()
    up.up.set()
    threads, _ = in_threads(1, lambda: outages.call("yolov8", down.call))
    wait_until(lambda: "yolov8" in outages.down(), message="yolov8 found down")
    assert outages.call("rtdetr", up.call) == "answer"
    down.up.set()
    threads[0].join(5)


# -- workers, the stand-in's ports closed for longer than the retry budget ----------------------------------------


@contextmanager
def service_worker(database: Database, pool: ConnectionPool, catalog: Catalog, client: FarmClient, jobs: JobQueue,
                   **options: float) -> Iterator[Worker]:
    """A job-table worker of nsfw2's tasks in this process, calling through `client`; stopped when the block ends,
    its calls' waits for a service that is down ended as a worker process's stop ends them."""
    settings = settings_from_mapping({"WORKER_ID": "service-outage"})
    context = RoleContext(settings=settings, database=database, pool=pool, jobs=jobs, catalog=catalog,
                          worker_id="service-outage", farm=client, images=ImageSource(settings), service="nsfw2")
    worker = Worker(jobs, build_role("service", context), worker_id="service-outage",
                    listen_conninfo=database.conninfo, options=WorkerOptions(concurrency=2, poll_interval_s=0.1,
                                                                             **options))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        yield worker
    finally:
        worker.request_stop()
        client.stop_waiting()
        thread.join(timeout=60)


def test_a_job_table_task_waits_out_its_service_being_down_longer_than_its_retry_budget(
        conn: psycopg.Connection, database: Database, pool: ConnectionPool, catalog: Catalog) -> None:
    refusals: list[str] = []

    def observe(service: str, _seconds: float, outcome: str) -> None:
        if outcome == "connect":
            refusals.append(service)

    with running_farm(catalog) as (farm, shifted), \
            FarmClient(shifted, observer=observe, outages=fast()) as client:
        farm.stop()
        published = submit_samples(conn, pool, shifted, "nsfw2", database)
        # Its retry budget, unless the calls wait: 0.05 + 0.1 + 0.2 + 0.4 s
        with service_worker(database, pool, shifted, client, JobQueue(pool, lease=timedelta(seconds=60),
                                                                      retry_base_s=0.05)):
            wait_until(lambda: len(refusals) >= 3, message="the service refused")
            time.sleep(1.5)  # twice the retry budget
            farm.start()
            wait_until(lambda: results_count(conn) == published, timeout=30, message="a row per task")
    rows = conn.execute("SELECT status, count(*) FROM results GROUP BY status").fetchall()
    assert rows == [("success", published)], "the outage turned tasks into error rows"
    attempts = conn.execute("SELECT array_agg(DISTINCT attempts) FROM jobs WHERE queue = %s",
                            (shifted["nsfw2"].queue_name,)).fetchone()[0]
    assert attempts == [1], "waiting for the service used attempts"


def test_a_worker_stopped_while_its_service_is_down_gives_the_jobs_back_at_once(
        conn: psycopg.Connection, database: Database, pool: ConnectionPool, catalog: Catalog) -> None:
    with running_farm(catalog) as (farm, shifted), FarmClient(shifted, outages=fast()) as client:
        farm.stop()
        submit_samples(conn, pool, shifted, "nsfw2", database)
        with service_worker(database, pool, shifted, client, JobQueue(pool, lease=timedelta(seconds=60)),
                            drain_timeout_s=30):
            wait_until(lambda: "nsfw2" in client.outages.down(), message="the service found down")  # type: ignore[union-attr]  # given
            time.sleep(0.3)
            stopped = time.monotonic()
    assert time.monotonic() - stopped < 10, "the stop waited for the drain timeout"
    states = conn.execute("SELECT state, attempts, count(*) FROM jobs WHERE queue = %s GROUP BY 1, 2",
                          (shifted["nsfw2"].queue_name,)).fetchall()
    assert {(state, attempts) for state, attempts, _ in states} <= {("queued", 0), ("failed", 0)}, states
    assert results_count(conn) == 0


def test_a_rabbitmq_task_waits_out_its_service_being_down_longer_than_its_retry_budget(
        amqp_url: str, conn: psycopg.Connection, database: Database, pool: ConnectionPool, private_queues: Catalog,
        admin: BlockingChannel, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="windmill.farm.outages")
    settings = settings_from_mapping({"WORKER_ID": "rabbit-service-test", "WINDMILL_OUTAGE_WAIT_S": "60"})
    with running_farm(private_queues) as (farm, catalog):
        farm.stop()
        published = publish_samples(conn, database, amqp_url, catalog, "nsfw2")
        queue = catalog["nsfw2"].queue_name
        worker, thread = start_worker(amqp_url, database, pool, catalog, "nsfw2", settings=settings, max_attempts=2)
        try:
            wait_until(lambda: any(getattr(record, "action", None) == "service_down" for record in caplog.records),
                       message="the service found down")
            time.sleep(1.2)  # past its retry budget of 2 attempts 0.05 s apart, and a probe
            farm.start()
            wait_until(lambda: results_count(conn) == published, timeout=60, message="a row per task")
        finally:
            worker.request_stop()
            thread.join(timeout=60)
    rows = conn.execute("SELECT status, count(*) FROM results GROUP BY status").fetchall()
    assert rows == [("success", published)], "the outage turned tasks into error rows"
    assert depth(admin, queue + ".dlq") == 0


def test_a_worker_process_stopped_while_its_service_is_down_leaves_at_once_its_task_back_uncounted(
        amqp_url: str, database_url: str, conn: psycopg.Connection, catalog: Catalog, admin: BlockingChannel,
        tmp_path: Path) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images").fetchone()
    with running_farm(catalog, services=["nsfw2"]) as (farm, shifted), \
            bench_environment(shifted, database_url, amqp_url) as environment:
        farm.stop()
        queue = next(name for name in environment.queue_names if name.endswith("nsfw2"))
        task = Task.for_image(dict(zip(("image_id", "image_filename", "image_path", "image_url"), image, strict=True)),
                              shifted["nsfw2"])
        log = tmp_path / "worker.log"
        with RabbitMQBroker(amqp_url) as broker, log.open("ab") as output:
            broker.publish([Task(**{**task.to_message(), "queue_name": queue})])
            process = subprocess.Popen(
                [PYTHON, "-m", "windmill", "worker", "--role", "service", "--service", "nsfw2", "--broker", "rabbitmq",
                 "--drain-timeout", "60"],
                env={**environment.env, "LOG_LEVEL": "INFO", "WORKER_ID": "outage"}, stdout=output, stderr=output,
                cwd=tmp_path)
        try:
            wait_until(lambda: "nsfw2 is down" in log.read_text() or process.poll() is not None, timeout=60,
                       message="the worker to find its service down")
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        [(properties, _body)] = drain_queue(admin, queue)
    assert (properties.headers or {}).get(ATTEMPTS_HEADER) is None, "the wait for the service counted as an attempt"
    assert results_count(conn) == 0


def test_a_worker_exports_how_long_each_service_it_finds_down_has_been_down() -> None:
    outages, service = fast(), Service()
    metrics = WorkerMetrics()
    metrics.watch_outages(outages.down)
    assert "windmill_service_down_seconds{" not in generate_latest(metrics.registry).decode()
    threads, _ = in_threads(1, lambda: outages.call("rtdetr", service.call))
    wait_until(lambda: "rtdetr" in outages.down(), message="the service found down")
    assert 'windmill_service_down_seconds{service="rtdetr"}' in generate_latest(metrics.registry).decode()
    service.up.set()
    threads[0].join(5)
    assert "windmill_service_down_seconds{" not in generate_latest(metrics.registry).decode()


def test_status_names_the_services_live_workers_find_down_and_why(
        conn: psycopg.Connection, database: Database, pool: ConnectionPool, catalog: Catalog) -> None:
    with running_farm(catalog) as (farm, shifted), FarmClient(shifted, outages=fast()) as client:
        farm.stop()
        submit_samples(conn, pool, shifted, "nsfw2", database)
        with service_worker(database, pool, shifted, client, JobQueue(pool, lease=timedelta(seconds=60)),
                            heartbeat_interval_s=0.2):
            wait_until(lambda: collect_status(conn)["services_down"], message="a heartbeat saying nsfw2 is down")
            [down] = collect_status(conn)["services_down"]
            text = format_status(collect_status(conn))
            farm.start()
            wait_until(lambda: not collect_status(conn)["services_down"], timeout=30,
                       message="a heartbeat saying nsfw2 answers again")
    assert (down["service"], down["workers"]) == ("nsfw2", 1)
    assert "nsfw2: cannot connect to" in down["reason"] and down["down_for_s"] >= 0
    assert "Services down, as live workers find them" in text and "nsfw2: cannot connect to" in text
    assert "Services down" not in format_status(collect_status(conn))
