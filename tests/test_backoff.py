"""The one backoff rule: first delay, doubling per consecutive failure, capped, optionally spread by jitter."""

from __future__ import annotations

import random

import pytest

from windmill.backoff import backoff_delay, backoff_delays


@pytest.mark.parametrize(("failures", "expected_s"), [(0, 1), (1, 1), (2, 2), (3, 4), (6, 32), (20, 300)])
def test_delay_doubles_per_failure_up_to_its_cap(failures: int, expected_s: float) -> None:
    assert backoff_delay(failures, first_s=1.0, cap_s=300.0) == expected_s


@pytest.mark.parametrize("failures", [2, 6, 20])
def test_jitter_spreads_the_delay_within_its_share(failures: int) -> None:
    plain = backoff_delay(failures, first_s=1.0, cap_s=300.0)
    rng = random.Random(7)
    spread = [backoff_delay(failures, first_s=1.0, cap_s=300.0, jitter=0.2, rng=rng) for _ in range(200)]
    assert all(abs(delay - plain) <= 0.2 * plain for delay in spread)
    assert len(set(spread)) > 1


def test_a_failure_count_from_a_days_long_outage_waits_the_cap() -> None:
    # A message waiting for the database counts every wait: after 1,024 of them 2 ** n no longer fits a float.
    assert backoff_delay(5_000, first_s=1.0, cap_s=30.0) == 30.0


def test_delays_of_a_loop_that_keeps_no_count_double_then_stay_at_the_cap() -> None:
    delays = backoff_delays(first_s=0.5, cap_s=30.0)
    assert [next(delays) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
