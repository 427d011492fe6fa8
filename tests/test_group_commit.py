"""Group commit's gathering (windmill/group_commit.py, pure): who goes in which group, and who gets which outcome.
The write here is a plain function that records its groups and can be held, as a slow commit would be."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from tests.conftest import wait_until
from windmill.group_commit import GroupCommit


class HeldWrite:
    """Records each group; the first group waits until released, so the rows handed in meanwhile queue up."""

    def __init__(self, fail: Sequence[str] = ()) -> None:
        self.groups: list[list[str]] = []
        self.writing = threading.Event()
        self.release = threading.Event()
        self.fail = set(fail)

    def __call__(self, rows: Sequence[str]) -> list[str | BaseException]:
        self.groups.append(list(rows))
        if len(self.groups) == 1:
            self.writing.set()
            assert self.release.wait(10)
        return [ValueError(f"bad {row}") if row in self.fail else f"id of {row}" for row in rows]


def submit_in_thread(group: GroupCommit[str, str], row: str, outcomes: dict[str, object]) -> threading.Thread:
    def submit() -> None:
        try:
            outcomes[row] = group.submit(row)
        except Exception as error:
            outcomes[row] = error

    thread = threading.Thread(target=submit)
    thread.start()
    return thread


def test_a_row_that_waits_alone_is_written_at_once() -> None:
    write = HeldWrite()
    write.release.set()
    group: GroupCommit[str, str] = GroupCommit(write)
    assert group.submit("a") == "id of a"
    assert group.submit("b") == "id of b"
    assert write.groups == [["a"], ["b"]]


def test_rows_handed_in_during_a_write_go_together_in_the_next_group_up_to_the_cap() -> None:
    write = HeldWrite()
    group: GroupCommit[str, str] = GroupCommit(write, cap=3)
    outcomes: dict[str, object] = {}
    threads = [submit_in_thread(group, "first", outcomes)]
    assert write.writing.wait(10)
    for waiting, row in enumerate(("b", "c", "d", "e", "f"), start=1):
        threads.append(submit_in_thread(group, row, outcomes))
        wait_until(lambda waiting=waiting: group.waiting == waiting, message=f"{row} to wait")  # in this order
    assert outcomes == {}, "a caller returned before its group was written"
    write.release.set()
    for thread in threads:
        thread.join(10)
    assert write.groups == [["first"], ["b", "c", "d"], ["e", "f"]]
    assert outcomes == {row: f"id of {row}" for row in ("first", "b", "c", "d", "e", "f")}


def test_a_row_that_fails_raises_in_its_own_caller_only() -> None:
    write = HeldWrite(fail=["bad"])
    group: GroupCommit[str, str] = GroupCommit(write)
    outcomes: dict[str, object] = {}
    threads = [submit_in_thread(group, "first", outcomes)]
    assert write.writing.wait(10)
    for waiting, row in enumerate(("good", "bad", "also good"), start=1):
        threads.append(submit_in_thread(group, row, outcomes))
        wait_until(lambda waiting=waiting: group.waiting == waiting, message=f"{row} to wait")
    write.release.set()
    for thread in threads:
        thread.join(10)
    assert write.groups[1] == ["good", "bad", "also good"]
    assert isinstance(outcomes.pop("bad"), ValueError)
    assert outcomes == {"first": "id of first", "good": "id of good", "also good": "id of also good"}


def test_a_write_that_raises_fails_every_caller_of_its_group_and_the_next_group_is_written() -> None:
    calls: list[list[str]] = []
    gone = ConnectionError("the database went away")

    def write(rows: Sequence[str]) -> list[str | BaseException]:
        calls.append(list(rows))
        if len(calls) == 1:
            raise gone
        return [f"id of {row}" for row in rows]

    group: GroupCommit[str, str] = GroupCommit(write)
    with pytest.raises(ConnectionError) as raised:
        group.submit("a")
    assert raised.value is gone
    assert group.submit("b") == "id of b"


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        GroupCommit(lambda rows: list(rows), cap=0)
