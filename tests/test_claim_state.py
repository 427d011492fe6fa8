"""A delayed lane's claims after a due time (windmill.worker.claim_state): pure state, no database. The case these
rechecks exist for, a job locked by an enqueue when it falls due, runs against PostgreSQL in test_merge_window."""

from __future__ import annotations

import time

import pytest

from windmill.jobs import Job
from windmill.worker.claim_state import DUE_RECHECKS, LaneState, apply_wake
from windmill.worker.lanes import Lane

RECHECK_S = 0.05
DELAY_S = 0.05
TOGETHER_S = 0.005


@pytest.fixture
def lane() -> LaneState:
    state = LaneState(Lane(queues=("merge",), threads=2), batch_size=4, role_name="merge-test",
                      recheck_after_s=RECHECK_S, claim_delay_s=DELAY_S, claim_together_s=TOGETHER_S)
    yield state
    state.executor.shutdown()


def a_job() -> Job:
    return Job(id=1, queue="merge", payload={}, image_id=7, attempts=1, max_attempts=5)


def fall_due(lane: LaneState) -> None:
    lane.notified(time.monotonic() - DELAY_S)
    assert lane.fell_due(time.monotonic())


def recheck_delays(lane: LaneState) -> list[float]:
    """Answer every claim with nothing, and note how long after each the lane asks to claim again."""
    delays: list[float] = []
    while len(delays) <= DUE_RECHECKS:  # one more than it should ask for
        asked_at = time.monotonic()
        lane.claimed([], asked=2)
        if lane.looking_behind:
            lane.left_behind(True)  # the claim loop's read: the due job is still queued (locked)
        if lane.recheck_at is None:
            return delays
        delays.append(lane.recheck_at - asked_at)
        assert lane.recheck_due(lane.recheck_at)  # the loop comes back at that time and claims
    return delays


def test_an_empty_claim_at_a_due_time_is_followed_by_a_few_more_each_twice_as_late(lane: LaneState) -> None:
    fall_due(lane)
    delays = recheck_delays(lane)
    assert len(delays) == DUE_RECHECKS
    assert delays == pytest.approx([RECHECK_S * 2 ** n for n in range(DUE_RECHECKS)], abs=0.01)


def test_a_claim_that_finds_the_job_ends_the_rechecks(lane: LaneState) -> None:
    fall_due(lane)
    lane.claimed([], asked=2)
    lane.left_behind(True)
    assert lane.recheck_due(lane.recheck_at)
    lane.claimed([a_job()], asked=2)
    assert lane.recheck_at is None
    fall_due(lane)  # the next job's due time starts the count again
    assert len(recheck_delays(lane)) == DUE_RECHECKS


def test_an_empty_claim_at_a_due_time_looks_before_it_claims_again(lane: LaneState) -> None:
    """In a fleet every worker of the queue is notified and one takes the job: the others' claims come back empty,
    and claiming again three times each would be 3 (N - 1) claims per job for nothing."""
    fall_due(lane)
    lane.claimed([], asked=2)
    assert lane.looking_behind and lane.recheck_at is None
    lane.left_behind(False)  # nothing due is queued: another worker took it
    assert not lane.looking_behind and lane.recheck_at is None and lane.dry
    assert lane.due_misses == 0


def test_an_empty_claim_that_no_due_time_prompted_waits_for_a_hint(lane: LaneState) -> None:
    lane.claimed([], asked=2)
    assert lane.recheck_at is None and lane.dry and not lane.looking_behind


def test_notifications_close_together_share_one_claim_when_the_last_is_due(lane: LaneState) -> None:
    """Made when the first is due, the claim would find the later jobs not due yet and leave them for the poll."""
    window = TOGETHER_S
    lane.notified(100.0)
    lane.notified(100.0 + window * 0.6)
    lane.notified(100.0 + window * 0.9)
    assert lane.next_due == pytest.approx(100.0 + window * 0.9 + DELAY_S)
    lane.notified(100.0 + window * 1.5)  # past the group's window: a claim of its own
    assert not lane.fell_due(100.0 + DELAY_S + window * 0.5)
    assert lane.fell_due(100.0 + DELAY_S + window)
    assert lane.next_due == pytest.approx(100.0 + window * 1.5 + DELAY_S)


def test_a_notification_that_comes_with_the_poll_still_sets_its_due_time(lane: LaneState) -> None:
    """The poll's claim comes before the notified job is due; without the due time the job waited for the next poll,
    about a second (which fits one image's first boxes a second late in `bench pipeline --latency-profile gpu`)."""
    lane.dry = True
    apply_wake([lane], everything=True, hinted=frozenset({"merge"}), now=100.0)
    assert not lane.dry, "the poll claims now"
    assert lane.next_due == pytest.approx(100.0 + DELAY_S), "and again when the notified job is due"


def test_a_notification_of_another_queue_leaves_the_lane_as_it_was(lane: LaneState) -> None:
    lane.dry = True
    apply_wake([lane], everything=False, hinted=frozenset({"consensus"}), now=100.0)
    assert lane.dry and lane.next_due is None
