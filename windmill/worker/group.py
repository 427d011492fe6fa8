"""Several roles in one process (`windmill-cli run`, the demo, pipeline tests): one worker thread per role,
sharing the process's connection pool, Animal Farm client (so each service's max_concurrency holds across the
roles) and cache of prepared images; one stop request drains them all. The service tasks come from where `submit`
sends them: RabbitMQ when it is configured, else the job table (windmill.worker.feed)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from psycopg_pool import ConnectionPool

from windmill.broker.choice import uses_rabbitmq
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.db.queries import fetch_value
from windmill.image_cache import ImageSource
from windmill.jobs import JobQueue
from windmill.roles.registry import RoleContext, build_role
from windmill.settings import Settings
from windmill.stopping import join_in_slices
from windmill.worker.broker_worker import BrokerWorker
from windmill.worker.farm_client import process_farm_client
from windmill.worker.feed import fed_worker
from windmill.worker.layout import SINGLE_MACHINE, RoleSpec
from windmill.worker.runtime import Worker, WorkerHooks, WorkerOptions

if TYPE_CHECKING:
    from windmill.metrics import WorkerMetrics


class WorkerGroup:
    def __init__(self, settings: Settings, database: Database, pool: ConnectionPool, catalog: Catalog,
                 specs: Sequence[RoleSpec] = SINGLE_MACHINE, *, jobs: JobQueue | None = None,
                 options: WorkerOptions | None = None, hooks: WorkerHooks | None = None,
                 metrics: WorkerMetrics | None = None, broker: str | None = None) -> None:
        rabbitmq = uses_rabbitmq(settings, broker)
        self.jobs = jobs or JobQueue(pool)
        self.farm = process_farm_client(settings, catalog, database,
                                        observer=metrics.observe_service_call if metrics else None)
        if metrics is not None and self.farm.outages is not None:
            metrics.watch_outages(self.farm.outages.down)
        self.images = ImageSource(settings)
        base = options or WorkerOptions()
        self.workers: list[Worker | BrokerWorker] = []
        self.threads: list[threading.Thread] = []
        for spec in specs:
            worker_id = f"{settings.worker_id}-{spec.role}"
            context = RoleContext(settings=settings, database=database, pool=pool, jobs=self.jobs, catalog=catalog,
                                  worker_id=worker_id, farm=self.farm, images=self.images, service=spec.service)
            role = build_role(spec.role, context)
            opts = WorkerOptions(concurrency=spec.concurrency, batch_size=8 * spec.concurrency,
                                 poll_interval_s=base.poll_interval_s, drain_timeout_s=base.drain_timeout_s,
                                 heartbeat_interval_s=base.heartbeat_interval_s)
            role_hooks = hooks
            if metrics is not None:  # one endpoint for the process, series per role
                from windmill.worker.metered import metered_hooks

                metrics.start_role(role.name, role.service.split(",") if role.service else ())
                role_hooks = metered_hooks(metrics, role.name, hooks)
                role = metrics.counting_tasks(role)
            worker = fed_worker(settings, role, pool, self.jobs, worker_id=worker_id,
                                listen_conninfo=database.conninfo, options=opts, rabbitmq=rabbitmq, hooks=role_hooks)
            self.workers.append(worker)
            self.threads.append(threading.Thread(target=self._run, args=(worker,), name=worker_id))
        self.exit_codes: list[int] = []

    def _run(self, worker: Worker | BrokerWorker) -> None:
        self.exit_codes.append(worker.run())

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def run(self) -> int:
        """Start every worker and wait for all of them (a stop request ends them); the worst exit code."""
        self.start()
        return self.join()

    def request_stop(self, *, immediately: bool = False) -> None:
        for worker in self.workers:
            worker.request_stop(immediately=immediately)
        self.farm.stop_waiting()  # calls waiting for a service that is down give their attempts back

    def join(self, timeout: float | None = None) -> int:
        for thread in self.threads:  # in slices: `run`'s main thread must still answer a signal (windmill.stopping)
            join_in_slices(thread, timeout)
        if not any(thread.is_alive() for thread in self.threads):
            self.farm.close()  # after the last role that could call it
        return max(self.exit_codes, default=0)

    def __enter__(self) -> WorkerGroup:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.request_stop()
        self.join(timeout=60)


def pipeline_idle(pool: ConnectionPool, queues: Sequence[str] | None = None) -> bool:
    """No job (of these queues) waits, runs or awaits a retry: everything submitted has been carried through."""
    with pool.connection() as conn:
        return not fetch_value(conn, "work_pending", {"queues": list(queues) if queues else None})
