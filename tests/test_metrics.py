"""Prometheus metrics: a real worker process serves its counters, latency histograms and the database's queue
figures; Animal Farm calls are timed by outcome; a scrape answers even when PostgreSQL cannot."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, REPOSITORY, wait_until
from tests.farm_fixtures import running_farm
from tests.support.probe_worker import PROBE_QUEUE, PROBE_TABLE
from windmill.broker.base import Task
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.farm import FarmClient, ServiceCallError
from windmill.images import prepare_image
from windmill.jobs import Job
from windmill.metrics import WorkerMetrics, job_service, start_metrics_server
from windmill.roles.registry import Role, TaskHandling
from windmill.settings import settings_from_mapping
from windmill.worker.group import WorkerGroup
from windmill.worker.layout import RoleSpec

PROBE_SCRIPT = REPOSITORY / "tests" / "support" / "probe_worker.py"
WAITING_QUEUE = "metrics_waiting"  # no worker consumes it: its jobs stay queued


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of http://127.0.0.1:port/metrics as {(name, labels): value}."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def metrics_worker(conn: psycopg.Connection, worker_env: dict[str, str], tmp_path: Path) -> Iterator[int]:
    """A probe worker process serving metrics; yields its metrics port."""
    conn.execute(PROBE_TABLE)
    conn.execute("TRUNCATE public.probe_runs")
    port = free_port()
    log = open(tmp_path / "worker.log", "ab")  # noqa: SIM115  (closed below, after the process)
    process = subprocess.Popen([PYTHON, str(PROBE_SCRIPT), "--metrics-port", str(port), "--concurrency", "2"],
                               env={**worker_env, "WORKER_ID": "metrics-probe"}, stdout=log, stderr=log, cwd=tmp_path)
    try:
        wait_until(lambda: _serving(port) or process.poll() is not None, timeout=30, message="the metrics endpoint")
        assert process.poll() is None, (tmp_path / "worker.log").read_text()
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _serving(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_metrics_endpoint_serves_the_counters(conn: psycopg.Connection, metrics_worker: int) -> None:
    port = metrics_worker
    conn.execute("INSERT INTO jobs (queue, payload) SELECT %s, '{}' FROM generate_series(1, 2)", (WAITING_QUEUE,))
    conn.execute("INSERT INTO jobs (queue, payload) SELECT %s, %s FROM generate_series(1, 3)",
                 (PROBE_QUEUE, Jsonb({"sleep": 0.05})))
    conn.execute("INSERT INTO jobs (queue, payload) VALUES (%s, %s)",
                 (PROBE_QUEUE, Jsonb({"fail": "broken on purpose", "permanent": True})))
    # Two RabbitMQ tasks of yolov8 without an answer, one published 20 minutes ago (submit's ledger).
    image_id = conn.execute("INSERT INTO images (image_filename, image_path) VALUES ('m.jpg', '/m.jpg') "
                            "RETURNING image_id").fetchone()[0]
    other = conn.execute("INSERT INTO images (image_filename, image_path) VALUES ('n.jpg', '/n.jpg') "
                         "RETURNING image_id").fetchone()[0]
    conn.execute("INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id, submitted_at) VALUES "
                 "(%s, 'yolov8', 'queue_yolov8', gen_random_uuid(), now() - interval '20 minutes'), "
                 "(%s, 'yolov8', 'queue_yolov8', gen_random_uuid(), now())", (image_id, other))
    wait_until(lambda: conn.execute("SELECT count(*) FROM jobs WHERE queue = %s AND state IN ('done', 'dead')",
                                    (PROBE_QUEUE,)).fetchone()[0] == 4, timeout=30, message="the probe jobs to end")

    samples = scrape(port)
    assert sample(samples, "windmill_jobs_done_total", role="probe", service="") == 3
    assert sample(samples, "windmill_jobs_failed_total", role="probe", service="") == 1
    assert sample(samples, "windmill_job_duration_seconds_count", role="probe", service="") == 4
    assert sample(samples, "windmill_job_duration_seconds_sum", role="probe", service="") >= 3 * 0.05
    assert sample(samples, "windmill_job_duration_seconds_bucket", role="probe", service="", le="+Inf") == 4
    # Read from the database at scrape time: the queue nobody consumes, and the probe queue's dead job.
    assert sample(samples, "windmill_queue_jobs", queue=WAITING_QUEUE, state="queued") == 2
    assert sample(samples, "windmill_queue_jobs", queue=PROBE_QUEUE, state="dead") == 1
    assert sample(samples, "windmill_queue_oldest_age_seconds", queue=WAITING_QUEUE) >= 0
    # What waits in RabbitMQ, which the job table's figures do not hold (a RabbitMQ deployment's alerts need it).
    assert sample(samples, "windmill_tasks_in_flight", service="yolov8", queue="queue_yolov8") == 2
    assert sample(samples, "windmill_tasks_in_flight_oldest_age_seconds", service="yolov8",
                  queue="queue_yolov8") >= 20 * 60
    usage = sample(samples, "windmill_pg_notification_queue_usage")
    assert usage is not None and 0 <= usage < 1
    assert sample(samples, "windmill_metrics_database_up") == 1


def test_service_calls_are_timed_by_service_and_outcome(catalog: Catalog) -> None:
    metrics = WorkerMetrics()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buffer, "JPEG")
    image = prepare_image(buffer.getvalue())
    calls = "windmill_service_call_duration_seconds_count"
    seen: list[tuple[str, str]] = []
    with running_farm(catalog, services=["colors"]) as (_, shifted):
        with FarmClient(shifted, observer=metrics.observe_service_call) as client:
            client.analyze("colors", image)
            with pytest.raises(ServiceCallError):
                client.analyze("yolov8", image)  # not served by this stand-in: nothing listens on its port
        # Another client's calls are its own observer's only.
        with FarmClient(shifted, observer=lambda service, _seconds, outcome: seen.append((service, outcome))) as own:
            own.analyze("colors", image)
    assert metrics.registry.get_sample_value(calls, {"service": "colors", "outcome": "success"}) == 1
    assert metrics.registry.get_sample_value(calls, {"service": "yolov8", "outcome": "connect"}) == 1
    assert seen == [("colors", "success")]


def test_a_worker_group_builds_its_farm_client_with_the_metrics_observer(
        catalog: Catalog, database: Database, pool: ConnectionPool) -> None:
    metrics = WorkerMetrics()
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(buffer, "JPEG")
    with running_farm(catalog, services=["colors"]) as (_, shifted):
        group = WorkerGroup(settings_from_mapping({"WORKER_ID": "metrics-group"}), database, pool, shifted,
                            (RoleSpec("postprocess", "colors"),), metrics=metrics)
        try:
            group.farm.analyze("colors", prepare_image(buffer.getvalue()))
        finally:
            group.farm.close()
    calls = "windmill_service_call_duration_seconds_count"
    assert metrics.registry.get_sample_value(calls, {"service": "colors", "outcome": "success"}) == 1


def test_a_scrape_answers_when_the_database_cannot() -> None:
    metrics = WorkerMetrics()
    # Nothing listens on this port: every connection attempt fails, the pool never has a connection to give.
    unreachable = ConnectionPool(f"host=127.0.0.1 port={free_port()} dbname=none connect_timeout=1", min_size=0,
                                 max_size=1, open=True, name="unreachable")
    server = start_metrics_server(0, metrics.registry, address="127.0.0.1")
    try:
        metrics.watch_database(unreachable, timeout_s=0.5)
        samples = scrape(server.port)
    finally:
        server.close()
        unreachable.close()
    assert sample(samples, "windmill_metrics_database_up") == 0
    assert not any(name == "windmill_queue_jobs" for name, _ in samples)


def test_broker_tasks_are_counted_by_their_service() -> None:
    metrics = WorkerMetrics()

    def handle(task: Task, _first_delivery: bool) -> None:
        if task.image_id == 2:
            raise RuntimeError("service down")

    role = Role(name="service", queues=("queue_blip",), handle=lambda job: None, tasks=TaskHandling(
        handle=handle, on_dead_letter=lambda task, error: None))
    counted = metrics.counting_tasks(role)
    assert counted.tasks is not None
    for image_id in (1, 2):
        task = Task("t", image_id, "x.jpg", None, None, "2026-01-01", "blip", "queue_blip")
        if image_id == 2:
            with pytest.raises(RuntimeError):
                counted.tasks.handle(task, True)
        else:
            counted.tasks.handle(task, True)
    labels = {"role": "service", "service": "blip"}
    assert metrics.registry.get_sample_value("windmill_jobs_done_total", labels) == 1
    assert metrics.registry.get_sample_value("windmill_jobs_failed_total", labels) == 1


@pytest.mark.parametrize(("queue", "service"), [
    ("queue_yolov8", "yolov8"), ("postprocess_face", "face"), ("merge", ""), ("caption_score", ""),
])
def test_the_service_label_comes_from_the_queue(queue: str, service: str) -> None:
    assert job_service(Job(1, queue, {}, None, 1, 5)) == service
