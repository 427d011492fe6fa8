"""Per-service concurrency limits: at most `max_concurrency` requests in flight to a service from this process.

The real pose service shares one MediaPipe graph across its request threads without a lock, so two crops sent
at once can come back with each other's landmarks (spec/animal-farm-api.md §2.7); other services have GPUs that
a flood of requests only queues up on. The limit is the catalog's `max_concurrency`, held by the process's one
FarmClient, so every role that calls a service (service tasks, postprocessing crops, caption scoring) counts
against the same places. A request waits for a place before it is sent; the wait is not part of the call's
timeout or its measured duration. A service may also have a `fleet_max_concurrency`, places shared by every
worker process of the database (windmill.farm.fleet): a call then holds a place of each kind.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from windmill.catalog import Service
from windmill.farm.fleet import FleetSlots


class ConcurrencyLimits:
    """One counting semaphore per limited service; unlimited services pass straight through. With `fleet`, the
    services with a fleet_max_concurrency also take a fleet-wide place (without it, that limit is not enforced)."""

    def __init__(self, services: Iterable[Service], *, fleet: FleetSlots | None = None) -> None:
        services = list(services)
        self._fleet = fleet
        self._fleet_limits = {service.name: service.fleet_max_concurrency for service in services
                              if service.fleet_max_concurrency and fleet is not None}
        # A process never holds more fleet places than the fleet has: its own limit is the smaller of the two.
        self._limits = {service.name: limit for service in services
                        if (limit := _smallest(service.max_concurrency, self._fleet_limits.get(service.name)))}
        self._places = {name: threading.BoundedSemaphore(limit) for name, limit in self._limits.items()}
        self._in_flight = dict.fromkeys(self._limits, 0)
        self._lock = threading.Lock()

    def limit(self, service: str) -> int | None:
        """The most requests this process sends the service at once; None: no limit."""
        return self._limits.get(service)

    def fleet_limit(self, service: str) -> int | None:
        """The most requests every process of the database sends the service at once; None: not enforced."""
        return self._fleet_limits.get(service)

    def in_flight(self, service: str) -> int:
        """Calls to a limited service holding one of this process's places right now (some may still wait for a
        fleet-wide one); 0 for an unlimited service, whose calls are not counted."""
        with self._lock:
            return self._in_flight.get(service, 0)

    def available(self, service: str) -> int | None:
        """Places free right now (what a claim may start at once); None: no limit."""
        limit = self.limit(service)
        return None if limit is None else limit - self.in_flight(service)

    def close(self) -> None:
        """Give back every fleet-wide place (closes the slot connection)."""
        if self._fleet is not None:
            self._fleet.close()

    @contextmanager
    def place(self, service: str) -> Iterator[None]:
        """Hold one of the service's places for the block, waiting for one to free if all are taken."""
        places = self._places.get(service)
        if places is None:
            yield
            return
        places.acquire()
        with self._lock:
            self._in_flight[service] += 1
        try:
            with self._fleet_place(service):
                yield
        finally:
            with self._lock:
                self._in_flight[service] -= 1
            places.release()

    @contextmanager
    def _fleet_place(self, service: str) -> Iterator[None]:
        slots = self._fleet_limits.get(service)
        if slots is None or self._fleet is None:
            yield
            return
        with self._fleet.place(service, slots):
            yield


def _smallest(*limits: int | None) -> int | None:
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None
