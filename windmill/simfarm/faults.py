"""Fault injection: HTTP 500s, requests held past any client timeout, malformed bodies (latency: simfarm.latency).

Decisions are per request, not per image: the k-th request to a service draws from (seed, service, k).
Under concurrency which request is the k-th may vary, but the multiset of faults a run of N requests
sees is the same for the same seed, which is what a reproducible load test needs.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from windmill.errors import WindmillError
from windmill.simfarm.determinism import unit


class Fault(enum.Enum):
    NONE = "none"
    ERROR = "error"  # HTTP 500 with the service's error body
    TIMEOUT = "timeout"  # hold the request, then close without answering
    MALFORMED = "malformed"  # a body that is not the contract's JSON


@dataclass(frozen=True)
class Decision:
    fault: Fault
    variant: float  # a second draw in [0, 1) to pick among a fault's forms


@dataclass(frozen=True)
class FaultRates:
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    malformed_rate: float = 0.0

    def __post_init__(self) -> None:
        rates = {"error": self.error_rate, "timeout": self.timeout_rate, "malformed": self.malformed_rate}
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise WindmillError(f"the {name} rate must lie between 0 and 1, got {rate}")
        if sum(rates.values()) > 1.0 + 1e-9:
            raise WindmillError(f"error, timeout and malformed rates add up to {sum(rates.values()):g}, more than 1")

    @property
    def any(self) -> bool:
        return self.error_rate > 0 or self.timeout_rate > 0 or self.malformed_rate > 0


class FaultPlan:
    """Draws one decision per request and service."""

    def __init__(self, rates: FaultRates, seed: int = 0) -> None:
        self.rates = rates
        self.seed = seed
        self._counters: dict[str, Iterator[int]] = {}

    def _next_index(self, service: str) -> int:
        counter = self._counters.get(service)
        if counter is None:
            counter = self._counters.setdefault(service, itertools.count())
        return next(counter)  # itertools.count is atomic under the GIL

    def decide(self, service: str) -> Decision:
        rates = self.rates
        if not rates.any:
            return Decision(Fault.NONE, 0.0)
        index = self._next_index(service)
        draw = unit(self.seed, service, index, "fault")
        variant = unit(self.seed, service, index, "variant")
        if draw < rates.error_rate:
            return Decision(Fault.ERROR, variant)
        if draw < rates.error_rate + rates.timeout_rate:
            return Decision(Fault.TIMEOUT, variant)
        if draw < rates.error_rate + rates.timeout_rate + rates.malformed_rate:
            return Decision(Fault.MALFORMED, variant)
        return Decision(Fault.NONE, variant)
