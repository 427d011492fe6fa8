"""Settling RabbitMQ deliveries in batches: handler threads post their outcomes to a mailbox that wakes the
connection's thread once per batch, and the acks of a batch go out as few frames as the tags still open allow.

Waking the connection's thread (pika's `add_callback_threadsafe`) and sending each ack (a frame, then a flush of
the connection's output) cost more CPU than a no-op handler: done once per delivery they were most of a service
worker's time. A batch costs one wake-up and, for the tags below every tag still open on a channel, one ack.

When tasks trickle (handlers of milliseconds, a prefetch of a few per lane) batches stay small, so an outcome need
not wake that thread at all while the handler thread that posted it has another task to run: it is settled on the
connection thread's next pass, which comes anyway (a delivery, a heartbeat, the consumer's pump timer, or a handler
thread that runs out of tasks and wakes it, since the acks bring the next deliveries).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """Items posted from any thread, handed in batches to `settle` on the thread that `wake` schedules.

    `wake(callback)` must run `callback` later on that thread (a connection's `add_callback_threadsafe`); it is
    called only when no wake-up is pending, so a burst of posts costs one. A mailbox belongs to one connection: if
    that connection dies with a wake-up pending, the mailbox is left behind with it, never reused."""

    def __init__(self, wake: Callable[[Callable[[], None]], None], settle: Callable[[list[T]], None]) -> None:
        self._wake = wake
        self._settle = settle
        self._items: deque[T] = deque()  # append and popleft are atomic: no lock between posters and the settler
        self._woken = False

    def post(self, item: T, *, wake: bool = True) -> None:
        """Queue `item`, and wake the settling thread unless a wake-up is already pending (raises what `wake`
        raises, e.g. when the connection closed). `wake=False`: leave it to the settling thread's next pass
        (`settle_posted`) or to a later `wake()`; the caller makes sure one comes."""
        self._items.append(item)
        if wake:
            self.wake()

    def wake(self) -> None:
        """Wake the settling thread for the items posted, unless none are or a wake-up is already pending."""
        # Two posters may both see no wake-up pending and both wake: a second, empty batch costs little. What must
        # not happen is an item left behind, and cannot: the settler clears the flag before it takes the items, so
        # a poster that saw the flag set appended before that batch was taken.
        if not self._woken and self._items:
            self._woken = True
            self._wake(self._deliver)

    def settle_posted(self) -> None:
        """On the settling thread: settle the items posted so far, without waiting for a wake-up."""
        if self._items:
            self._take_and_settle()

    def _deliver(self) -> None:
        self._woken = False
        self._take_and_settle()

    def _take_and_settle(self) -> None:
        items: list[T] = []
        while True:
            try:
                items.append(self._items.popleft())
            except IndexError:
                break
        if items:
            self._settle(items)


def plan_acks(tags: Iterable[int], lowest_open: int | None) -> tuple[int | None, list[int]]:
    """How to ack `tags` of one channel when `lowest_open` is the smallest tag still unsettled there (running,
    held for a retry, waiting for the database; None when none is): (the tag of one ack with `multiple=True`
    covering every tag below `lowest_open`, or None; the tags to ack one by one).

    A multiple ack settles every outstanding tag up to its own, so it may reach no further than the tags below the
    lowest open one: those are all either in `tags` or settled already (a tag is settled once, and delivery tags
    grow by one per delivery of the channel, so every smaller tag was delivered, and handed to us, earlier)."""
    below: list[int] = []
    singles: list[int] = []
    for tag in tags:
        (below if lowest_open is None or tag < lowest_open else singles).append(tag)
    if len(below) < 2:
        return None, below + singles
    return max(below), singles


def plan_channel_acks(acks: Mapping[str, list[int]], unsettled: Iterable[tuple[str, int]]
                      ) -> dict[str, tuple[int | None, list[int]]]:
    """plan_acks for each channel (by its queue) of `acks`, given every (queue, tag) still `unsettled`."""
    lowest_open: dict[str, int] = {}
    for queue, tag in unsettled:
        if queue in acks and tag < lowest_open.get(queue, tag + 1):
            lowest_open[queue] = tag
    return {queue: plan_acks(tags, lowest_open.get(queue)) for queue, tags in acks.items()}
