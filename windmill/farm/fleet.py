"""Fleet-wide places for calls to a service (catalog `fleet_max_concurrency`), held in PostgreSQL.

Every worker process that shares the database counts against the same places: slot k of a service is a
session advisory lock (sql/0035_service_slots.sql), taken on one connection of this process and given back
after the call. PostgreSQL frees the locks of a connection that ends, so a worker that dies (or loses its
connection) gives its places back at once, without leases. The price of that: a connection lost *during* a
call frees its place while the call is still in flight, so for that moment one more call may run.

A process waits for a free place by asking again every `poll_s` (10 ms): a LISTEN/NOTIFY wake-up would need
a second connection per process for what is, by design, a short line in front of a slow service.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from windmill.db.queries import fetch_value

log = logging.getLogger(__name__)

DEFAULT_POLL_S = 0.01


class FleetSlots:
    """This process's side of the fleet-wide places: one autocommit connection, used by one thread at a time."""

    def __init__(self, connect: Callable[[], psycopg.Connection], *, poll_s: float = DEFAULT_POLL_S) -> None:
        self._connect = connect
        self._poll_s = poll_s
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one statement at a time on the connection; guards _held
        self._held: dict[str, set[int]] = defaultdict(set)  # places this session holds, per service
        self._closed = threading.Event()

    @contextmanager
    def place(self, service: str, slots: int) -> Iterator[int]:
        """Hold one of the service's `slots` fleet-wide places for the block (waits for one); yields its number."""
        slot = self._take(service, slots)
        try:
            yield slot
        finally:
            self._give_back(service, slot)

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if self._conn is not None:
                self._conn.close()  # gives back every place this session still holds
            self._conn, self._held = None, defaultdict(set)

    def _take(self, service: str, slots: int) -> int:
        while True:
            with self._lock:
                slot = self._execute("take_service_slot",
                                     {"service": service, "slots": slots, "held": sorted(self._held[service])})
                if slot is not None:
                    self._held[service].add(slot)
                    return slot
            if self._closed.wait(self._poll_s):
                raise RuntimeError("the farm client was closed while a call waited for a fleet-wide place")

    def _give_back(self, service: str, slot: int) -> None:
        with self._lock:
            if slot not in self._held[service]:
                return  # the session that held it is gone, and with it the lock
            self._held[service].discard(slot)
            try:
                self._execute("give_back_service_slot", {"service": service, "slot": slot})
            except psycopg.OperationalError:
                log.info("lost the fleet-slot connection; PostgreSQL freed its places", extra={"action": "slots_lost"})

    def _execute(self, name: str, params: dict[str, object]) -> Any:
        """Run a one-value query on the slot connection, opening it if needed. A broken connection is dropped
        with everything it held (its session's locks are gone) and the error raised: the call fails as any
        database error does, and the next call reconnects."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._held = defaultdict(set)
        try:
            return fetch_value(self._conn, name, params)
        except psycopg.OperationalError:
            self._conn.close()
            self._conn, self._held = None, defaultdict(set)
            raise
