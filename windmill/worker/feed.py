"""What feeds a role its work, decided in one place for a worker process (`worker`) and a group of roles in one
process (`run`, the Python API's `workers()`): a role that takes image × service tasks consumes them from RabbitMQ
when the tasks travel there (windmill.broker.choice), every other role, and every role without RabbitMQ, claims
from the job table."""

from __future__ import annotations

from psycopg_pool import ConnectionPool

from windmill.jobs import JobQueue
from windmill.roles.registry import Role
from windmill.settings import Settings
from windmill.worker.broker_worker import BrokerWorker
from windmill.worker.runtime import Worker, WorkerHooks, WorkerOptions


def fed_worker(settings: Settings, role: Role, pool: ConnectionPool, jobs: JobQueue, *, worker_id: str,
               listen_conninfo: str, options: WorkerOptions, rabbitmq: bool,
               hooks: WorkerHooks | None = None) -> Worker | BrokerWorker:
    """The worker loop for `role`: RabbitMQ's consumer when `rabbitmq` and the role takes tasks, else the job
    table's claim loop."""
    if role.tasks is not None and rabbitmq:
        assert settings.amqp_url is not None  # uses_rabbitmq() refused RabbitMQ without a URL
        return BrokerWorker(settings.amqp_url, role, pool, worker_id=worker_id, concurrency=options.concurrency,
                            drain_timeout_s=options.drain_timeout_s, max_attempts=settings.amqp_task_attempts,
                            retry_delay_s=settings.amqp_retry_delay_s)
    return Worker(jobs, role, worker_id=worker_id, listen_conninfo=listen_conninfo, options=options, hooks=hooks)
