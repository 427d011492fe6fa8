"""What one simulated service is doing right now: requests held, a line in front of its capacity, and the peaks.

Every analyze/score request is *held* from its parsed body until its answer is ready to be written; within that
it waits in line for one of the service's `capacity` places (a GPU server's workers), spends its service time
there, and leaves. The counters are what tests and benchmarks read afterwards: the most requests a service ever
held at once (a client honouring a concurrency limit keeps it at that limit), how many had to wait, how many were
served.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from windmill.simfarm.latency import ServiceTiming, sample_seconds


@dataclass(frozen=True)
class LoadStats:
    held: int  # requests held right now (waiting in line or being served or being answered)
    peak_held: int
    in_line: int  # requests waiting for a place right now
    in_service: int  # requests in one of the capacity's places right now
    peak_in_service: int
    waited: int  # requests that found every place taken and waited in line
    requests: int  # requests held so far


class ServiceLoad:
    def __init__(self, service: str, timing: ServiceTiming | None, *, seed: int = 0) -> None:
        self.service = service
        self.timing = timing
        self.seed = seed
        self._free = timing.capacity if timing else None  # free places; None: no limit
        self._line: deque[object] = deque()  # tickets of the requests waiting, first come first served
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._turns = threading.Condition(self._lock)
        self._held = self._peak_held = self._in_service = self._peak_in_service = 0
        self._waited = self._requests = 0

    @contextmanager
    def holding(self) -> Iterator[Callable[[], None]]:
        """Count the request as held by the service for the duration of the block, or until the block calls the
        function it is given: the answer is then complete and only its bytes remain to be written. A client that
        gives its place back once it has read an answer (a concurrency limit) may send its next request before this
        thread has left the block; that request must not count as overlapping the one already answered."""
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._held -= 1

        with self._lock:
            self._held += 1
            self._requests += 1
            self._peak_held = max(self._peak_held, self._held)
        try:
            yield release
        finally:
            release()

    def serve(self, stopping: threading.Event) -> bool:
        """Wait in line for a place, spend the service time in it, leave. False when the farm stops meanwhile."""
        if self.timing is None:
            return True
        seconds = sample_seconds(self.timing, self.seed, self.service, next(self._numbers))
        with self.place(stopping) as placed:
            return placed and not (seconds > 0 and stopping.wait(seconds))

    @contextmanager
    def place(self, stopping: threading.Event) -> Iterator[bool]:
        """Hold one of the capacity's places for the block: True once it is ours, False if the farm stopped first."""
        placed = self._take_place(stopping)
        try:
            yield placed
        finally:
            if placed:
                with self._turns:
                    self._in_service -= 1
                    if self._free is not None:
                        self._free += 1
                        self._turns.notify_all()

    def _take_place(self, stopping: threading.Event) -> bool:
        """Wait for a free place behind everyone who came earlier (a Semaphore lets newcomers overtake)."""
        with self._turns:
            if self._free is not None and (self._free == 0 or self._line):
                ticket = object()
                self._line.append(ticket)
                self._waited += 1
                while self._free == 0 or self._line[0] is not ticket:
                    if stopping.is_set():
                        self._line.remove(ticket)
                        self._turns.notify_all()
                        return False
                    self._turns.wait(0.1)  # woken when a place frees; the timeout only looks at `stopping`
                self._line.popleft()
                self._turns.notify_all()  # the next in line may find a place too
            if self._free is not None:
                self._free -= 1
            self._in_service += 1
            self._peak_in_service = max(self._peak_in_service, self._in_service)
            return True

    def stats(self) -> LoadStats:
        with self._lock:
            return LoadStats(self._held, self._peak_held, len(self._line), self._in_service, self._peak_in_service,
                             self._waited, self._requests)
