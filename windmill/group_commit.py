"""Group commit (pure: threads only, no I/O): callers hand in one row each and wait; the rows that arrive while a
group is being written go together in the next one.

Leader/follower, without a thread of its own: a caller that finds no group being written takes the waiting rows (up
to the cap, oldest first) and writes them itself; the others wait. When the write returns, each caller of the group
gets its own outcome, and one of the callers still waiting leads the next group. A row that waits alone is written
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
    done: bool = False
    result: Result | None = None
    error: BaseException | None = field(default=None)


class GroupCommit(Generic[Row, Result]):
    """Thread-safe: `submit` from any number of threads; one group is written at a time."""

    def __init__(self, write: Callable[[Sequence[Row]], Sequence[Result | BaseException]], *,
                 cap: int = DEFAULT_CAP) -> None:
        if cap < 1:
            raise ValueError(f"a group holds at least one row (cap {cap})")
        self._write = write
        self.cap = cap
        self._changed = threading.Condition()
        self._queue: list[_Waiting[Row, Result]] = []
        self._writing = False

    @property
    def waiting(self) -> int:
        """Rows handed in and not yet in a group being written (a test seam: who will go together next)."""
        with self._changed:
            return len(self._queue)

    def submit(self, row: Row) -> Result:
        """Write `row` with whatever else waits; return its result once its group's write is over, or raise its
        error."""
        mine: _Waiting[Row, Result] = _Waiting(row)
        with self._changed:
            self._queue.append(mine)
        while True:
            with self._changed:
                while self._writing and not mine.done:
                    self._changed.wait()
                if mine.done:
                    break
                # Nobody writes: lead. The oldest rows first, so a caller beyond the cap is in the next group.
                group, self._queue = self._queue[:self.cap], self._queue[self.cap:]
                self._writing = True
            self._lead(group)
        if mine.error is not None:
            raise mine.error
        return cast(Result, mine.result)  # done without an error: the write gave this row's result

    def _lead(self, group: list[_Waiting[Row, Result]]) -> None:
        outcomes: Sequence[Result | BaseException]
        try:
            outcomes = self._write([waiting.row for waiting in group])
            if len(outcomes) != len(group):
                outcomes = [RuntimeError(f"a group write gave {len(outcomes)} outcomes for {len(group)} rows")
                            ] * len(group)
        except BaseException as error:  # every caller of the group raises it, the leader's too
            outcomes = [error] * len(group)
        # Leadership is released whatever the write did, or the followers would wait for ever.
        with self._changed:
            for waiting, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    waiting.error = outcome
                else:
                    waiting.result = outcome
                waiting.done = True
            self._writing = False
            self._changed.notify_all()
