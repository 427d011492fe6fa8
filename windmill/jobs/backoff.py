"""Retry delays: exponential, capped, with jitter so a burst of failures does not retry in lockstep."""

from __future__ import annotations

import random
from datetime import timedelta


def retry_delay(
    attempt: int,
    *,
    base_s: float = 1.0,
    cap_s: float = 300.0,
    jitter: float = 0.2,
    rng: random.Random | None = None,
) -> timedelta:
    """Delay before attempt `attempt + 1` after attempt `attempt` (1-based) failed."""
    delay = min(cap_s, base_s * 2 ** max(0, attempt - 1))
    spread = (rng or random).uniform(-jitter, jitter) * delay
    return timedelta(seconds=max(0.0, delay + spread))
