"""Per-service queues in the PostgreSQL job table: one machine needs nothing but PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg.types.json import Jsonb

from windmill.broker.base import Task
from windmill.catalog import Service
from windmill.db.queries import query
from windmill.jobs import JobQueue

SERVICE_TASK_ATTEMPTS = 5
# A submit this large changes the job table enough to refresh its statistics at the end (see refresh_statistics).
ANALYZE_AFTER_TASKS = 1_000


class JobTableBroker:
    dedupes_in_flight = True  # a unique index refuses a second service task in flight per queue and image

    def __init__(self, jobs: JobQueue) -> None:
        self.jobs = jobs
        self.published = 0

    def declare(self, services: Sequence[Service]) -> None:
        """Job-table queues need no declaration: a queue is a column value."""

    def publish(self, tasks: Sequence[Task], *, unless_answered: bool = False) -> list[Task]:
        """Queue the tasks in the order given, skipping every pair with a task in flight (a service-task job queued,
        running or waiting for a retry, or a RabbitMQ task in the ledger) and, with `unless_answered`, every pair
        answered successfully by the time the jobs commit; returns those queued. The order matters: the producer
        lists an image's tasks together, and so a worker serving several services runs them together while the
        image is in its cache."""
        if not tasks:
            return []
        with self.jobs.pool.connection() as conn, conn.transaction():
            rows = conn.execute(query("enqueue_service_tasks"), {
                "queues": [task.queue_name for task in tasks],
                "image_ids": [task.image_id for task in tasks],
                "services": [task.service_name for task in tasks],
                "payloads": [Jsonb(task.to_message()) for task in tasks],
                "dedupe_keys": [f"{task.service_name}:{task.image_id}" for task in tasks],
                "max_attempts": [SERVICE_TASK_ATTEMPTS] * len(tasks),
            }).fetchall()
            queued = {task_id for _job_id, task_id in rows}
            if unless_answered and rows:
                queued -= {row[0] for row in conn.execute(query("drop_answered_service_tasks"),
                                                          {"ids": [job_id for job_id, _task_id in rows]})}
        self.published += len(queued)
        return [task for task in tasks if task.task_id in queued]

    def unconfirmed(self) -> list[str]:
        return []  # one statement: all or nothing

    def close(self) -> None:
        """After a bulk submit, refresh the job table's statistics (the pool belongs to the caller)."""
        if self.published >= ANALYZE_AFTER_TASKS:
            self.jobs.refresh_statistics()
        self.published = 0
