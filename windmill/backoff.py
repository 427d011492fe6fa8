"""Backoff, the one rule for how long to wait after consecutive failures: a first delay, doubling per failure up to
a cap, optionally spread by jitter so a burst of failures does not retry in lockstep. Job retries, RabbitMQ task
retries and reconnects, and the workers' claim and listen loops all wait by it."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

# 2 ** 62 times any first delay is past every cap; a larger exponent would only risk an OverflowError in float().
_MAX_EXPONENT = 62


def backoff_delay(failures: int, *, first_s: float, cap_s: float, jitter: float = 0.0,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after the `failures`-th consecutive failure (1-based; 0 counts as 1): `first_s`, doubling,
    at most `cap_s`; `jitter` (a fraction) moves it by up to ± that share of itself."""
    delay = min(cap_s, first_s * 2 ** min(max(0, failures - 1), _MAX_EXPONENT))
    if jitter:
        delay += (rng or random).uniform(-jitter, jitter) * delay
    return max(0.0, delay)


def backoff_delays(*, first_s: float, cap_s: float) -> Iterator[float]:
    """The delays of one failure after another, for a loop that keeps no count: first_s, doubling, then cap_s for
    ever (0.5, 1, 2, … 30, 30, …)."""
    return (backoff_delay(failures, first_s=first_s, cap_s=cap_s) for failures in itertools.count(1))
