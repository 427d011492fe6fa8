"""Group commit (pure: threads only, no I/O): callers hand in one row each and wait; the rows that arrive while a
group is being written go together in the next one.

Leader/follower, without a thread of its own: a caller that finds no group being written takes the waiting rows (up
to the cap, oldest first) and writes them itself; the others wait. When the write returns, each caller of the group
gets its own outcome, and the oldest caller still waiting leads the next group. A row that waits alone is written
at once: nothing ever waits for a group to fill.

The write is given in: it receives the group's rows and returns one outcome per row, in the same order, either the
row's result or the exception that row's caller raises. An exception out of the write itself is every row's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar, cast

Row = TypeVar("Row")
Result = TypeVar("Result")

DEFAULT_CAP = 32


@dataclass
class _Waiting(Generic[Row, Result]):
    row: Row
    # Held from the start; released once, by whoever wakes this caller: the leader that wrote its row, or the one
    # that hands it the next group to lead (`leads`).
    wake: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False
    result: Result | None = None
    error: BaseException | None = field(default=None)
    leads: list[_Waiting[Row, Result]] | None = None


class GroupCommit(Generic[Row, Result]):
    """Thread-safe: `submit` from any number of threads; one group is written at a time.

    Each waiting caller sleeps on a lock of its own and is woken exactly once: to return its outcome, or to lead the
    next group. (A condition variable's notify_all woke every waiting caller after each group, and all but the
    group's went back to sleep: with eight handler threads that was a tenth of a service worker's CPU.)"""

    def __init__(self, write: Callable[[Sequence[Row]], Sequence[Result | BaseException]], *,
                 cap: int = DEFAULT_CAP) -> None:
        if cap < 1:
            raise ValueError(f"a group holds at least one row (cap {cap})")
        self._write = write
        self.cap = cap
        self._mutex = threading.Lock()
        self._queue: list[_Waiting[Row, Result]] = []
        self._writing = False

    @property
    def waiting(self) -> int:
        """Rows handed in and not yet in a group being written (a test seam: who will go together next)."""
        with self._mutex:
            return len(self._queue)

    def submit(self, row: Row) -> Result:
        """Write `row` with whatever else waits; return its result once its group's write is over, or raise its
        error."""
        mine: _Waiting[Row, Result] = _Waiting(row)
        mine.wake.acquire()
        with self._mutex:
            if self._writing:
                self._queue.append(mine)
                group = None
            else:  # nobody writes, so nobody waits either (a write hands the queue on): lead at once
                self._writing = True
                group = [mine]
        if group is None:
            mine.wake.acquire()  # until written, or handed the next group (which holds this row: the oldest)
            group = mine.leads
        if group is not None:
            self._lead(group)
        if mine.error is not None:
            raise mine.error
        return cast(Result, mine.result)  # done without an error: the write gave this row's result

    def _lead(self, group: list[_Waiting[Row, Result]]) -> None:
        """Write the group and wake its callers; the next group (the oldest waiting rows, up to the cap) goes to
        its oldest caller to lead."""
        outcomes: Sequence[Result | BaseException]
        try:
            outcomes = self._write([waiting.row for waiting in group])
            if len(outcomes) != len(group):
                outcomes = [RuntimeError(f"a group write gave {len(outcomes)} outcomes for {len(group)} rows")
                            ] * len(group)
        except BaseException as error:  # every caller of the group raises it, the leader's too
            outcomes = [error] * len(group)
        for waiting, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                waiting.error = outcome
            else:
                waiting.result = outcome
            waiting.done = True
        # Leadership is handed on whatever the write did, or the waiting callers would wait for ever.
        with self._mutex:
            following, self._queue = self._queue[:self.cap], self._queue[self.cap:]
            self._writing = bool(following)
        leader = following[0] if following else None
        for waiting in group:
            waiting.wake.release()  # the leader's own too: nobody waits on it, and it is never used again
        if leader is not None:
            leader.leads = following
            leader.wake.release()
