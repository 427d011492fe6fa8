"""A service that is down, as one worker process sees it: its calls wait for it instead of spending their attempts.

A service restarting (a model reloading takes a minute or two) used to turn its backlog into error rows: each task's
five attempts, 1 + 2 + 4 + 8 s apart, were spent in 15 s of connection refused. A failure that says the *service* is
away rather than that the call went wrong marks the service down: no connection (refused, no such host, none within
the connect timeout: kind `connect`), or HTTP 502, 503, 504 or 429 (a proxy with nothing behind it, a service
starting or overloaded). While it is down:

* a call does not go out: it waits, holding its task (a job keeps its lease, a RabbitMQ delivery stays unacked) but
  no place of the service's `max_concurrency`; its lane has no thread free, so it claims nothing more;
* one call at a time goes out, the probe: 1 s after the failure, then 2, 4, … s apart, at most `probe_cap_s`; the
  other calls wait for it;
* any answer from the service (a success, or an error about the image) marks it up, and the waiting calls go out;
* once the service has been down for `wait_s` (WINDMILL_OUTAGE_WAIT_S), calls go out again and such a failure is the
  queue's to retry, as any passing failure, its reason saying how long the service has been down: a dead service's
  backlog so ends as error rows (and RabbitMQ's dead-letter queues) after the tasks' retry budget instead of
  waiting for ever.

A call in flight when the service died fails with kind `network` (the connection broke mid-exchange), and a service
that accepts connections but does not answer with kind `timeout`: those stay counted attempts, and leave the state
as it is. An image that crashes the service each time it is sent would otherwise be tried for ever, taking the
service down each time.

`stop()` (the worker stopping) ends every wait with OutageWaitStopped, an attempt given back: the task returns to
its queue uncounted. Health probes (`check_services`) do not pass through here: they say what they see.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from windmill.backoff import backoff_delay
from windmill.errors import AttemptGivenBack
from windmill.farm.errors import ServiceCallError

log = logging.getLogger(__name__)
T = TypeVar("T")

FIRST_PROBE_S = 1.0
PROBE_CAP_S = 10.0
OUTAGE_STATUSES = frozenset({429, 502, 503, 504})
_WAKE_S = 1.0  # a call waiting on another's probe looks at the clock this often (the allowance may run out)


def marks_outage(error: ServiceCallError) -> bool:
    """The failure says the service is away, not that this call went wrong."""
    return error.kind == "connect" or error.status_code in OUTAGE_STATUSES


class OutageWaitStopped(AttemptGivenBack):
    """The worker stopped while a call waited for its service to come back."""


@dataclass
class _Down:
    since: float
    next_probe: float
    reason: str = ""  # the last failure that found it down
    probes: int = 0  # probes that failed so, for the backoff
    probing: bool = False
    past_wait: bool = False  # the allowance ran out (logged once)


class ServiceOutages:
    """The services this process finds down, and the calls waiting for them; thread-safe. `wait_s` 0 turns it off:
    every call goes out and every failure is the queue's to retry."""

    def __init__(self, wait_s: float, *, first_probe_s: float = FIRST_PROBE_S,
                 probe_cap_s: float = PROBE_CAP_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait_s = wait_s
        self._first_probe_s = first_probe_s
        self._probe_cap_s = probe_cap_s
        self._clock = clock
        self._changed = threading.Condition()
        self._down: dict[str, _Down] = {}
        self._stopped = False

    def call(self, service: str, attempt: Callable[[], T]) -> T:
        """Run `attempt` (one call to `service`, raising ServiceCallError when it fails) once the service may be
        called; again while it is found down, until it answers or has been down for `wait_s`."""
        if self.wait_s <= 0:
            return attempt()
        while True:
            # Read without the lock: a service found down a moment ago is found by the next call, and what this
            # call meets is judged under the lock all the same.
            probe = self._turn(service) if self._down else False
            try:
                result = attempt()
            except ServiceCallError as error:
                if not marks_outage(error):
                    self._answered(service, probe, up=error.kind not in ("timeout", "network"))
                    raise
                down_for = self._failed(service, error, probe)
                if down_for < self.wait_s:
                    continue
                raise error.restated(f"{error.reason} (down for {down_for:.0f} s)") from None
            except BaseException:
                self._answered(service, probe, up=False)
                raise
            self._answered(service, probe, up=True)
            return result

    def down(self) -> dict[str, float]:
        """Seconds each service found down has been down."""
        return {service: seconds for service, (seconds, _) in self.described().items()}

    def described(self) -> dict[str, tuple[float, str]]:
        """Each service found down: how long it has been down, and the failure that last found it so."""
        now = self._clock()
        with self._changed:
            return {service: (now - down.since, down.reason) for service, down in self._down.items()}

    def stop(self) -> None:
        """End every wait for a service that is down, now and later, with OutageWaitStopped; a call to a service
        that answers still goes out (a stopping worker's handlers finish what they run)."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()

    def _turn(self, service: str) -> bool:
        """Wait until a call to `service` may go out; True when it goes out as the service's probe."""
        with self._changed:
            while True:
                down = self._down.get(service)
                if down is None:
                    return False  # a stopping worker's handlers finish their calls (the drain)
                now = self._clock()
                left = down.since + self.wait_s - now
                if left <= 0:
                    return False
                if self._stopped:
                    raise OutageWaitStopped(f"the worker stopped while {service} was down; the task goes back to its "
                                            "queue, not counted as an attempt")
                if not down.probing and now >= down.next_probe:
                    down.probing = True
                    return True
                until_probe = _WAKE_S if down.probing else down.next_probe - now
                self._changed.wait(min(left, until_probe, _WAKE_S))

    def _failed(self, service: str, error: ServiceCallError, probe: bool) -> float:
        """Record a failure that marks `service` down; returns how long it has been down."""
        with self._changed:
            now = self._clock()
            down = self._down.get(service)
            if down is None:
                down = self._down[service] = _Down(since=now, next_probe=now)
                log.warning("%s is down (%s): its calls wait for it, up to %g s, trying it again every few seconds",
                            service, error.reason, self.wait_s, extra={"action": "service_down"})
            down.reason = error.message
            if probe or down.probes == 0:  # calls sent before it was found down do not push the probes back
                down.probes += 1
                down.next_probe = now + backoff_delay(down.probes, first_s=self._first_probe_s,
                                                      cap_s=self._probe_cap_s)
            if probe:
                down.probing = False
            down_for = now - down.since
            if down_for >= self.wait_s and not down.past_wait:
                down.past_wait = True
                log.error("%s has been down for %.0f s (%s): its tasks' calls no longer wait for it",
                          service, down_for, error.reason, extra={"action": "service_down_too_long"})
            self._changed.notify_all()
            return down_for

    def _answered(self, service: str, probe: bool, *, up: bool) -> None:
        """The call ended otherwise than by the service being away: `up` when the service answered."""
        if service not in self._down:
            return
        with self._changed:
            down = self._down.get(service)
            if down is None:
                return
            if up:
                del self._down[service]
                log.warning("%s answers again after %.0f s down", service, self._clock() - down.since,
                            extra={"action": "service_up"})
            elif probe:
                down.probing = False
            self._changed.notify_all()
