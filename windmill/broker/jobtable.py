"""Per-service queues in the PostgreSQL job table: one machine needs nothing but PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

from windmill.broker.base import Task
from windmill.catalog import Service
from windmill.jobs import JobQueue, NewJob

SERVICE_TASK_ATTEMPTS = 5
# A submit this large changes the job table enough to refresh its statistics at the end (see refresh_statistics).
ANALYZE_AFTER_TASKS = 1_000


class JobTableBroker:
    def __init__(self, jobs: JobQueue) -> None:
        self.jobs = jobs
        self.published = 0

    def declare(self, services: Sequence[Service]) -> None:
        """Job-table queues need no declaration: a queue is a column value."""

    def publish(self, tasks: Sequence[Task]) -> None:
        """In the order given: the producer lists an image's tasks together, and so a worker serving several
        services runs them together while the image is in its cache."""
        self.jobs.enqueue_many([
            NewJob(queue=task.queue_name, payload=task.to_message(), image_id=task.image_id,
                   dedupe_key=f"{task.service_name}:{task.image_id}", max_attempts=SERVICE_TASK_ATTEMPTS)
            for task in tasks
        ])
        self.published += len(tasks)

    def close(self) -> None:
        """After a bulk submit, refresh the job table's statistics (the pool belongs to the caller)."""
        if self.published >= ANALYZE_AFTER_TASKS:
            self.jobs.refresh_statistics()
        self.published = 0
