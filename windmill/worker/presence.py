"""A worker's row in the `workers` table: announced at start, a heartbeat while alive, marked at stop."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping

import psutil
import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from windmill.db.queries import query
from windmill.db.schema import newest_known_migration, overtaken
from windmill.errors import first_line

log = logging.getLogger(__name__)


class WorkerPresence:
    def __init__(self, pool: ConnectionPool, worker_id: str, role: str, service: str | None, *,
                 services_down: Callable[[], Mapping[str, tuple[float, str]]] | None = None) -> None:
        self.pool = pool
        self.worker_id = worker_id
        self.role = role
        self.service = service
        self.services_down = services_down  # what each beat says of the services this process finds down

    def announce(self) -> None:
        """Register this process; say so when another one of the same id is alive (two machines of one host name,
        or `workers run NAME` beside `workers start NAME`): the two share one row, so either's heartbeat makes the
        other look alive. Said, not refused: their jobs' leases stay right, one worker's work is done twice at most."""
        with self.pool.connection() as conn:
            before = conn.execute(query("register_worker"), {
                "worker_id": self.worker_id, "role": self.role, "service": self.service,
                "hostname": socket.gethostname(), "pid": os.getpid()}).fetchone()
        if before is None:
            return
        hostname, pid, age_s = before
        if hostname == socket.gethostname() and pid is not None and not psutil.pid_exists(pid):
            return  # this host's worker of that id died a moment ago, and this one takes its place
        log.warning("another worker with the id %s is alive (pid %s on %s, its last heartbeat %.1f s ago): the two "
                    "share one row of the workers table, so `status` and `workers health` show one of them and "
                    "either may hide the other's death; give each its own WORKER_ID", self.worker_id, pid, hostname,
                    age_s, extra={"action": "worker_id_twin"})

    def beat(self, jobs_done: int, jobs_failed: int) -> None:
        """Raises SchemaOvertaken when a newer Windmill migrated the database since this process checked it: the
        schema is checked once at start, and a worker left running through an upgrade would go on with a contract
        it no longer knows (each job of a changed payload failing until it is dead)."""
        with self.pool.connection() as conn:
            row = conn.execute(query("worker_heartbeat"), {**self._counters(jobs_done, jobs_failed),
                                                           "newest_known": newest_known_migration(),
                                                           "services_down": self._services_down()}).fetchone()
        if row and row[0]:
            raise overtaken(list(row[0]))

    def stopped(self, jobs_done: int, jobs_failed: int) -> None:
        """Best effort: a worker stopping because the database is gone cannot say so."""
        try:
            with self.pool.connection(timeout=5) as conn:
                conn.execute(query("worker_stopped"), self._counters(jobs_done, jobs_failed))
        except (psycopg.OperationalError, TimeoutError) as error:
            log.warning("could not record the stop of %s (%s)", self.worker_id, first_line(error))

    def _services_down(self) -> Jsonb | None:
        """{service: {seconds, reason}} at this beat (`status` adds the beat's age); None while every service
        answers."""
        down = self.services_down() if self.services_down is not None else {}
        return Jsonb({service: {"seconds": round(seconds, 1), "reason": reason}
                      for service, (seconds, reason) in down.items()}) if down else None

    def _counters(self, jobs_done: int, jobs_failed: int) -> dict[str, object]:
        return {"worker_id": self.worker_id, "jobs_done": jobs_done, "jobs_failed": jobs_failed, "pid": os.getpid(),
                "hostname": socket.gethostname()}
