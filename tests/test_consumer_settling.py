"""The consumer settles deliveries in batches (windmill.broker.settling): at most one wake-up of the connection's
thread per batch, none while the handler thread has another task to run (the next pass settles it, whatever brings
it), one ack with `multiple` for the tags below the lowest one still open on their channel. A multiple ack never
covers a delivery that is running, held for a retry or waiting for the database: after the consumer's connection
is killed such a task comes back. Against the broker of WINDMILL_TEST_AMQP_URL (see tests/test_rabbitmq.py)."""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pika.channel
import psycopg
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.conftest import wait_until
from tests.test_rabbitmq import (
    Recorder,
    close_connections_named,
    consumer_for,
    depth,
    depth_now,
    make_tasks,
    running,
)
from windmill.broker.base import Task
from windmill.broker.rabbitmq import RabbitMQBroker
from windmill.broker.settling import Mailbox, plan_acks

# -- pure pieces ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("tags", "lowest_open", "multiple", "singles"), [
    ([], None, None, []),
    ([5], None, None, [5]),  # one tag: an ordinary ack
    ([3, 1, 2], None, 3, []),  # nothing open: one ack covers the batch
    ([1, 2, 3], 4, 3, []),
    ([1, 2, 5, 6], 4, 2, [5, 6]),  # the open tag 4 stays outside the multiple ack
    ([5, 6], 4, None, [5, 6]),  # everything above the open tag: one by one
    ([2, 6], 4, None, [2, 6]),  # a single tag below: no gain in a multiple ack
    ([2, 3], 1, None, [2, 3]),  # the lowest tag open: nothing below it to cover
])
def test_a_multiple_ack_covers_only_the_tags_below_the_lowest_open_one(
        tags: list[int], lowest_open: int | None, multiple: int | None, singles: list[int]) -> None:
    assert plan_acks(tags, lowest_open) == (multiple, singles)


def test_a_mailbox_wakes_once_per_batch_and_hands_over_each_item_once() -> None:
    wakes: list[Callable[[], None]] = []
    batches: list[list[int]] = []
    mailbox: Mailbox[int] = Mailbox(wakes.append, batches.append)
    for item in (1, 2, 3):
        mailbox.post(item)
    assert len(wakes) == 1 and batches == []
    wakes.pop()()
    assert batches == [[1, 2, 3]]
    mailbox.post(4)  # the batch was taken: the next post wakes again
    assert len(wakes) == 1
    wakes.pop()()
    assert batches == [[1, 2, 3], [4]]


def test_a_mailbox_posted_to_without_a_wake_up_settles_on_the_next_pass_or_a_later_wake_up() -> None:
    wakes: list[Callable[[], None]] = []
    batches: list[list[int]] = []
    mailbox: Mailbox[int] = Mailbox(wakes.append, batches.append)
    mailbox.post(1, wake=False)
    mailbox.post(2, wake=False)
    assert wakes == [] and batches == []
    mailbox.settle_posted()  # the settling thread's pass, which came anyway
    assert batches == [[1, 2]]
    mailbox.settle_posted()
    mailbox.wake()  # nothing posted: no wake-up
    assert wakes == [] and batches == [[1, 2]]
    mailbox.post(3, wake=False)
    mailbox.wake()
    mailbox.wake()  # one pending already
    assert len(wakes) == 1
    wakes.pop()()
    assert batches == [[1, 2], [3]]


def test_a_mailbox_loses_no_item_posted_from_many_threads_while_it_settles() -> None:
    callbacks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
    settled: list[int] = []
    wakes = Counter[str]()

    def wake(callback: Callable[[], None]) -> None:
        wakes["wake"] += 1
        callbacks.put(callback)

    mailbox: Mailbox[int] = Mailbox(wake, settled.extend)

    def settler() -> None:
        while (callback := callbacks.get()) is not None:
            callback()

    settling = threading.Thread(target=settler)
    settling.start()
    posters = [threading.Thread(target=lambda n=n: [mailbox.post(n * 10_000 + i) for i in range(10_000)])
               for n in range(8)]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join()
    wait_until(lambda: len(settled) >= 80_000, message="every item settled")
    callbacks.put(None)
    settling.join()
    assert sorted(settled) == [n * 10_000 + i for n in range(8) for i in range(10_000)]
    assert wakes["wake"] < 80_000


# -- against RabbitMQ -------------------------------------------------------------------------------------------------


class AckRecorder:
    """pika's Channel.basic_ack (which BlockingChannel's calls too), wrapped: every ack frame sent, and the tags it
    settles by channel."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.frames: list[tuple[int, bool]] = []
        self.settled: dict[int, set[int]] = {}  # id of the channel → tags its acks settled
        original = pika.channel.Channel.basic_ack

        def basic_ack(channel: pika.channel.Channel, delivery_tag: int = 0, multiple: bool = False) -> None:
            original(channel, delivery_tag, multiple)
            self.frames.append((delivery_tag, multiple))
            tags = self.settled.setdefault(id(channel), set())
            tags.update(range(1, delivery_tag + 1) if multiple else (delivery_tag,))

        monkeypatch.setattr(pika.channel.Channel, "basic_ack", basic_ack)

    def tags_settled(self) -> int:
        return sum(len(tags) for tags in list(self.settled.values()))


def database_error(call: int) -> psycopg.OperationalError:
    return psycopg.OperationalError(f"server closed the connection unexpectedly (call {call})")


@pytest.mark.parametrize("held_for", ["retry", "database", "running"])
def test_a_multiple_ack_never_covers_a_held_task_which_comes_back_after_a_kill(
        amqp_url: str, admin: BlockingChannel, queue_name: str, monkeypatch: pytest.MonkeyPatch,
        held_for: str) -> None:
    """A task in the middle of the queue fails once (a retry, or the database away) and is held (30 s, the cap),
    or its handler is still running, while the tasks before and after it succeed and are acked, those before it
    with multiple acks; then the broker kills the consumer's connection. The held task was never acked, so
    RabbitMQ delivers it again."""
    tasks = make_tasks(queue_name, 61)
    held = tasks[30]
    release = threading.Event()

    def behave(task: Task, call: int) -> None:
        if task.task_id != held.task_id or call > 1:
            return
        if held_for == "running":
            assert release.wait(timeout=30)  # its outcome comes after the kill: stale, never applied
            return
        raise database_error(call) if held_for == "database" else TimeoutError("the service timed out")

    acks = AckRecorder(monkeypatch)
    handler = Recorder(behave)
    name = f"windmill-test-{uuid.uuid4().hex[:8]}"
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish(tasks)
        with running(consumer_for(amqp_url, queue_name, handler, concurrency=8, prefetch=8, retry_delay=600,
                                  connection_name=name)) as consumer:
            wait_until(lambda: acks.tags_settled() >= len(tasks) - 1, message=lambda: (
                f"the acks of every task but the held one ({acks.tags_settled()} of {len(tasks) - 1})"))
            assert any(multiple for _tag, multiple in acks.frames), "no multiple ack: the test proved nothing"
            assert handler.counts()[held.task_id] == 1
            assert close_connections_named(name) == 1  # as a crash of the worker would
            release.set()
            wait_until(lambda: consumer.connections == 2, timeout=15, message="the consumer to reconnect")
            wait_until(lambda: handler.counts()[held.task_id] == 2, timeout=15,
                       message="the held task delivered again after the kill")
    assert handler.counts() == Counter({**{task.task_id: 1 for task in tasks}, held.task_id: 2})
    assert depth(admin, queue_name) == 0
    assert depth(admin, queue_name + ".dlq") == 0


def test_many_deliveries_are_each_acked_once_in_fewer_frames_than_deliveries(
        amqp_url: str, admin: BlockingChannel, queue_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = make_tasks(queue_name, 500)
    acks = AckRecorder(monkeypatch)
    handler = Recorder()
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish(tasks)
        with running(consumer_for(amqp_url, queue_name, handler, concurrency=8, prefetch=8)):
            wait_until(lambda: acks.tags_settled() >= len(tasks), message=lambda: (
                f"every task acked ({acks.tags_settled()} of {len(tasks)})"))
    # Stopped, so anything unacked would be back in the queue: nothing is, and nothing came twice.
    assert depth(admin, queue_name) == 0
    assert handler.counts() == Counter(task.task_id for task in tasks)
    assert all(handler.first_deliveries)
    assert acks.tags_settled() == len(tasks)
    assert len(acks.frames) < len(tasks), f"{len(acks.frames)} ack frames for {len(tasks)} deliveries"


def test_a_lane_with_a_task_waiting_wakes_the_connection_thread_for_fewer_tasks_than_it_runs(
        amqp_url: str, admin: BlockingChannel, queue_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One thread, a prefetch of two (a lane's, windmill.worker.lanes): a thread that finishes with the next task
    already waiting starts it without waking the connection's thread, so tasks of a few milliseconds each (a
    trickle: each ack brings the next delivery) cost fewer wake-ups than tasks. Each is still acked once."""
    tasks = make_tasks(queue_name, 60)
    wake_ups = Counter[str]()
    original = BlockingConnection.add_callback_threadsafe

    def add_callback_threadsafe(connection: BlockingConnection, callback: Callable[[], None]) -> None:
        wake_ups["wake"] += 1
        original(connection, callback)

    monkeypatch.setattr(BlockingConnection, "add_callback_threadsafe", add_callback_threadsafe)
    acks = AckRecorder(monkeypatch)
    handler = Recorder(lambda _task, _call: time.sleep(0.005))
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish(tasks)
        with running(consumer_for(amqp_url, queue_name, handler, concurrency={queue_name: 1}, prefetch=2)):
            wait_until(lambda: acks.tags_settled() >= len(tasks), message=lambda: (
                f"every task acked ({acks.tags_settled()} of {len(tasks)})"))
    assert depth(admin, queue_name) == 0
    assert handler.counts() == Counter(task.task_id for task in tasks)
    assert wake_ups["wake"] <= 0.75 * len(tasks), f"{wake_ups['wake']} wake-ups for {len(tasks)} tasks"


def test_a_task_done_is_acked_while_its_thread_runs_the_next_one(
        amqp_url: str, admin: BlockingChannel, queue_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its outcome woke no one (another task was waiting for the thread): the connection thread's next pass, at the
    latest the pump timer's, acks it all the same, however long the next task runs."""
    first, second = make_tasks(queue_name, 2)
    release = threading.Event()
    acks = AckRecorder(monkeypatch)

    def behave(task: Task, _call: int) -> None:
        if task.task_id == first.task_id:  # returns once the second is delivered too, to wait for this thread
            wait_until(lambda: depth_now(amqp_url, queue_name) == "0", message="the second task delivered")
        else:
            assert release.wait(timeout=30)

    handler = Recorder(behave)
    try:
        with RabbitMQBroker(amqp_url) as broker:
            broker.publish([first, second])
            with running(consumer_for(amqp_url, queue_name, handler, concurrency={queue_name: 1}, prefetch=2)):
                wait_until(lambda: handler.counts()[second.task_id] == 1, message="the second task running")
                wait_until(lambda: acks.tags_settled() == 1, timeout=5, message="the first task acked")
                assert handler.counts()[second.task_id] == 1 and not release.is_set()
                release.set()
    finally:
        release.set()
    assert depth(admin, queue_name) == 0
    assert handler.counts() == Counter([first.task_id, second.task_id])
