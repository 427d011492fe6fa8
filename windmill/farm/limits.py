"""Per-service concurrency limits: at most `max_concurrency` requests in flight to a service from this process.

The real pose service shares one MediaPipe graph across its request threads without a lock, so two crops sent
at once can come back with each other's landmarks (spec/animal-farm-api.md §2.7); other services have GPUs that
a flood of requests only queues up on. The limit is the catalog's `max_concurrency`, held by the process's one
FarmClient, so every role that calls a service (service tasks, postprocessing crops, caption scoring) counts
against the same places. A request waits for a place before it is sent; the wait is not part of the call's
timeout or its measured duration.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from windmill.catalog import Service


class ConcurrencyLimits:
    """One counting semaphore per limited service; unlimited services pass straight through."""

    def __init__(self, services: Iterable[Service]) -> None:
        self._limits = {service.name: service.max_concurrency for service in services if service.max_concurrency}
        self._places = {name: threading.BoundedSemaphore(limit) for name, limit in self._limits.items()}
        self._in_flight = dict.fromkeys(self._limits, 0)
        self._lock = threading.Lock()

    def limit(self, service: str) -> int | None:
        """The most requests this process sends the service at once; None: no limit."""
        return self._limits.get(service)

    def in_flight(self, service: str) -> int:
        """Requests to a limited service holding a place right now (0 for an unlimited one: not counted)."""
        with self._lock:
            return self._in_flight.get(service, 0)

    def available(self, service: str) -> int | None:
        """Places free right now (what a claim may start at once); None: no limit."""
        limit = self.limit(service)
        return None if limit is None else limit - self.in_flight(service)

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
            yield
        finally:
            with self._lock:
                self._in_flight[service] -= 1
            places.release()
