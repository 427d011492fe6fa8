"""Starting a worker process: settings → database → role → runtime, with two-phase signal handling."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from datetime import timedelta
from typing import Protocol

from psycopg_pool import ConnectionPool

from windmill.broker.choice import uses_rabbitmq
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.db.schema import open_migrated
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.jobs import JobQueue
from windmill.processes import announce_ready
from windmill.roles.registry import RoleContext, build_role
from windmill.settings import Settings
from windmill.stopping import StopRequests, stop_on_signals
from windmill.worker.farm_client import process_farm_client
from windmill.worker.feed import fed_worker
from windmill.worker.runtime import WorkerOptions

log = logging.getLogger(__name__)


class Stoppable(StopRequests, Protocol):
    def run(self) -> int: ...


def pool_size(concurrency: int) -> int:
    """A worker process's pool: a connection per handler thread, and two for heartbeats, leases and metrics. (A
    worker whose lanes add up to more threads than its --concurrency grows its pool to match them.)"""
    return concurrency + 2


def worker_connections(concurrency: int) -> int:
    """The most PostgreSQL connections one worker process holds: its pool, its LISTEN connection, the one its claim
    loop keeps (windmill.jobs.queue.Claimer) and the one that holds fleet-wide service places
    (windmill/farm/fleet.py). deploy/README.md and the compose file's max_connections are sized with it."""
    return pool_size(concurrency) + 3


class StoppingCalls:
    """A worker whose stop also ends its calls' waits for services that are down (windmill.farm.outages): their
    tasks go back to the queue at once, uncounted, instead of keeping the drain waiting."""

    def __init__(self, worker: Stoppable, farm: FarmClient) -> None:
        self.worker, self.farm = worker, farm

    def request_stop(self, *, immediately: bool = False) -> None:
        self.worker.request_stop(immediately=immediately)  # first: the tasks given back meet a draining worker
        self.farm.stop_waiting()

    def run(self) -> int:
        return self.worker.run()


def run_until_stopped(worker: Stoppable) -> int:
    """Run a worker (or a group of them) in the foreground until SIGTERM/SIGINT; returns its exit code."""
    with stop_on_signals(worker):
        return worker.run()


def run_worker(
    settings: Settings,
    catalog: Catalog,
    role_name: str,
    *,
    service: str | None = None,
    options: WorkerOptions | None = None,
    lease: timedelta | None = None,
    broker: str | None = None,
    metrics_port: int | None = None,
    metrics_port_may_move: bool = False,
) -> int:
    """Run one worker in this process until a signal stops it; returns the exit code. A role that takes
    image × service tasks consumes them from `broker` (windmill.broker.choice: RabbitMQ when configured, else the
    job table). With `metrics_port`, Prometheus metrics are served on that port for as long as the worker runs
    (`metrics_port_may_move`: on another one if it is taken)."""
    options = options or WorkerOptions()
    rabbitmq = uses_rabbitmq(settings, broker)
    with open_migrated(settings, catalog, application_name=f"windmill-{role_name}",
                       waiting=f"the {role_name} worker cannot start yet") as database:
        pool = database.pool(min_size=1, max_size=pool_size(options.concurrency), name=f"worker-{role_name}",
                             wait_s=settings.database_wait_s)
        extras = ExitStack()  # the metrics endpoint (if asked for) and the farm client: closed before the pool
        try:
            metrics = None
            if metrics_port is not None:
                from windmill.metrics import serving_worker_metrics

                metrics = extras.enter_context(serving_worker_metrics(metrics_port, pool,
                                                                      or_any_free=metrics_port_may_move))
            farm = extras.enter_context(process_farm_client(
                settings, catalog, database, observer=metrics.observe_service_call if metrics else None))
            jobs = JobQueue(pool, lease=lease) if lease else JobQueue(pool)
            context = RoleContext(settings=settings, database=database, pool=pool, jobs=jobs, catalog=catalog,
                                  worker_id=settings.worker_id, farm=farm, images=ImageSource(settings),
                                  service=service or settings.service_name)
            role = build_role(role_name, context)
            hooks = None
            if metrics is not None:
                from windmill.metrics_targets import advertised
                from windmill.worker.metered import metered_hooks

                extras.enter_context(advertised(settings.home, settings.worker_id, metrics.port or 0,
                                                {"role": role.name, "service": role.service or ""}))
                metrics.start_role(role.name, role.service.split(",") if role.service else ())
                if farm.outages is not None:
                    metrics.watch_outages(farm.outages.down)
                hooks = metered_hooks(metrics, role.name)
                role = metrics.counting_tasks(role)
            worker = fed_worker(settings, role, pool, jobs, worker_id=settings.worker_id,
                                listen_conninfo=database.conninfo, options=options, rabbitmq=rabbitmq, hooks=hooks)
            threads = sum(lane.threads for lane in worker.lanes)
            if pool_size(threads) > pool.max_size:  # lanes of many services: at least a thread each
                pool.resize(pool.min_size, pool_size(threads))
            announce_ready()
            return run_until_stopped(StoppingCalls(worker, farm))
        finally:
            extras.close()
            pool.close()


def run_machine(settings: Settings, catalog: Catalog, database: Database, pool: ConnectionPool, *,
                broker: str | None = None) -> int:
    """Every role in this process (`windmill-cli run`: windmill.worker.layout.every_role) until a signal stops them;
    returns the exit code. The service tasks come from `broker` (RabbitMQ when configured, else the job table). With
    WINDMILL_METRICS_PORT, one metrics endpoint serves every role's series, advertised as a file_sd target."""
    from windmill.worker.group import WorkerGroup
    from windmill.worker.layout import every_role

    with ExitStack() as extras:
        metrics = None
        if settings.metrics_port is not None:
            from windmill.metrics import serving_worker_metrics
            from windmill.metrics_targets import advertised

            # The setting's port, or another if a named worker of this machine holds it.
            metrics = extras.enter_context(serving_worker_metrics(settings.metrics_port, pool, or_any_free=True))
            extras.enter_context(advertised(settings.home, settings.worker_id, metrics.port or 0, {"role": "run"}))
        return run_until_stopped(WorkerGroup(settings, database, pool, catalog, every_role(catalog), broker=broker,
                                             metrics=metrics))
