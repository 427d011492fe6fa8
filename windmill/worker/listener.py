"""The LISTEN side of NOTIFY: one dedicated connection that wakes the claim loop, reconnecting forever."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

import psycopg

from windmill.backoff import backoff_delay
from windmill.db.queries import query
from windmill.errors import first_line

log = logging.getLogger(__name__)
# A worker that loses PostgreSQL tries again after 0.2 s, doubling up to 10 s (its claims and its LISTEN alike).
RECONNECT_FIRST_S = 0.2
RECONNECT_CAP_S = 10.0


class JobListener:
    """Sets `wake` on every notification of the channel the named query `listen` listens on, and once after every
    (re)connect: a notification sent while we were disconnected is lost, so the loop must poll after listening
    again. Given `queues` (a worker's), it listens instead on the wake-all channel and on each queue's own
    (sql/0096), and a notification of a queue's channel calls `on_queue(queue)` rather than setting `wake`."""

    def __init__(self, conninfo: str, wake: threading.Event, stopping: threading.Event, *,
                 listen: str | None = None, queues: Sequence[str] = (),
                 on_queue: Callable[[str], None] | None = None) -> None:
        if listen is None and not queues:
            raise ValueError("JobListener needs a query to listen with, or queues")
        self.conninfo = conninfo
        self.listen = listen
        self.queues = list(queues)
        self.on_queue = on_queue
        self.wake = wake
        self.stopping = stopping
        self.connected = threading.Event()

    def _listen(self, conn: psycopg.Connection) -> dict[str, str]:
        """LISTEN; returns the queue of each queue channel."""
        if self.listen is not None:
            conn.execute(query(self.listen))
            return {}
        rows = conn.execute(query("listen_job_queues"), {"queues": self.queues}).fetchall()
        return {channel: queue for queue, channel in rows}

    def run(self) -> None:
        failures = 0  # consecutive connections lost or refused
        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    queue_of = self._listen(conn)
                    self.connected.set()
                    self.wake.set()
                    failures = 0
                    while not self.stopping.is_set():
                        for note in conn.notifies(timeout=1.0, stop_after=1):
                            queue = queue_of.get(note.channel)
                            if queue is not None and self.on_queue is not None:
                                self.on_queue(queue)
                            else:
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
