"""Prometheus metrics of a worker process (`worker --metrics-port`): job outcomes and handler latency by role and
service, Animal Farm call latency, and — read from PostgreSQL when scraped — queue depths, the age of the oldest
job due and how full the NOTIFY queue is.

Counters and histograms live in the process and are fed by the worker's hooks and the farm client's observer;
the queue figures are facts of the database shared by every worker, so they are read at scrape time instead of
being kept up to date. Each WorkerMetrics has its own registry (never prometheus_client's global one), so a test
or a process can hold several.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from windmill.broker.base import Task
from windmill.db.queries import fetch_value, query
from windmill.errors import WindmillError, first_line
from windmill.jobs import Job
from windmill.roles.registry import Role

log = logging.getLogger(__name__)

# Handlers range from a no-op (microseconds) to an Ollama caption (up to its 120 s timeout, retried inside).
HANDLER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SERVICE_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# A scrape must answer even when PostgreSQL is slow or away: Prometheus' own default scrape timeout is 10 s.
SCRAPE_TIMEOUT_S = 2.0
# The columns of the queue_depths view (sql/0007_monitoring_views.sql) exported as windmill_queue_jobs{state}.
QUEUE_STATES = ("queued", "scheduled", "retrying", "running", "expired_leases", "dead")
# Queue prefixes that name the service a job calls (queue_<service>, postprocess_<service>).
_SERVICE_QUEUE_PREFIXES = ("queue_", "postprocess_")


def job_service(job: Job) -> str:
    """The service a job calls, for the `service` label: "" for jobs of no single service (merge, consensus)."""
    for prefix in _SERVICE_QUEUE_PREFIXES:
        if job.queue.startswith(prefix):
            return job.queue[len(prefix):]
    return ""


class WorkerMetrics:
    """The metrics of one worker process and the seams that feed them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.port: int | None = None  # where the endpoint listens, once it does
        labels = ("role", "service")
        self.jobs_done = Counter("windmill_jobs_done", "Handler runs that succeeded.", labels,
                                 registry=self.registry)
        self.jobs_failed = Counter("windmill_jobs_failed", "Handler runs that raised (each failed attempt counts).",
                                   labels, registry=self.registry)
        self.job_duration = Histogram("windmill_job_duration_seconds", "Wall-clock seconds a handler ran.", labels,
                                      buckets=HANDLER_BUCKETS, registry=self.registry)
        self.service_calls = Histogram("windmill_service_call_duration_seconds",
                                       "Seconds an Animal Farm call took, request to parsed answer; outcome is "
                                       "success or the failure kind (timeout, http_5xx, connect, ...).",
                                       ("service", "outcome"), buckets=SERVICE_CALL_BUCKETS, registry=self.registry)

    # -- feeding --------------------------------------------------------------------------------------------

    def handled(self, role: str, service: str, error: BaseException | None, seconds: float) -> None:
        """One handler run finished."""
        self.job_duration.labels(role, service).observe(seconds)
        (self.jobs_done if error is None else self.jobs_failed).labels(role, service).inc()

    def observe_service_call(self, service: str, seconds: float, outcome: str) -> None:
        """A FarmClient CallObserver."""
        self.service_calls.labels(service, outcome).observe(seconds)

    def start_role(self, role: str, services: Iterable[str] = ()) -> None:
        """Export zeros for the role's series before its first job, so rate() and alerts see them from the start."""
        for service in list(services) or [""]:
            for metric in (self.jobs_done, self.jobs_failed, self.job_duration):
                metric.labels(role, service)

    def counting_tasks(self, role: Role) -> Role:
        """The role with its broker task handler counted and timed (a RabbitMQ-fed worker has no job hooks)."""
        if role.tasks is None:
            return role
        handle = role.tasks.handle

        def counted(task: Task, first_delivery: bool) -> object:
            started = time.monotonic()
            try:
                outcome = handle(task, first_delivery)
            except BaseException as error:
                self.handled(role.name, task.service_name, error, time.monotonic() - started)
                raise
            self.handled(role.name, task.service_name, None, time.monotonic() - started)
            return outcome

        return replace(role, tasks=replace(role.tasks, handle=counted))

    def watch_outages(self, down: Callable[[], Mapping[str, float]]) -> None:
        """Export, on every scrape, how long each service this process finds down has been down (`down`: the
        process's ServiceOutages.down)."""
        self.registry.register(OutageCollector(down))

    def watch_database(self, pool: ConnectionPool, *, timeout_s: float = SCRAPE_TIMEOUT_S) -> QueueCollector:
        """Read queue depths and the NOTIFY queue's fill from PostgreSQL on every scrape."""
        collector = QueueCollector(pool, timeout_s=timeout_s)
        self.registry.register(collector)
        return collector


class OutageCollector(Collector):
    """windmill_service_down_seconds: a series per service this process finds down, none while it answers."""

    def __init__(self, down: Callable[[], Mapping[str, float]]) -> None:
        self._down = down

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("windmill_service_down_seconds",
                                   "Seconds since this worker process found the service down (refusing connections, "
                                   "or answering 502, 503, 504 or 429); no series while it answers. Calls wait for "
                                   "it up to WINDMILL_OUTAGE_WAIT_S, then take their retries.",
                                   labels=["service"])
        for service, seconds in sorted(self._down().items()):
            family.add_metric([service], seconds)
        yield family


# -- the database side, read per scrape -------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseReading:
    queues: list[dict[str, Any]]
    notification_queue_usage: float | None
    complete: bool  # False when a part could not be read (the exported figures are then partial)
    tasks_in_flight: list[dict[str, Any]] = field(default_factory=list)  # submit's RabbitMQ ledger, per service


class QueueCollector(Collector):
    """Reads the queue_depths view, submit's ledger of RabbitMQ tasks (tasks_in_flight_counts) and
    pg_notification_queue_usage() at scrape time, bounded by a short timeout.

    Never raises: a scrape during a database outage still answers, with windmill_metrics_database_up 0, so the
    outage is itself visible in Prometheus rather than as a failed scrape.
    """

    def __init__(self, pool: ConnectionPool, *, timeout_s: float = SCRAPE_TIMEOUT_S) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self._failing = False
        self._lock = threading.Lock()

    def describe(self) -> Iterable[Metric]:
        """The families without reading the database: registering must not need PostgreSQL."""
        return list(self._families(DatabaseReading([], None, complete=False)))

    def collect(self) -> Iterable[Metric]:
        return list(self._families(self.read()))

    def read(self) -> DatabaseReading:
        problems: list[str] = []
        queues: list[dict[str, Any]] = []
        in_flight: list[dict[str, Any]] = []
        usage: float | None = None
        try:
            with self.pool.connection(timeout=self.timeout_s) as conn:
                # Each read in its own transaction, so a refused view (a role without the right) spares the other.
                try:
                    with conn.transaction(), conn.cursor() as cursor:
                        self._bound(cursor)
                        usage = float(fetch_value(conn, "notification_queue_usage"))
                except Exception as error:
                    problems.append(f"pg_notification_queue_usage: {first_line(error)}")
                queues = self._rows(conn, "monitor_queue_depths", "queue_depths", problems)
                # What waits in RabbitMQ, which the job table's figures do not show.
                in_flight = self._rows(conn, "monitor_tasks_in_flight", "tasks_in_flight_counts", problems)
        except Exception as error:  # no connection within the timeout, or the pool is closing
            problems.append(f"no connection: {first_line(error) or type(error).__name__}")
        self._report(problems)
        return DatabaseReading(queues, usage, complete=not problems, tasks_in_flight=in_flight)

    def _rows(self, conn: Any, name: str, what: str, problems: list[str]) -> list[dict[str, Any]]:
        """The named query's rows, read in a transaction of their own and bounded in time; none, with the problem
        noted, when it fails."""
        try:
            with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
                self._bound(cursor)
                cursor.execute(query(name))
                return list(cursor.fetchall())
        except Exception as error:
            problems.append(f"{what}: {first_line(error)}")
            return []

    def _bound(self, cursor: Any) -> None:
        cursor.execute(query("bound_statement_time"), {"timeout": f"{int(self.timeout_s * 1000)}ms"})

    def _report(self, problems: list[str]) -> None:
        """Warn when reading starts failing and when it recovers, not on every scrape of an outage."""
        with self._lock:
            was_failing, self._failing = self._failing, bool(problems)
        if problems and not was_failing:
            log.warning("metrics: cannot read the queue figures from PostgreSQL (%s)", "; ".join(problems),
                        extra={"action": "metrics_database_failed"})
        elif problems:
            log.debug("metrics: still cannot read the queue figures (%s)", "; ".join(problems),
                      extra={"action": "metrics_database_failed"})
        elif was_failing:
            log.info("metrics: reading the queue figures from PostgreSQL again",
                     extra={"action": "metrics_database_ok"})

    @staticmethod
    def _families(reading: DatabaseReading) -> Iterator[Metric]:
        depth = GaugeMetricFamily("windmill_queue_jobs", "Jobs per job-table queue and state (view queue_depths; "
                                  "queued = due now; past 1,000 a count is estimated from a sample).",
                                  labels=["queue", "state"])
        oldest = GaugeMetricFamily("windmill_queue_oldest_age_seconds",
                                   "Age of the oldest job of the queue that could run now (0 when none).",
                                   labels=["queue"])
        for row in reading.queues:
            for state in QUEUE_STATES:
                depth.add_metric([row["queue"], state], float(row[state] or 0))
            oldest.add_metric([row["queue"]], float(row["oldest_age_s"] or 0))
        yield depth
        yield oldest
        tasks = GaugeMetricFamily("windmill_tasks_in_flight", "RabbitMQ tasks per service that submit published and "
                                  "no answer has come for yet (submit's ledger; past 10,000 an estimate).",
                                  labels=["service", "queue"])
        tasks_oldest = GaugeMetricFamily("windmill_tasks_in_flight_oldest_age_seconds",
                                         "Age of the service's oldest RabbitMQ task without an answer (a service "
                                         "with none has no series).",
                                         labels=["service", "queue"])
        for row in reading.tasks_in_flight:
            tasks.add_metric([row["service"], row["queue"]], float(row["in_flight"] or 0))
            tasks_oldest.add_metric([row["service"], row["queue"]], float(row["oldest_age_s"] or 0))
        yield tasks
        yield tasks_oldest
        usage = GaugeMetricFamily("windmill_pg_notification_queue_usage",
                                  "Fraction of PostgreSQL's NOTIFY queue in use (pg_notification_queue_usage()); "
                                  "near 1, NOTIFY fails and so do the inserts that queue jobs.")
        if reading.notification_queue_usage is not None:
            usage.add_metric([], reading.notification_queue_usage)
        yield usage
        yield GaugeMetricFamily("windmill_metrics_database_up",
                                "1 when the last scrape read every queue figure from PostgreSQL, else 0.",
                                value=1.0 if reading.complete else 0.0)


# -- serving -----------------------------------------------------------------------------------------------------


@dataclass
class MetricsServer:
    """A running /metrics endpoint; `port` is the bound one (useful when asked for port 0)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(port: int, registry: CollectorRegistry, *, address: str = "0.0.0.0",
                         or_any_free: bool = False) -> MetricsServer:
    """Serve `registry` at http://address:port/metrics from a daemon thread (every interface by default: the
    Prometheus server scrapes from another machine). `or_any_free`: a port that is taken gives way to one the
    system picks (the worker's target file names it), with a warning."""
    try:
        server, thread = start_http_server(port, addr=address, registry=registry)
    except OSError as error:
        if not (or_any_free and error.errno == errno.EADDRINUSE):
            raise WindmillError(f"cannot serve metrics on {address}:{port}: {error.strerror or error}") from None
        server, thread = start_http_server(0, addr=address, registry=registry)
        log.warning("metrics port %d (WINDMILL_METRICS_PORT) is taken, by a named worker of this machine perhaps "
                    "(`workers start` gives them that port and the next ones); serving on %d instead, which this "
                    "worker's target file names for Prometheus", port, server.server_address[1],
                    extra={"action": "metrics_port_moved"})
    log.info("serving Prometheus metrics on %s:%d", address, server.server_address[1],
             extra={"action": "metrics_serving"})
    return MetricsServer(server, thread)


@contextmanager
def serving_worker_metrics(port: int, pool: ConnectionPool, *, address: str = "0.0.0.0",
                           timeout_s: float = SCRAPE_TIMEOUT_S, or_any_free: bool = False) -> Iterator[WorkerMetrics]:
    """A worker process's metrics for as long as the block runs: the endpoint and the database collector on the
    worker's pool; `port` is set to the one bound (see start_metrics_server for `or_any_free`). The process's farm
    client is built with `observe_service_call` as its observer."""
    metrics = WorkerMetrics()
    metrics.watch_database(pool, timeout_s=timeout_s)
    server = start_metrics_server(port, metrics.registry, address=address, or_any_free=or_any_free)
    metrics.port = server.port
    try:
        yield metrics
    finally:
        server.close()
