"""How far the work on a group of images got, and waiting until it is done: per service answered and failed
images, answer rows, jobs still pending. The API's `progress`/`wait` and the demo read it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row

from windmill.db.queries import fetch_row, fetch_value, query
from windmill.errors import WindmillError


@dataclass(frozen=True)
class ServiceProgress:
    """One service over the group's images: how many have a successful latest answer, how many a failed one."""

    service: str
    done: int
    failed: int


@dataclass(frozen=True)
class Progress:
    """A group's images (all images when no group is given), their answer rows, and the jobs for them still
    queued, running or awaiting a retry; `services` only lists services that answered at least once."""

    images: int
    answers: int
    pending_jobs: int
    services: tuple[ServiceProgress, ...]

    def answered(self, services: Iterable[str]) -> bool:
        """Whether every image has a final answer (success, error or timeout) from each of these services."""
        finished = {row.service: row.done + row.failed for row in self.services}
        return all(finished.get(service, 0) >= self.images for service in services)


def read_progress(conn: psycopg.Connection, group: str | None = None) -> Progress:
    """The progress of a group's images, read now (every answer of the group is read: for a large collection
    call it now and then, not in a tight loop)."""
    params = {"group": group}
    images, answers, pending = fetch_row(conn, "progress_totals", params)
    with conn.cursor(row_factory=dict_row) as cursor:
        services = tuple(ServiceProgress(**row) for row in cursor.execute(query("service_outcomes"), params))
    return Progress(images, answers, pending, services)


def wait_for(conn: psycopg.Connection, *, group: str | None = None, services: Iterable[str] = (),
             timeout_s: float | None = None, poll_interval_s: float = 0.5,
             on_progress: Callable[[Progress], None] | None = None) -> Progress:
    """Wait until no job for the group's images is pending and every image has a final answer from each of
    `services` (name them when tasks travel through RabbitMQ: those are not in the job table). While jobs are
    pending only they are counted, unless `on_progress` wants the whole progress at every poll. Raises
    WindmillError after `timeout_s` seconds."""
    services = list(services)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        progress: Progress | None = None
        if on_progress is not None:
            progress = read_progress(conn, group)
            on_progress(progress)
            pending = progress.pending_jobs
        else:
            pending = fetch_value(conn, "pending_jobs", {"group": group})
        if pending == 0:
            progress = progress or read_progress(conn, group)
            if progress.answered(services):
                return progress
        if deadline is not None and time.monotonic() > deadline:
            raise WindmillError(f"the work did not finish within {timeout_s:.0f} s ({pending} jobs pending)")
        time.sleep(poll_interval_s)
