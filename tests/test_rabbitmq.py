"""The RabbitMQ ingest queues against a real broker: topology, confirmed publishing, acks after the handler,
bounded retries, dead-lettering, and surviving a killed connection and a broker crash.

The broker is WINDMILL_TEST_AMQP_URL, else guest@127.0.0.1:5672; these tests fail, not skip, without it.
The connection-kill tests drive the broker with `rabbitmqctl` (WINDMILL_TEST_RABBITMQCTL overrides the command,
e.g. "docker exec rabbitmq rabbitmqctl"); the crash test SIGKILLs a private node of the session's own.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from tests.conftest import wait_until
from tests.rabbitmq_fixtures import rabbitmqctl
from windmill.bench.private_rabbitmq import PrivateRabbitMQ
from windmill.broker.base import _TASK_FIELDS, MalformedTaskError, Task
from windmill.broker.consumer import RabbitMQConsumer
from windmill.broker.rabbitmq import (
    ATTEMPTS_HEADER,
    LAST_ERROR_HEADER,
    RabbitMQBroker,
    RabbitMQError,
    declare_queue,
    task_body,
)
from windmill.catalog import Service
from windmill.jobs.model import PermanentJobError

log = logging.getLogger(__name__)
FAST = {"max_reconnect_delay": 1.0}  # a test broker comes back in seconds: do not wait 30 s for it


def service_for(queue_name: str) -> Service:
    return Service(name=queue_name, host="127.0.0.1", port=1, endpoint="/v3/analyze", category="primary",
                   service_type=("semantic",), queue_prefix="")


def make_tasks(queue_name: str, count: int) -> list[Task]:
    return [
        Task(task_id=str(uuid.uuid4()), image_id=n, image_filename=f"{n}.jpg", image_path=None,
             image_url=f"http://images.test/{n}.jpg", submitted_at="2025-09-07T12:00:00+00:00",
             service_name="blip", queue_name=queue_name)
        for n in range(count)
    ]


def depth(channel: BlockingChannel, queue: str) -> int:
    return channel.queue_declare(queue=queue, passive=True).method.message_count


def depth_now(amqp_url: str, queue: str) -> str:
    """Messages ready in `queue` now, read on a connection of its own (for a failure's message: never raises)."""
    try:
        connection = BlockingConnection(pika.URLParameters(amqp_url))
        try:
            return str(depth(connection.channel(), queue))
        finally:
            connection.close()
    except Exception as error:
        return f"? ({type(error).__name__})"


def drain_queue(channel: BlockingChannel, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
    messages = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return messages
        messages.append((properties, body))


class Recorder:
    """A handler that records every call and can fail or block chosen tasks."""

    def __init__(self, behave: Callable[[Task, int], None] | None = None) -> None:
        self.calls: list[str] = []
        self.first_deliveries: list[bool] = []  # the consumer's first_delivery flag, call by call
        self._lock = threading.Lock()
        self._behave = behave

    def __call__(self, task: Task, first_delivery: bool) -> None:
        with self._lock:
            self.calls.append(task.task_id)
            self.first_deliveries.append(first_delivery)
            call = self.calls.count(task.task_id)
        if self._behave is not None:
            self._behave(task, call)

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self.calls)

    def first_flags(self, task: Task) -> list[bool]:
        with self._lock:
            return [first for task_id, first in zip(self.calls, self.first_deliveries, strict=True)
                    if task_id == task.task_id]


@contextmanager
def running(consumer: RabbitMQConsumer) -> Iterator[RabbitMQConsumer]:
    """Run the consumer in a thread; on exit stop it (drain) and re-raise whatever ended it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            consumer.run()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, name="test-consumer")
    thread.start()
    try:
        wait_until(lambda: consumer.connections or errors, timeout=15, message="the consumer to start consuming")
        yield consumer
    finally:
        consumer.request_stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the consumer did not stop within 30 s"
    if errors:
        raise errors[0]


def held_by_node(node: PrivateRabbitMQ, queue_name: str) -> int:
    """The messages `node` holds for `queue_name`, ready or delivered and unacknowledged."""
    for line in node.ctl("list_queues", "name", "messages", "-q", "--no-table-headers").splitlines():
        name, _, count = line.partition("\t")
        if name == queue_name:
            return int(count)
    raise AssertionError(f"the node does not list {queue_name}: {node.ctl('list_queues', 'name', 'messages')}")


def connection_on_node(node: PrivateRabbitMQ, name: str) -> tuple[str, str]:
    """The node's id and state (running, blocking, blocked, …) of our connection called `name`."""
    for line in node.ctl("list_connections", "pid", "state", "client_properties", "-q",
                         "--no-table-headers").splitlines():
        pid, state, properties = [*line.split("\t", 2), "", ""][:3]
        if f'{{"connection_name","{name}"}}' in properties:
            return pid, state
    raise AssertionError(f"the node has no connection called {name}")


def consumer_for(amqp_url: str, queue_name: str, handler: Callable[[Task, bool], None], *, prefetch: int = 8,
                 **options: object) -> RabbitMQConsumer:
    settings = {"concurrency": 4, "retry_delay": 0.05, **FAST, **options}
    return RabbitMQConsumer(amqp_url, {queue_name: prefetch}, handler, **settings)  # type: ignore[arg-type]


def connections_named(name: str) -> list[str]:
    """The broker's ids of our connections called `name`."""
    pids = []
    for line in rabbitmqctl("list_connections", "pid", "client_properties", "-q", "--no-table-headers").splitlines():
        pid, _, properties = line.partition("\t")
        if f'{{"connection_name","{name}"}}' in properties:
            pids.append(pid)
    return pids


def close_connections_named(name: str) -> int:
    """Make the broker close our connections called `name` (as a network drop or an operator would)."""
    pids = connections_named(name)
    for pid in pids:
        rabbitmqctl("close_connection", pid, "windmill test: connection killed")
    return len(pids)


# -- pure pieces ------------------------------------------------------------------------------------------------------


def test_a_task_body_is_its_message_and_parses_back_to_the_task() -> None:
    assert set(_TASK_FIELDS) == set(Task.__dataclass_fields__)
    task = make_tasks("queue_blip", 1)[0]
    assert json.loads(task_body(task)) == task.to_message()
    assert Task.from_body(task_body(task)) == task


@pytest.mark.parametrize("body", [
    b"not json", b"\xff\xfe", b"[1, 2]", b'{"task_id": "x"}',
    json.dumps({**make_tasks("q", 1)[0].to_message(), "image_id": "7"}).encode(),
    json.dumps({**make_tasks("q", 1)[0].to_message(), "image_id": True}).encode(),
    json.dumps({**make_tasks("q", 1)[0].to_message(), "task_id": ""}).encode(),
])
def test_a_body_that_is_not_a_task_is_refused(body: bytes) -> None:
    with pytest.raises(MalformedTaskError):
        Task.from_body(body)


# -- topology and publishing ------------------------------------------------------------------------------------------


def test_declare_creates_a_durable_queue_that_dead_letters_into_its_durable_dlq(
        amqp_url: str, admin: BlockingChannel, queue_name: str) -> None:
    with RabbitMQBroker(amqp_url) as broker:
        broker.declare([service_for(queue_name)])
        broker.declare([service_for(queue_name)])  # declaring again is harmless
        broker.publish(make_tasks(queue_name, 1))
    assert depth(admin, queue_name) == 1
    assert depth(admin, queue_name + ".dlq") == 0
    for queue in (queue_name, queue_name + ".dlq"):  # a non-durable redeclaration is refused: both are durable
        probe = admin.connection.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
            probe.queue_declare(queue=queue, durable=False)
        assert refused.value.reply_code == 406
    method, _properties, body = admin.basic_get(queue_name)
    admin.basic_reject(method.delivery_tag, requeue=False)
    wait_until(lambda: depth(admin, queue_name + ".dlq") == 1, message="the rejected message in the DLQ")
    assert drain_queue(admin, queue_name + ".dlq")[0][1] == body
    assert depth(admin, queue_name) == 0


def test_declare_names_a_queue_that_exists_without_a_dead_letter_queue(
        amqp_url: str, admin: BlockingChannel, queue_name: str) -> None:
    admin.queue_declare(queue=queue_name, durable=True)  # as upstream declared its queues
    with RabbitMQBroker(amqp_url) as broker, pytest.raises(RabbitMQError, match=queue_name):
        broker.declare([service_for(queue_name)])


def test_declare_queue_is_what_both_sides_call(amqp_url: str, admin: BlockingChannel, queue_name: str) -> None:
    declare_queue(admin, queue_name)
    with RabbitMQBroker(amqp_url) as broker:
        broker.declare([service_for(queue_name)])  # the same arguments: accepted
        assert broker.queue_depths([queue_name, queue_name + ".dlq", queue_name + ".missing"]) == {
            queue_name: 0, queue_name + ".dlq": 0}


def test_publish_stores_persistent_json_messages_keyed_by_task_id(
        amqp_url: str, admin: BlockingChannel, queue_name: str) -> None:
    tasks = make_tasks(queue_name, 3)
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish(tasks)  # publish declares the queue itself
        assert broker.queue_depths([queue_name]) == {queue_name: 3}
    messages = drain_queue(admin, queue_name)
    assert [Task.from_body(body) for _properties, body in messages] == tasks
    for (properties, _body), task in zip(messages, tasks, strict=True):
        assert properties.delivery_mode == 2
        assert properties.content_type == "application/json"
        assert properties.message_id == task.task_id


def test_publish_declares_again_a_queue_deleted_since_it_was_declared(
        amqp_url: str, admin: BlockingChannel, queue_name: str, caplog: pytest.LogCaptureFixture) -> None:
    first, second = make_tasks(queue_name, 2)
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish([first])
        admin.queue_delete(queue_name)  # the message of `first` goes with it
        broker.publish([second])  # returned as unroutable, then published again after declaring the queue
    assert f"no queue {queue_name} for 1 tasks" in caplog.text
    declare_queue(admin, queue_name)  # the queue came back with its dead-letter arguments
    assert [Task.from_body(body) for _properties, body in drain_queue(admin, queue_name)] == [second]


def test_a_consumer_whose_queue_is_deleted_declares_it_again(amqp_url: str, admin: BlockingChannel,
                                                              queue_name: str) -> None:
    first, second = make_tasks(queue_name, 2)
    handler = Recorder()
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish([first])
        with running(consumer_for(amqp_url, queue_name, handler)) as consumer:
            wait_until(lambda: handler.calls, message="the first task handled")
            admin.queue_delete(queue_name)  # RabbitMQ cancels the consumer
            wait_until(lambda: consumer.connections == 2, timeout=15, message="the consumer to consume again")
            broker.publish([second])
            wait_until(lambda: second.task_id in handler.calls, message="the second task handled")
    assert handler.calls == [first.task_id, second.task_id]


def test_publish_without_tasks_does_nothing(amqp_url: str) -> None:
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish([])


def test_publish_to_an_unreachable_broker_fails_with_a_clear_message(caplog: pytest.LogCaptureFixture) -> None:
    broker = RabbitMQBroker("amqp://guest:secret@127.0.0.1:1/%2F", connection_attempts=2)
    with pytest.raises(RabbitMQError, match=r"127\.0\.0\.1:1/.*ConnectionRefusedError") as failed:
        broker.publish(make_tasks("queue_nowhere", 1))
    assert "secret" not in str(failed.value) + caplog.text


def test_a_broker_never_reached_is_given_up_after_a_few_attempts_not_minutes(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens there: submit once retried for about two minutes (ten attempts, 30 s apart at the end), where a
    # PostgreSQL port with nothing behind it is an answer at once. A broker that was reached and went away is still
    # waited for (test_a_broker_restart_during_a_run_loses_nothing).
    broker = RabbitMQBroker("amqp://guest:secret@127.0.0.1:1/%2F")
    with pytest.raises(RabbitMQError, match=r"could not declare queues: RabbitMQ at 127\.0\.0\.1:1/.* could not be "
                                            r"reached \(.*ConnectionRefusedError.*\); is it running there\?"):
        broker.declare([service_for("queue_nowhere")])
    said = [record.getMessage().rsplit("; ", 1)[-1] for record in caplog.records
            if "RabbitMQ at" in record.getMessage()]
    assert said == ["will try to declare queues again"] * 2 + ["giving up"]  # the last one says so


def test_wrong_credentials_fail_at_once_on_both_sides_without_showing_the_password(
        amqp_url: str, caplog: pytest.LogCaptureFixture) -> None:
    parts = urlsplit(amqp_url)
    wrong = urlunsplit(parts._replace(netloc=f"windmill-nobody:not-the-password@{parts.hostname}:{parts.port or 5672}"))
    consumer = RabbitMQConsumer(wrong, {"queue_never_consumed": 1}, lambda _task, _first: None, concurrency=1)
    with pytest.raises(RabbitMQError, match="the user name or password is wrong") as refused_consumer:
        consumer.run()  # raises instead of retrying forever
    with RabbitMQBroker(wrong) as broker, pytest.raises(RabbitMQError, match="refused") as refused_producer:
        broker.publish(make_tasks("queue_never_published", 1))
    assert "not-the-password" not in str(refused_consumer.value) + str(refused_producer.value) + caplog.text


def test_a_publish_whose_connection_is_killed_sends_again_what_was_not_confirmed(
        private_rabbitmq: PrivateRabbitMQ) -> None:
    """The node lives on, so nothing it confirmed can be lost: every task must reach the queue.

    A memory alarm makes the node stop reading the publisher's connection (RabbitMQ blocks a publisher so), so that
    when the connection is killed, tasks we sent are still unread, never enqueued, never confirmed: only sending them
    again brings them. (Killed while flowing, the node would have enqueued nearly all it was sent.) The alarm is
    raised between two publishes on one connection, not during one: a fast machine could finish a publish before a
    rabbitmqctl call takes effect, and a connection that publishes nothing more is never blocked."""
    amqp_url = private_rabbitmq.amqp_url
    queue_name = f"queue_windmill_test_{uuid.uuid4().hex[:10]}"  # the node is the session's: a name of our own
    tasks = make_tasks(queue_name, 20_000)
    confirmed_first, blocked_then_killed = tasks[:2_000], tasks[2_000:]
    name = f"windmill-test-producer-{uuid.uuid4().hex[:8]}"
    broker = RabbitMQBroker(amqp_url, connection_name=name, **FAST)
    broker.declare([service_for(queue_name)])
    errors: list[BaseException] = []

    def publish() -> None:
        try:
            broker.publish(blocked_then_killed)
        except BaseException as error:
            errors.append(error)

    publisher = threading.Thread(target=publish, name="test-publisher")
    try:
        broker.publish(confirmed_first)
        private_rabbitmq.ctl("set_vm_memory_high_watermark", "0")
        try:
            publisher.start()
            seen: list[str] = []
            wait_until(lambda: seen.append(connection_on_node(private_rabbitmq, name)[1]) or seen[-1] == "blocked",
                       timeout=30, message=lambda: f"the node blocking the publisher (its states: {seen})")
            publishing_when_killed = publisher.is_alive()
            assert "Closing connection" in private_rabbitmq.ctl(
                "close_connection", connection_on_node(private_rabbitmq, name)[0], "windmill test: connection killed")
        finally:
            private_rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")
        publisher.join(timeout=120)
        assert not publisher.is_alive() and not errors, errors
    finally:
        broker.close()
    assert publishing_when_killed, "the publish ended before its connection was killed: the test proved less"
    arrived: set[str] = set()
    with BlockingConnection(pika.URLParameters(amqp_url)) as looking:
        for _method, properties, _body in looking.channel().consume(queue_name, auto_ack=True,
                                                                    inactivity_timeout=2):
            if properties is None:
                break
            arrived.add(properties.message_id)
    assert arrived == {task.task_id for task in tasks}  # a few may arrive twice (publish's docstring says why)
    assert broker.reconnects >= 1


# -- consuming -----------------------------------------------------------------------------------------------------


def test_each_published_task_is_handled_once_and_acked(amqp_url: str, admin: BlockingChannel,
                                                        queue_name: str) -> None:
    tasks = make_tasks(queue_name, 400)
    handler = Recorder()
    with RabbitMQBroker(amqp_url) as broker:
        broker.declare([service_for(queue_name)])
        with running(consumer_for(amqp_url, queue_name, handler)):
            broker.publish(tasks)
            wait_until(lambda: len(handler.calls) >= len(tasks), message="every task handled")
    assert handler.counts() == Counter(task.task_id for task in tasks)
    assert depth(admin, queue_name) == 0
    assert depth(admin, queue_name + ".dlq") == 0


def test_one_consumer_serves_several_queues_over_one_connection(amqp_url: str, admin: BlockingChannel) -> None:
    queues = [f"queue_test_{uuid.uuid4().hex[:8]}" for _ in range(3)]
    tasks = {queue: make_tasks(queue, 50) for queue in queues}
    handler = Recorder()
    name = f"windmill-test-{uuid.uuid4().hex[:8]}"
    consumer = RabbitMQConsumer(amqp_url, {queue: 2 for queue in queues}, handler, concurrency=3,
                                connection_name=name, **FAST)  # type: ignore[arg-type]
    try:
        with RabbitMQBroker(amqp_url) as broker:
            broker.declare([service_for(queue) for queue in queues])
            with running(consumer):
                for queue in queues:
                    broker.publish(tasks[queue])
                wait_until(lambda: len(handler.calls) >= 150, message="the tasks of every queue handled")
                assert len(connections_named(name)) == 1  # one connection for the three queues
        assert handler.counts() == Counter(task.task_id for queue in queues for task in tasks[queue])
        assert all(handler.first_deliveries)
        for queue in queues:
            assert depth(admin, queue) == 0
    finally:
        for queue in queues:
            admin.queue_delete(queue)
            admin.queue_delete(queue + ".dlq")


def test_permanent_errors_and_malformed_bodies_go_to_the_dlq_intact(
        amqp_url: str, admin: BlockingChannel, queue_name: str) -> None:
    good, bad = make_tasks(queue_name, 2)

    def behave(task: Task, _call: int) -> None:
        if task.task_id == bad.task_id:
            raise PermanentJobError("the image is not an image")

    dead: list[tuple[Task, BaseException]] = []
    handler = Recorder(behave)
    malformed = [b"not json at all", b'{"task_id": 5}', b"[]"]
    with RabbitMQBroker(amqp_url) as broker:
        broker.declare([service_for(queue_name)])
        for body in malformed:
            admin.basic_publish("", queue_name, body, pika.BasicProperties(delivery_mode=2))
        broker.publish([good, bad])
        with running(consumer_for(amqp_url, queue_name, handler,
                                  on_dead_letter=lambda task, error: dead.append((task, error)))):
            wait_until(lambda: depth(admin, queue_name + ".dlq") == 4, message="four messages in the DLQ")
            wait_until(lambda: good.task_id in handler.calls, message="the good task handled")
    assert depth(admin, queue_name) == 0
    dead_bodies = sorted(body for _properties, body in drain_queue(admin, queue_name + ".dlq"))
    assert dead_bodies == sorted([*malformed, task_body(bad)])
    assert handler.counts() == Counter({good.task_id: 1, bad.task_id: 1})
    assert [(task, type(error)) for task, error in dead] == [(bad, PermanentJobError)]


def test_transient_errors_are_retried_a_bounded_number_of_times(
        amqp_url: str, admin: BlockingChannel, queue_name: str) -> None:
    flaky, broken = make_tasks(queue_name, 2)

    def behave(task: Task, call: int) -> None:
        if task.task_id == broken.task_id or call <= 2:
            raise TimeoutError(f"the service timed out (call {call})")

    handler = Recorder(behave)
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish([flaky, broken])
        with running(consumer_for(amqp_url, queue_name, handler, max_attempts=3)):
            wait_until(lambda: depth(admin, queue_name + ".dlq") == 1, message="the broken task in the DLQ")
            wait_until(lambda: handler.counts()[flaky.task_id] == 3, message="the flaky task's third attempt")
    assert handler.counts() == Counter({flaky.task_id: 3, broken.task_id: 3})
    assert handler.first_flags(flaky) == [True, False, False]  # a retry is never a first delivery
    assert depth(admin, queue_name) == 0
    [(properties, body)] = drain_queue(admin, queue_name + ".dlq")
    assert Task.from_body(body) == broken
    assert properties.headers[ATTEMPTS_HEADER] == 3  # the DLQ copy says how many attempts were made, and the last error
    assert properties.headers[LAST_ERROR_HEADER] == "TimeoutError: the service timed out (call 3)"


def test_a_task_whose_connection_died_mid_handler_is_redelivered_not_acked_on_the_new_channel(
        amqp_url: str, admin: BlockingChannel, queue_name: str) -> None:
    tasks = make_tasks(queue_name, 20)
    slow = tasks[0]
    started, release = threading.Event(), threading.Event()

    def behave(task: Task, call: int) -> None:
        if task.task_id == slow.task_id and call == 1:
            started.set()
            assert release.wait(timeout=30)

    handler = Recorder(behave)
    name = f"windmill-test-{uuid.uuid4().hex[:8]}"
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish([slow])
        with running(consumer_for(amqp_url, queue_name, handler, connection_name=name)) as consumer:
            assert started.wait(timeout=15)
            assert close_connections_named(name) == 1
            wait_until(lambda: consumer.connections == 2, timeout=15, message="the consumer to reconnect")
            release.set()  # the first call returns now; its ack would belong to the dead channel
            broker.publish(tasks[1:])
            wait_until(lambda: handler.counts()[slow.task_id] == 2, message="the slow task redelivered")
            wait_until(lambda: set(handler.calls) == {task.task_id for task in tasks}, message="all tasks handled")
    assert handler.counts()[slow.task_id] == 2
    assert handler.first_flags(slow) == [True, False]  # RabbitMQ marked the second delivery redelivered
    assert depth(admin, queue_name) == 0
    assert depth(admin, queue_name + ".dlq") == 0


def test_a_stop_waits_for_running_handlers_and_acks_them(amqp_url: str, admin: BlockingChannel,
                                                         queue_name: str) -> None:
    tasks = make_tasks(queue_name, 6)
    started, release = threading.Event(), threading.Event()

    def behave(_task: Task, _call: int) -> None:
        started.set()
        release.wait(timeout=30)

    handler = Recorder(behave)
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish(tasks)
        consumer = consumer_for(amqp_url, queue_name, handler, concurrency=2, prefetch=4)
        with running(consumer):
            assert started.wait(timeout=15)
            consumer.request_stop()
            threading.Timer(0.3, release.set).start()
    # The two running tasks finished and were acked; the ones waiting went back to the queue, unhandled.
    assert len(handler.calls) == 2
    assert depth(admin, queue_name) == len(tasks) - 2
    assert depth(admin, queue_name + ".dlq") == 0


def test_a_stop_queues_a_retry_that_was_waiting_for_its_delay(amqp_url: str, admin: BlockingChannel,
                                                                queue_name: str) -> None:
    [task] = make_tasks(queue_name, 1)

    def behave(_task: Task, _call: int) -> None:
        raise ConnectionError("the service is down")

    handler = Recorder(behave)
    with RabbitMQBroker(amqp_url) as broker:
        broker.publish([task])
        with running(consumer_for(amqp_url, queue_name, handler, retry_delay=600)):
            wait_until(lambda: handler.calls, message="the first attempt")
    [(properties, body)] = drain_queue(admin, queue_name)  # the next attempt, queued at once rather than lost
    assert Task.from_body(body) == task
    assert properties.headers[ATTEMPTS_HEADER] == 1
    assert handler.calls == [task.task_id]


def test_a_broker_restart_during_a_run_loses_nothing(private_rabbitmq: PrivateRabbitMQ) -> None:
    """SIGKILL of the broker while a publish and a consumer run, then a restart on the same data."""
    amqp_url = private_rabbitmq.amqp_url
    queue_name = f"queue_windmill_test_{uuid.uuid4().hex[:10]}"  # the node is the session's: a name of our own
    tasks = make_tasks(queue_name, 20_000)
    later = [replace(task, task_id=str(uuid.uuid4())) for task in tasks[:100]]
    # Handlers hold their tasks until after the crash, so a backlog builds up in the queue: what the crash must
    # not lose is on the broker's disk, not already in our hands.
    release = threading.Event()
    handler = Recorder(lambda _task, _call: release.wait(60))
    publish_errors: list[BaseException] = []
    broker = RabbitMQBroker(amqp_url, connection_attempts=60, **FAST)

    def publish() -> None:
        try:
            broker.publish(tasks)
        except BaseException as error:
            publish_errors.append(error)

    private_rabbitmq.declare_for_good([queue_name])
    publisher = threading.Thread(target=publish, name="test-publisher")
    consumer = consumer_for(amqp_url, queue_name, handler, prefetch=50)
    try:
        with running(consumer):
            publisher.start()
            wait_until(lambda: handler.calls, message="the first task handled")
            with BlockingConnection(pika.URLParameters(amqp_url)) as looking:
                wait_until(lambda: depth(looking.channel(), queue_name) >= 1000, message="a backlog in the queue")
            publishing_when_stopped = publisher.is_alive()
            private_rabbitmq.crash()
            release.set()
            private_rabbitmq.start()
            publisher.join(timeout=120)
            assert not publisher.is_alive() and not publish_errors, publish_errors
            broker.publish(later)  # the producer's connection died with the broker: it reconnects by itself
            expected = {task.task_id for task in [*tasks, *later]}

            def how_far() -> str:
                return (f"{len(expected - set(handler.calls))} of {len(expected)} never handled, "
                        f"{depth_now(amqp_url, queue_name)} ready in the queue; {private_rabbitmq.describe()}")

            try:
                wait_until(lambda: set(handler.calls) >= expected, timeout=120,
                           message=lambda: f"every task handled: {how_far()}")
            except pytest.fail.Exception:
                # Seen once in CI, before the queue was declared for good first: the queue came back from the
                # SIGKILL without any of the messages RabbitMQ had confirmed before it (367 confirmed: the 50 in our
                # hands were handled, the other 317 gone, none reported dropped in its log). RabbitMQ 3.10's classic
                # queues do that now and then (the README's
                # *RabbitMQ can lose confirmed tasks in a crash*), and the pipeline's answer is the ledger's resend
                # (tests/test_service_rabbitmq.py). That outcome is accepted only as it looks: the node holds
                # nothing more for the queue (no task left unhandled there or in a channel), and no task published
                # after the restart is missing; the tasks missing are published again, as the resend would, and
                # must then all be handled. That the publisher sends again what RabbitMQ did not confirm is what
                # test_a_publish_whose_connection_is_killed_sends_again_what_was_not_confirmed shows, where no
                # crash can take confirmed messages away.
                missing = expected - set(handler.calls)
                if held_by_node(private_rabbitmq, queue_name) or missing & {task.task_id for task in later}:
                    raise
                lost = how_far()
                log.warning("RabbitMQ lost confirmed tasks in its crash; publishing them again: %s", lost)
                broker.publish([task for task in tasks if task.task_id in missing])
                wait_until(lambda: set(handler.calls) >= expected, timeout=60,
                           message=lambda: f"every task handled after publishing the lost again: {how_far()}")
            assert consumer.connections >= 2, "the consumer did not reconnect by itself"
    finally:
        broker.close()
    assert publishing_when_stopped, "the publish ended before the broker stopped: the test proved less than it says"
    assert broker.reconnects >= 1
    connection = BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    assert depth(channel, queue_name) == 0
    assert depth(channel, queue_name + ".dlq") == 0
    connection.close()
