"""The LISTEN side of NOTIFY: one dedicated connection that wakes the claim loop, reconnecting forever."""

from __future__ import annotations

import logging
import threading

import psycopg

from windmill.backoff import backoff_delay
from windmill.db.queries import query
from windmill.errors import first_line

log = logging.getLogger(__name__)
# A worker that loses PostgreSQL tries again after 0.2 s, doubling up to 10 s (its claims and its LISTEN alike).
RECONNECT_FIRST_S = 0.2
RECONNECT_CAP_S = 10.0


class JobListener:
    """Sets `wake` on every notification of the channel the named query `listen` listens on (the job queue's by
    default), and once after every (re)connect: a notification sent while we were disconnected is lost, so the
    loop must poll after listening again."""

    def __init__(self, conninfo: str, wake: threading.Event, stopping: threading.Event, *,
                 listen: str = "listen_jobs") -> None:
        self.conninfo = conninfo
        self.listen = listen
        self.wake = wake
        self.stopping = stopping
        self.connected = threading.Event()

    def run(self) -> None:
        failures = 0  # consecutive connections lost or refused
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(query(self.listen))
                    self.connected.set()
                    self.wake.set()
                    failures = 0
                    while not self.stopping.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake.set()
            except psycopg.OperationalError as error:
                self.connected.clear()
                if self.stopping.is_set():
                    return
                failures += 1
                delay = backoff_delay(failures, first_s=RECONNECT_FIRST_S, cap_s=RECONNECT_CAP_S)
                log.warning("listen connection lost (%s); reconnecting in %.1fs", first_line(error), delay,
                            extra={"action": "listener_reconnect"})
                self.stopping.wait(delay)
