"""The consumer's handler threads (windmill.broker.handoff): every item put runs once, on one of a fixed set of
threads; a failing item leaves its thread serving; a shutdown lets running items finish and drops the rest."""

from __future__ import annotations

import threading
from collections import Counter

from tests.conftest import wait_until
from windmill.broker.handoff import HandlerThreads


def test_every_item_runs_once_on_one_of_the_threads() -> None:
    ran: Counter[int] = Counter()
    names: set[str] = set()
    lock = threading.Lock()

    def work(item: int) -> None:
        with lock:
            ran[item] += 1
            names.add(threading.current_thread().name)

    threads = HandlerThreads(4, work, "test-handler")
    for item in range(2_000):
        threads.put(item)
    wait_until(lambda: sum(ran.values()) >= 2_000, message="every item run")
    threads.shutdown()
    assert ran == Counter(range(2_000))
    assert names <= {f"test-handler_{n}" for n in range(4)}


def test_a_failing_item_leaves_its_thread_serving() -> None:
    ran: list[int] = []

    def work(item: int) -> None:
        if item == 0:
            raise RuntimeError("a bug of ours")
        ran.append(item)

    threads = HandlerThreads(1, work, "test-handler")
    threads.put(0)
    threads.put(1)
    wait_until(lambda: ran == [1], message="the item after the failing one")
    threads.shutdown()


def test_a_shutdown_lets_running_items_finish_and_drops_the_others() -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []

    def work(item: int) -> None:
        started.set()
        assert release.wait(timeout=10)
        ran.append(item)

    threads = HandlerThreads(1, work, "test-handler")
    threads.put(1)
    assert started.wait(timeout=10)
    threads.put(2)
    threads.shutdown()
    threads.put(3)  # after the shutdown: ignored
    release.set()
    wait_until(lambda: not any(thread.is_alive() for thread in threading.enumerate()
                               if thread.name.startswith("test-handler")), message="the thread to end")
    assert ran == [1]


def test_a_thread_calls_idle_only_when_no_item_waits_for_it() -> None:
    """The consumer wakes its connection's thread from `idle`: a thread with another item to run does not."""
    release = threading.Event()
    idle: list[int] = []

    def work(item: int) -> None:
        if item == 1:
            assert release.wait(timeout=10)

    threads = HandlerThreads(1, work, "test-handler", idle.append)
    threads.put(1)
    threads.put(2)  # waiting while 1 runs
    threads.put(3)
    release.set()
    wait_until(lambda: idle == [3], message="idle after the last item")
    threads.put(4)
    wait_until(lambda: idle == [3, 4], message="idle after the next item")
    threads.shutdown()
