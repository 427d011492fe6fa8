"""Two-phase stopping for anything that runs until a signal: a worker, `submit --follow`, `images watch`, an
export. Its own module, apart from starting workers, so that a command stopped this way imports no role, no HTTP
client and no image library only to catch SIGTERM."""

from __future__ import annotations

import faulthandler
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

log = logging.getLogger(__name__)

# Python runs a signal's handler in the main thread only, while the kernel hands a process's signal to whichever of
# its threads it finds ready: the C-level handler then runs in that thread and the main thread is not woken. A main
# thread blocked without a timeout (a join, a queue's get, an event's wait) would never run the handler, and the
# process would not stop. Main threads that wait for a stop wait in slices of this length instead.
SIGNAL_SLICE_S = 0.5


def join_in_slices(thread: threading.Thread, timeout: float | None = None) -> None:
    """`thread.join(timeout)` from a main thread that must still answer a signal taken by another thread."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while thread.is_alive():
        left = SIGNAL_SLICE_S if deadline is None else min(SIGNAL_SLICE_S, deadline - time.monotonic())
        if left <= 0:
            return
        thread.join(left)


def sleep_until_interrupted() -> None:
    """Block the main thread until a signal's handler raises in it (KeyboardInterrupt at Ctrl-C)."""
    while True:
        time.sleep(SIGNAL_SLICE_S)


class StopRequests(Protocol):
    """What a signal asks of: a worker, or an export (windmill.export.ExportStop)."""

    def request_stop(self, *, immediately: bool = False) -> None: ...


class StopRequest:
    """For a command that runs until a signal (`submit --follow`, `images watch`): the first SIGTERM/SIGINT sets
    `stopping` (the loop ends after the batch it is on), a second one interrupts at once."""

    # Leaving now is a KeyboardInterrupt in the main thread, raised by the signal's handler (stop_on_signals).
    leave_now_interrupts = True
    first_signal_does = "finishing the batch under way"  # what stop_on_signals logs at the first signal

    def __init__(self) -> None:
        self.stopping = threading.Event()

    def request_stop(self, *, immediately: bool = False) -> None:
        self.stopping.set()


@contextmanager
def stop_on_signals(worker: StopRequests) -> Iterator[None]:
    """SIGTERM/SIGINT once: drain. Twice: leave now. The previous handlers come back afterwards.

    The handler only counts and hands the request on; a thread of ours makes it. Python runs a handler in the main
    thread between two bytecodes, maybe while that thread holds the lock of the very Event a stop sets
    (`Event.wait` holds its Condition's lock as it enters and leaves, and a worker's main loop waits on its stop
    event): setting the event there waits forever for the thread it interrupted, and the worker never stops.
    `SimpleQueue.put` is reentrant, so the handler takes no lock. A command with `leave_now_interrupts` (StopRequest,
    ExportStop) leaves at the second signal by a KeyboardInterrupt its handler raises in the main thread, which
    ends even a blocked wait at once."""
    requests: queue.SimpleQueue[tuple[int, bool] | None] = queue.SimpleQueue()
    interrupts = bool(getattr(worker, "leave_now_interrupts", False))
    draining = str(getattr(worker, "first_signal_does", "draining in-flight jobs"))  # a worker's, by default
    received = 0

    def handle(signum: int, frame: FrameType | None) -> None:
        nonlocal received
        received += 1
        requests.put((signum, received > 1))
        if received > 1 and interrupts:
            raise KeyboardInterrupt

    def make_requests() -> None:
        while (request := requests.get()) is not None:
            signum, immediately = request
            log.info("received %s: %s", signal.Signals(signum).name,
                     "leaving now" if immediately else draining, extra={"action": "signal"})
            worker.request_stop(immediately=immediately)

    requester = threading.Thread(target=make_requests, name="stop-requests", daemon=True)
    requester.start()
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    dumps_stacks = _dump_stacks_on_sigusr1()
    try:
        yield
    finally:
        if dumps_stacks:
            faulthandler.unregister(signal.SIGUSR1)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        requests.put(None)
        requester.join()


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """For a command that runs until Ctrl-C (`status --watch`, `web`): SIGTERM ends it the same way, by a
    KeyboardInterrupt in the main thread, so it lets go of what it holds (the embedded database's registration: the
    last client to leave stops the cluster) instead of dying where it stands."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _dump_stacks_on_sigusr1() -> bool:
    """SIGUSR1 writes every thread's stack to the process's stderr, from C, whatever the threads are doing: what a
    process that does not stop is waiting for. Not where there is no such file (stderr closed, or a test runner's
    buffer in its place)."""
    stderr = sys.__stderr__
    if stderr is None:
        return False
    try:
        faulthandler.register(signal.SIGUSR1, file=stderr, all_threads=True)
    except (ValueError, OSError):  # closed, or no file descriptor to write to
        return False
    return True
