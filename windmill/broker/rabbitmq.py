"""The RabbitMQ side of the ingest queues: connections, the queue topology both sides declare, and the producer."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import pika
import pika.channel
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection
from pika.adapters.utils.connection_workflow import AMQPConnectorException

from windmill.backoff import backoff_delays
from windmill.broker.base import Task
from windmill.broker.queues import DEAD_LETTER_SUFFIX as DEAD_LETTER_SUFFIX  # (re-exported)
from windmill.broker.queues import RabbitMQError as RabbitMQError
from windmill.broker.queues import dead_letter_queue as dead_letter_queue
from windmill.broker.queues import declare_queue as declare_queue
from windmill.broker.queues import queue_depth
from windmill.broker.refusals import explain_refusal
from windmill.catalog import Service
from windmill.errors import first_line
from windmill.settings import describe_url

log = logging.getLogger(__name__)
T = TypeVar("T")

ATTEMPTS_HEADER = "x-windmill-attempts"
LAST_ERROR_HEADER = "x-windmill-last-error"
# On a task published again from submit's ledger (windmill.broker.ledger.resend_lost): an earlier copy may have been
# answered, so its worker looks for the task's row before it calls the service (a first delivery otherwise skips that).
RESENT_HEADER = "x-windmill-resent"
CONTENT_TYPE = "application/json"

# Connection settings from upstream's experience (§12): heartbeats find dead peers, a blocked connection (broker
# resource alarm) is given up after 5 minutes, a silent socket after 10 s. Retries are our own loop, with backoff.
BLOCKED_CONNECTION_TIMEOUT_S = 300.0
SOCKET_TIMEOUT_S = 10.0
# How long opening a connection (TCP and the AMQP handshake: pika's stack_timeout) may take, and, separately, the
# calls that set up consuming (answer_within): pika bounds the first only, and a node still booting, or a stuck
# one, can take the connection, send heartbeats and never answer a queue_declare.
ANSWER_TIMEOUT_S = 30.0
MAX_REFUSALS = 3  # nacks or returns of one task before publish gives up
FIRST_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 30.0
# A broker never reached is given up sooner than one that went away (about 1.5 s, not minutes): the command was
# most likely pointed at the wrong place, or RabbitMQ is not running, and a person is waiting for the answer.
FIRST_CONNECTION_ATTEMPTS = 3

# Errors after which a new connection can succeed: the broker restarted, the network dropped, a channel died, or
# the AMQP handshake did not finish within the stack timeout (pika raises that one, AMQPConnectorStackTimeout, as
# none of its AMQP errors: a node still booting takes TCP connections before it answers them).
RECOVERABLE_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    AMQPConnectorException,
    OSError,
)
# Errors no retry can fix: wrong credentials, a missing vhost or permission, a protocol mismatch.
FATAL_ERRORS: tuple[type[BaseException], ...] = (
    pika.exceptions.AuthenticationError,
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.IncompatibleProtocolError,
)
# pika's guesses at the cause of a connection that ended during the handshake, by the stage it ended in; each holds
# the repr of what ended it. When that is a lost stream (the broker said nothing: a node being killed or starting
# resets connections it has just accepted) the guess is wrong and a retry succeeds; when the broker closed the
# connection it said why (ConnectionClosedByBroker: a wrong password, a missing vhost) and that stays fatal.
_GUESSED_FROM_HANDSHAKE = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
    pika.exceptions.IncompatibleProtocolError,
)
_ACCESS_REFUSED = 403


class NoAnswerError(pika.exceptions.AMQPConnectionError):
    """RabbitMQ took the connection but did not answer a call in time; the connection was dropped (recoverable)."""


class AnswerClock:
    """Drops a BlockingConnection whose calls go unanswered for `seconds`: the call waiting then raises
    NoAnswerError, and the connection is closed (so closing it again does not wait either). `answered()` restarts
    the clock after a step that RabbitMQ did answer, so a long series of calls on a slow broker is not cut short.

    BlockingConnection has no time limit for a channel's calls, and its own timers run only inside
    process_data_events. A timer of the underlying connection's I/O loop runs while any call waits; on expiry it
    ends the stream the way pika's heartbeat checker ends a silent one (`_terminate_stream`), the one way to make
    the waiting call return."""

    def __init__(self, connection: BlockingConnection, seconds: float, what: str) -> None:
        self._impl = connection._impl
        self._seconds = seconds
        self._what = what
        self._timer: object | None = None

    def answered(self) -> None:
        self.stop()
        self._timer = self._impl._adapter_call_later(self._seconds, self._expire)

    def stop(self) -> None:
        if self._timer is not None:
            self._impl._adapter_remove_timeout(self._timer)
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if not self._impl.is_closed:
            self._impl._terminate_stream(
                NoAnswerError(f"RabbitMQ did not answer within {self._seconds:g} s ({self._what})"))


@contextlib.contextmanager
def answer_within(connection: BlockingConnection, seconds: float, what: str) -> Iterator[AnswerClock]:
    """An AnswerClock running for the block: each step of it (up to `answered()`) gets `seconds`."""
    clock = AnswerClock(connection, seconds, what)
    clock.answered()
    try:
        yield clock
    finally:
        clock.stop()


def is_fatal(error: BaseException) -> bool:
    """True when reconnecting cannot help (credentials, permissions, a queue declared with other arguments)."""
    if isinstance(error, _GUESSED_FROM_HANDSHAKE) and error.args and str(error.args[0]).startswith(
            pika.exceptions.StreamLostError.__name__):
        return False
    if isinstance(error, (RabbitMQError, *FATAL_ERRORS)):
        return True
    return isinstance(error, pika.exceptions.ChannelClosedByBroker) and error.reply_code == _ACCESS_REFUSED


def describe_error(error: BaseException) -> str:
    """`Type: first line` of an error, looking inside pika's connection-error wrappers (which print only their
    class name), or for a refusal whose cause is known (a wrong password, a missing virtual host) that cause and its
    fix; never holds credentials, since pika's errors name sockets and reply codes, not URLs."""
    described = _described(error)
    return explain_refusal(described) or described


def _described(error: BaseException) -> str:
    if isinstance(error, pika.exceptions.AMQPConnectionError) and len(error.args) == 1:
        if isinstance(error.args[0], str):
            return f"{type(error).__name__}: {first_line(Exception(error.args[0]))}"
        cause = error.args[0]
        while isinstance(cause, BaseException):  # pika's connector errors hold `exception` or `exceptions`
            inner = getattr(cause, "exception", None) or (getattr(cause, "exceptions", None) or (None,))[-1]
            if not isinstance(inner, BaseException):
                return f"{type(error).__name__}: {type(cause).__name__}: {first_line(cause)}"
            cause = inner
    return f"{type(error).__name__}: {first_line(error)}"


def connection_parameters(amqp_url: str, *, heartbeat: int, connection_name: str,
                          answer_timeout: float = ANSWER_TIMEOUT_S) -> pika.URLParameters:
    """pika parameters for `amqp_url` with our timeouts (opening the connection takes at most `answer_timeout`);
    `connection_name` shows in `rabbitmqctl list_connections`."""
    try:
        parameters = pika.URLParameters(amqp_url)
    except Exception as error:  # pika raises ValueError, TypeError or KeyError for malformed URLs
        raise RabbitMQError(f"the RabbitMQ URL for {describe_url(amqp_url)} is invalid: {first_line(error)}") from None
    parameters.heartbeat = heartbeat
    parameters.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT_S
    parameters.socket_timeout = min(SOCKET_TIMEOUT_S, answer_timeout)
    parameters.stack_timeout = answer_timeout
    parameters.connection_attempts = 1  # callers retry with backoff and log each loss themselves
    parameters.client_properties = {"connection_name": connection_name}
    return parameters


def default_connection_name(role: str) -> str:
    return f"windmill {role} {socket.gethostname()}-{os.getpid()}"


def task_body(task: Task) -> bytes:
    """`task.to_message()` as compact JSON; read straight from the flat dataclass, since `asdict`'s deep copy
    took a quarter of the producer's time (a test keeps the two equal)."""
    return json.dumps(vars(task), separators=(",", ":")).encode()


def task_properties(task: Task, headers: dict[str, Any] | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=task.task_id,
        headers=headers,
    )


class _ConfirmingPublisher:
    """A channel in publisher-confirm mode that keeps many messages in flight.

    `BlockingChannel.basic_publish` in confirm mode waits for each message's confirm: 1,400 tasks/s measured here.
    Its underlying asynchronous channel (`BlockingChannel._impl`, pika's `pika.channel.Channel`, the same object
    in pika 1.x) publishes without waiting and reports confirms to a callback while the connection processes I/O,
    so we publish a window of messages and pump the connection until most are confirmed (~17,000 tasks/s).
    Delivery tags of confirms count the channel's publishes from 1; a confirm may cover all tags up to its own.
    """

    def __init__(self, connection: BlockingConnection) -> None:
        self.connection = connection
        self.unconfirmed: OrderedDict[int, int] = OrderedDict()  # delivery tag → caller's index, ascending
        self.nacked: list[int] = []
        self.returned: list[tuple[str, str]] = []  # (message id, queue) of messages no queue took
        self._published = 0
        self._closed_reason: BaseException | None = None
        selected: list[object] = []
        with answer_within(connection, ANSWER_TIMEOUT_S, "opening a publishing channel"):
            self.channel = connection.channel()
            self._impl: pika.channel.Channel = self.channel._impl
            self._impl.add_on_close_callback(self._on_close)
            self._impl.add_on_return_callback(self._on_return)
            self._impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=selected.append)
            while not selected:
                self._process_io()

    def publish(self, index: int, routing_key: str, body: bytes, properties: pika.BasicProperties) -> None:
        """Send one message (mandatory: an unroutable one comes back instead of vanishing); confirmed later."""
        self._impl.basic_publish(exchange="", routing_key=routing_key, body=body, properties=properties,
                                 mandatory=True)
        self._published += 1
        self.unconfirmed[self._published] = index

    def wait_for_confirms(self, at_most: int) -> None:
        """Process I/O until at most `at_most` messages await their confirm; raises if the channel dies meanwhile."""
        while len(self.unconfirmed) > at_most:
            self._process_io()

    def _process_io(self) -> None:
        if self._closed_reason is not None:
            raise self._closed_reason
        self.connection.process_data_events(time_limit=0.01)

    def _on_confirm(self, frame: pika.frame.Method) -> None:
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            while self.unconfirmed:
                tag = next(iter(self.unconfirmed))
                if method.delivery_tag and tag > method.delivery_tag:
                    break
                index = self.unconfirmed.popitem(last=False)[1]
                if not acked:
                    self.nacked.append(index)
        else:
            settled = self.unconfirmed.pop(method.delivery_tag, None)
            if settled is not None and not acked:
                self.nacked.append(settled)

    def _on_return(self, _channel: pika.channel.Channel, method: pika.spec.Basic.Return,
                   properties: pika.BasicProperties, _body: bytes) -> None:
        # RabbitMQ sends the return before the confirm of the same message, so it is here when that one counts.
        self.returned.append((properties.message_id or "", method.routing_key))

    def _on_close(self, _channel: pika.channel.Channel, reason: BaseException) -> None:
        self._closed_reason = reason


class RabbitMQBroker:
    """Publishes tasks to durable `queue_<service>` queues with publisher confirms; implements `Broker`.

    One connection, opened on first use and reopened with backoff after a loss. Not thread-safe: one per thread.
    """

    dedupes_in_flight = False  # RabbitMQ cannot be asked for a pair's message: submit keeps a ledger in PostgreSQL

    def __init__(self, amqp_url: str, *, heartbeat: int = 60, connection_attempts: int = 10,
                 confirm_window: int = 10_000, connection_name: str | None = None,
                 max_reconnect_delay: float = MAX_RETRY_DELAY_S, stopping: threading.Event | None = None) -> None:
        """`connection_attempts`: consecutive failed attempts (0.5 s, doubling up to `max_reconnect_delay` apart)
        before an operation gives up; `confirm_window`: most messages awaiting their confirm at once; `stopping`:
        once set, an operation waiting to try again gives up at once (a command asked to stop does not wait minutes
        for a broker that is away)."""
        self._parameters = connection_parameters(
            amqp_url, heartbeat=heartbeat, connection_name=connection_name or default_connection_name("producer"))
        self._where = describe_url(amqp_url)
        self._connection_attempts = max(1, connection_attempts)
        self._confirm_window = max(1, confirm_window)
        self._max_reconnect_delay = max_reconnect_delay
        self._stopping = stopping if stopping is not None else threading.Event()
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._publisher: _ConfirmingPublisher | None = None
        self._declared: set[str] = set()
        self.reconnects = 0  # connections opened after the first (for status and tests)
        self._connected_before = False
        self._unconfirmed: list[str] = []

    # -- the Broker interface --------------------------------------------------------------------------------------

    def declare(self, services: Sequence[Service]) -> None:
        names = [service.queue_name for service in services]
        self._retrying("declare queues", lambda: self._declare(names, force=True))

    def publish(self, tasks: Sequence[Task], *, unless_answered: bool = False, resent: bool = False) -> list[Task]:
        """Return (the tasks) once RabbitMQ confirmed every one (persisted to its durable queue).

        On a connection loss, reconnect and publish again every task not yet confirmed: a few may arrive twice,
        which their task ids make harmless. A task no queue took (its queue was deleted since we declared it) is
        published again after declaring the queue again. Raises RabbitMQError when RabbitMQ stays unreachable or
        refuses a task repeatedly; `unconfirmed()` then names the tasks RabbitMQ did not confirm. `unless_answered`
        is for brokers that dedupe (see Broker.publish): RabbitMQ publishes what it is given. `resent`: the tasks
        were published before (RESENT_HEADER).
        """
        headers = {RESENT_HEADER: True} if resent else None
        pending = deque(range(len(tasks)))
        refusals: Counter[int] = Counter()
        failures = 0
        delays = self._delays()
        try:
            while pending:
                before = len(pending)
                try:
                    self._declare({tasks[index].queue_name for index in pending}, force=False)
                    self._publish_pending(tasks, pending, refusals, headers)
                except Exception as error:
                    self._raise_unless_recoverable(error, "publish tasks")
                    if len(pending) < before:
                        failures, delays = 0, self._delays()
                    failures += 1
                    self._lost(error, f"publishing the {len(pending)} tasks not yet confirmed after reconnecting")
                    self._give_up_or_wait(failures, next(delays), "publish tasks", error)
        finally:
            self._unconfirmed = [tasks[index].task_id for index in pending]
        return list(tasks)

    def unconfirmed(self) -> list[str]:
        """The tasks of the last `publish` RabbitMQ did not confirm (none unless it raised)."""
        return list(self._unconfirmed)

    def queue_depths(self, queue_names: Iterable[str]) -> dict[str, int]:
        """Messages ready in each queue (not those delivered and unacked); queues that do not exist are left out."""
        return self._retrying("read queue depths", lambda: self._depths(list(queue_names)))

    def close(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._publisher = None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except RECOVERABLE_ERRORS as error:
                log.debug("closing the RabbitMQ connection to %s: %s", self._where, first_line(error))

    def __enter__(self) -> RabbitMQBroker:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------------------------------------

    def _publish_pending(self, tasks: Sequence[Task], pending: deque[int], refusals: Counter[int],
                         headers: dict[str, Any] | None) -> None:
        publisher = self._ensure_publisher()
        low_water = self._confirm_window // 2
        try:
            while pending or publisher.unconfirmed:
                while pending and len(publisher.unconfirmed) < self._confirm_window:
                    task = tasks[pending[0]]
                    publisher.publish(pending[0], task.queue_name, task_body(task), task_properties(task, headers))
                    pending.popleft()  # only now: a publish that raised leaves its task pending
                publisher.wait_for_confirms(low_water if pending else 0)
                self._publish_refused_again(publisher, tasks, pending, refusals)
        finally:
            # Whatever is not confirmed yet is published again on the next connection.
            pending.extendleft(reversed(publisher.unconfirmed.values()))
            publisher.unconfirmed.clear()

    def _publish_refused_again(self, publisher: _ConfirmingPublisher, tasks: Sequence[Task], pending: deque[int],
                               refusals: Counter[int]) -> None:
        """Queue again the tasks RabbitMQ nacked or could not route (a queue deleted since we declared it:
        declare it again); a task refused more than MAX_REFUSALS times raises RabbitMQError."""
        refused = list(publisher.nacked)
        if publisher.returned:
            positions = {task.task_id: index for index, task in enumerate(tasks)}
            refused += [positions[message_id] for message_id, _queue in publisher.returned]
            queues = {queue for _message_id, queue in publisher.returned}
            log.warning("RabbitMQ at %s had no queue %s for %d tasks; declaring it again", self._where,
                        ", ".join(sorted(queues)), len(publisher.returned), extra={"action": "rabbitmq_unroutable"})
            self._declare(queues, force=True)
        publisher.nacked.clear()
        publisher.returned.clear()
        pending.extend(refused)  # before a refusal raises: whatever raises leaves them unconfirmed
        for index in refused:
            refusals[index] += 1
            if refusals[index] > MAX_REFUSALS:
                raise RabbitMQError(f"RabbitMQ at {self._where} refused task {tasks[index].task_id} for "
                                    f"{tasks[index].queue_name} {refusals[index]} times")

    def _ensure_connection(self) -> BlockingConnection:
        if self._connection is None or not self._connection.is_open:
            self._connection = self._channel = self._publisher = None
            self._declared.clear()
            self._connection = BlockingConnection(self._parameters)
            if self._connected_before:
                self.reconnects += 1
                log.info("reconnected to RabbitMQ at %s", self._where, extra={"action": "rabbitmq_reconnected"})
            self._connected_before = True
        return self._connection

    def _ensure_channel(self) -> BlockingChannel:
        connection = self._ensure_connection()
        if self._channel is None or not self._channel.is_open:
            self._channel = connection.channel()
        return self._channel

    def _ensure_publisher(self) -> _ConfirmingPublisher:
        connection = self._ensure_connection()
        if self._publisher is None or not self._publisher.channel.is_open:
            self._publisher = _ConfirmingPublisher(connection)
        return self._publisher

    def _declare(self, queue_names: Iterable[str], *, force: bool) -> None:
        for name in sorted(set(queue_names)):
            if force or name not in self._declared:
                with answer_within(self._ensure_connection(), ANSWER_TIMEOUT_S, f"declaring {name}"):
                    self._channel = declare_queue(self._ensure_channel(), name)
                self._declared.add(name)

    def _depths(self, queue_names: list[str]) -> dict[str, int]:
        depths: dict[str, int] = {}
        for name in queue_names:
            depth, self._channel = queue_depth(self._ensure_channel(), name)
            if depth is not None:
                depths[name] = depth
        return depths

    def _delays(self) -> Iterator[float]:
        return backoff_delays(first_s=FIRST_RETRY_DELAY_S, cap_s=self._max_reconnect_delay)

    def _retrying(self, what: str, operation: Callable[[], T]) -> T:
        delays = self._delays()
        for failures in range(1, self._connection_attempts + 1):
            try:
                return operation()
            except Exception as error:
                self._raise_unless_recoverable(error, what)
                self._lost(error, "giving up" if self._last_attempt(failures) else f"will try to {what} again")
                self._give_up_or_wait(failures, next(delays), what, error)
        raise AssertionError("unreachable")

    def _raise_unless_recoverable(self, error: Exception, what: str) -> None:
        if isinstance(error, RabbitMQError) or not isinstance(error, RECOVERABLE_ERRORS):
            raise error
        if is_fatal(error):
            self.close()
            raise RabbitMQError(f"could not {what}: RabbitMQ at {self._where} refused: {describe_error(error)}"
                                ) from error

    def _lost(self, error: BaseException, consequence: str) -> None:
        self.close()
        log.warning("RabbitMQ at %s: %s; %s", self._where, describe_error(error), consequence,
                    extra={"action": "rabbitmq_connection_lost"})

    def _last_attempt(self, failures: int) -> bool:
        """Whether `failures` consecutive failures end the operation (a broker never reached is given up sooner)."""
        if not self._connected_before:
            return failures >= min(FIRST_CONNECTION_ATTEMPTS, self._connection_attempts)
        return failures >= self._connection_attempts

    def _give_up_or_wait(self, failures: int, delay: float, what: str, error: BaseException) -> None:
        if self._last_attempt(failures) and not self._connected_before:
            raise RabbitMQError(f"could not {what}: RabbitMQ at {self._where} could not be reached "
                                f"({describe_error(error)}); is it running there? (WINDMILL_AMQP_URL, or QUEUE_HOST "
                                "and QUEUE_PORT)") from None
        if self._last_attempt(failures):
            raise RabbitMQError(f"could not {what}: RabbitMQ at {self._where} failed {failures} times in a row, "
                                f"last with {describe_error(error)}") from None
        if self._stopping.wait(delay):
            raise RabbitMQError(f"could not {what}: stopped while RabbitMQ at {self._where} was away (failed "
                                f"{failures} time(s), last with {describe_error(error)})") from None
