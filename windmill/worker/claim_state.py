"""What a worker's claim loop knows between round trips: its wake-up, with the queues hinted since it last looked,
each lane's state (its places free, whether its last claim came back short, when the jobs it was notified of fall
due), and what a wake-up tells the lanes (apply_wake). Kept apart from the loop itself (windmill.worker.runtime),
which applies them."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from windmill.jobs import Job
from windmill.worker.lanes import Lane

DUE_RECHECKS = 3  # a delayed lane's empty claim at a due time may be followed by this many more, each twice as late


class ClaimWake(threading.Event):
    """The claim loop's wake-up. `set` is a hint that jobs may wait in any queue (the wake-all channel, a reconnect,
    a stop); `hint_queue` that they may wait in that queue (its own channel, sql/0096); `nudge` only says a handler
    finished."""

    def __init__(self) -> None:
        super().__init__()
        self._hint_lock = threading.Lock()
        self._everything = False
        self._queues: frozenset[str] = frozenset()

    def set(self) -> None:
        with self._hint_lock:
            self._everything = True
        super().set()

    def hint_queue(self, queue: str) -> None:
        with self._hint_lock:
            self._queues |= {queue}
        super().set()

    def nudge(self) -> None:
        super().set()

    def take_hint(self) -> tuple[bool, frozenset[str]]:
        """(a hint for every queue, the queues hinted) since the last call."""
        with self._hint_lock:
            everything, queues = self._everything, self._queues
            self._everything, self._queues = False, frozenset()
        return everything, queues


class LaneState:
    """A lane at run time: its threads, and its jobs claimed whose handler has not finished (`busy`)."""

    def __init__(self, lane: Lane, batch_size: int, role_name: str, recheck_after_s: float,
                 claim_delay_s: float = 0.0, claim_together_s: float = 0.0,
                 handoff_lane: int | None = None) -> None:
        self.lane = lane
        self.handoff_lane = handoff_lane  # its place among the worker's lanes that hand off, if it does
        self.recheck_after_s = recheck_after_s
        self.claim_delay_s = claim_delay_s  # its jobs fall due this long after they are queued (Role.claim_delay_s)
        self.claim_together_s = claim_together_s  # notifications this close share a claim (Role.claim_together_s)
        self.due: deque[float] = deque()  # when it claims the jobs it was notified of, oldest first
        self._group_first_due = 0.0  # when the first job of the last entry of `due` falls due
        # A service lane takes only what it can start; a shared lane may hold a batch waiting for its threads.
        self.holds = lane.threads if lane.per_service else max(lane.threads, batch_size)
        self.busy = 0
        self.dry = False  # its last claim came back short: wait for a hint or the poll
        self.took_waited = False  # took a job that had waited in a backed-up queue, and has not rechecked since
        self.recheck_at: float | None = None  # when it claims once more although dry (sql/0098)
        self.awaiting_due = False  # a job it was notified of fell due, and no claim has answered since
        self.due_misses = 0  # its claims in a row at or after a due time that came back empty
        self.looking_behind = False  # one came back empty: is a due job of its queues still queued? (left_behind)
        self.rechecking_due = False  # recheck_at is one of those claims
        self.executor = ThreadPoolExecutor(lane.threads, thread_name_prefix=f"{role_name}-{lane.name}")

    @property
    def free(self) -> int:
        return self.holds - self.busy

    def claimed(self, jobs: list[Job], asked: int) -> None:
        """Note a claim's outcome. An enqueue stays silent while its queue is backed up (sql/0098), counting on a
        waiting job: if this lane took it, then found the queue drained before that enqueue committed, nothing would
        wake it until the poll. So after taking such a job, its next short claim is followed by one more, shortly
        after; only lanes that drained a backlog pay that claim."""
        self.took_waited = self.took_waited or any(job.waited for job in jobs)
        self.dry = len(jobs) < asked
        if self.dry and self.took_waited:
            self._recheck_in(self.recheck_after_s)
            self.took_waited = False
        if self.awaiting_due:
            self._answer_due(found=bool(jobs))

    def _answer_due(self, found: bool) -> None:
        """A claim after a due time came back. Empty, the job may be there but locked: an enqueue holds a waiting
        job FOR SHARE until its transaction commits (sql/0012), SKIP LOCKED passes it by, and that commit notifies
        nobody, for the job was already queued. Or it is gone, to a hand-off or to another worker of the fleet (each
        notification wakes every worker of the queue, and one takes the job). The claim loop tells the two apart
        with a plain read (left_behind) before it claims again."""
        self.awaiting_due = False
        if found:
            self.due_misses = 0
        elif self.due_misses < DUE_RECHECKS:
            self.looking_behind = True

    def left_behind(self, waiting: bool) -> None:
        """The read's answer: a due job of the lane's queues is still queued (`waiting`, locked when the claim
        passed it by), so claim again shortly, twice as late each time, a few times (the poll covers a lock held
        longer); or none is, and the lane waits for a hint or the poll. Blind rechecks cost a fleet of N workers of
        a queue 3 (N - 1) empty claims per notification."""
        self.looking_behind = False
        if not waiting:
            self.due_misses = 0
            return
        self._recheck_in(self.recheck_after_s * 2 ** self.due_misses)
        self.due_misses += 1
        self.rechecking_due = True

    def _recheck_in(self, delay_s: float) -> None:
        at = time.monotonic() + delay_s
        self.recheck_at = at if self.recheck_at is None else min(self.recheck_at, at)

    def recheck_due(self, now: float) -> bool:
        if self.recheck_at is None or now < self.recheck_at:
            return False
        self.recheck_at = None
        if self.rechecking_due:
            self.rechecking_due, self.awaiting_due = False, True
        return True

    def notified(self, now: float) -> None:
        """Its queue's notification arrived: a job was queued. Claim now, or, for a lane whose jobs fall due later,
        when that job is due (the notification's transaction began before `now`, so its job is due by then).
        Notifications within claim_together_s of a group's first share one claim, made when the group's last job
        is due: made at the first's due time, it would leave the later ones for the poll."""
        if self.claim_delay_s <= 0:
            self.dry = False
            return
        due = now + self.claim_delay_s
        if self.due and due - self._group_first_due <= self.claim_together_s:
            self.due[-1] = max(self.due[-1], due)
        else:
            self.due.append(due)
            self._group_first_due = due

    def fell_due(self, now: float) -> bool:
        """Whether a job it was notified of has fallen due since it last looked."""
        fell = False
        while self.due and self.due[0] <= now:
            self.due.popleft()
            fell = True
        if fell:
            self.awaiting_due, self.due_misses = True, 0
        return fell

    @property
    def next_due(self) -> float | None:
        return self.due[0] if self.due else None

    def wants_claim(self) -> bool:
        """Worth a round trip: half its places free, or nothing left running."""
        return not self.dry and self.free > 0 and (self.free >= max(1, self.holds // 2) or self.busy == 0)


def apply_wake(lanes: Iterable[LaneState], *, everything: bool, hinted: frozenset[str], now: float) -> None:
    """What a wake-up tells the lanes: `everything` (the poll, the wake-all channel, a reconnect) makes every lane
    claim again; a queue's own notification makes its lane claim again, or, for a delayed lane, claim when the job
    falls due. A notification registers that due time also when it comes with a wake for everything: the claim that
    wake makes comes before the job is due, and without the due time the lane left that job for the next poll
    (about a second). That fits the one image in a run whose first boxes came a second late, now and then."""
    for lane in lanes:
        if not hinted.isdisjoint(lane.lane.queues):
            lane.notified(now)
        if everything:
            lane.dry = False
