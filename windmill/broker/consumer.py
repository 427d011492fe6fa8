"""Consuming RabbitMQ task queues: one connection, a channel per queue, handler threads shared or in lanes,
acks after the handler returns, bounded retries, DLQ.

One process consumes all its queues over one connection (a connection per queue costs a process serving the 11
primary services a hundred threads fighting for the GIL). Each queue keeps its own channel, so its prefetch stays its
own. Handler threads are either one pool for every queue (`concurrency` a number) or a lane per queue
(`concurrency` a mapping, windmill.worker.lanes): a queue's own threads, with its channel's prefetch the same
number, so a slow service holds only its own threads and RabbitMQ hands it no more tasks than it can start.

Retry and dead-letter policy:

* the handler returned → ack (the handler has committed its result row);
* the database is unavailable (`is_database_unavailable`: PostgreSQL away, a connection lost, an admin shutdown), in
  the handler or while recording a final failure → not an attempt: the message stays unacked and is handled again
  after retry_delay · 2^(k-1) seconds (k: the times it waited so, capped), however long the outage lasts. The row
  cannot be written, so the message is neither acked nor dead-lettered; a stop meanwhile leaves it to RabbitMQ,
  which redelivers it;
* the handler gave its attempt back (`AttemptGivenBack`: the worker stops while the call waits for a service that
  is down) → requeue, the attempt not counted;
* the body is not a task → reject without requeue: RabbitMQ moves the message, body intact, to `<queue>.dlq`;
* the handler raised `PermanentJobError`, or any other exception on the last attempt → `on_dead_letter` records
  the task's final row, and only once it is committed is a copy (body intact, headers `x-windmill-attempts` and
  `x-windmill-last-error` saying how many attempts and why the last failed) published to `<queue>.dlq` with a
  publisher confirm, then the original acked;
* any other exception on attempt n < max_attempts → the message is held (unacked, so a crash loses nothing) for
  retry_delay · 2^(n-1) seconds (capped), then a copy with header `x-windmill-attempts: n` and the error's first
  line in `x-windmill-last-error` is published to the same queue with a publisher confirm, and only then is the
  original acked. A crash in between leaves both, which task ids make harmless.
  The count travels with the message, so it holds across workers and restarts; a redelivery after a lost
  connection is not counted (nothing failed), but one that died while it ran is, outside (windmill.broker.poison):
  after `max_attempts` such deaths the task is recorded and dead-lettered as a poison input, not run again.

A stop drains: no new deliveries, held retries are published at once, messages waiting for the database go back to
the queue, running handlers get `drain_timeout` seconds; then (or at once when told to leave now) the connection
closes and RabbitMQ redelivers whatever is still unacked.

pika's BlockingConnection is not thread-safe: only `run()`'s thread touches it. Handler threads post their outcome
to the connection's mailbox (windmill.broker.settling) without waking that thread: it settles what was posted after
each pass of its I/O loop, and a handler thread that finds no task waiting wakes it (the acks bring the next
deliveries), so a lane whose prefetch exceeds its threads costs fewer wake-ups than tasks; the pump timer bounds how
long a posted outcome waits (PUMP_INTERVAL_S). An outcome is applied only if its delivery came on the channel that
is still current: delivery tags belong to a channel, and acking a stale tag on a new channel acks the wrong
message. A batch's acks below the lowest tag still unsettled on their channel (a posted outcome counts as unsettled
until it is applied) go out as one ack with `multiple`, so it never covers a running, held or waiting delivery.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import pika
import pika.exceptions
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from windmill.backoff import backoff_delay, backoff_delays
from windmill.broker.base import MalformedTaskError, Task, TaskHandler
from windmill.broker.deliveries import Delivery, Outcome, attempts_made
from windmill.broker.handoff import HandlerThreads
from windmill.broker.poison import DeliveryDeaths, PoisonWatch
from windmill.broker.rabbitmq import (
    ANSWER_TIMEOUT_S,
    ATTEMPTS_HEADER,
    FIRST_RETRY_DELAY_S,
    LAST_ERROR_HEADER,
    MAX_RETRY_DELAY_S,
    RECOVERABLE_ERRORS,
    RabbitMQError,
    answer_within,
    connection_parameters,
    dead_letter_queue,
    declare_queue,
    default_connection_name,
    describe_error,
    is_fatal,
)
from windmill.broker.settling import Mailbox, plan_channel_acks
from windmill.db.connect import is_database_unavailable
from windmill.errors import AttemptGivenBack, PoisonInput, first_line
from windmill.jobs.model import PermanentJobError
from windmill.settings import describe_url

log = logging.getLogger(__name__)

PUMP_INTERVAL_S = 0.25
# Reconnect delays of a consumer that was consuming before stop doubling here: a broker that restarts is back within
# seconds to a minute, and a long wait would leave the worker idle that long after it is back; one refused TCP
# connect every few seconds costs a down broker nothing.
RECONNECT_CAP_ONCE_CONSUMING_S = 5.0
_LAST_ERROR_LIMIT = 500

class RabbitMQConsumer:
    """Consumes task queues with `concurrency` handler threads in all until `stopping` is set; then drains.

    `handler(task, first_delivery)`: `first_delivery` is True when the message was never handed out before, so
    no earlier attempt can have answered it (a handler may skip looking for that answer; its write must stay
    idempotent all the same, since a producer may publish a task twice)."""

    def __init__(self, amqp_url: str, queues: Mapping[str, int], handler: TaskHandler, *,
                 concurrency: int | Mapping[str, int],
                 max_attempts: int = 5, stopping: threading.Event | None = None, heartbeat: int = 60,
                 retry_delay: float = 1.0, drain_timeout: float = 60.0,
                 on_dead_letter: Callable[[Task, BaseException], object] | None = None,
                 connection_name: str | None = None, max_reconnect_delay: float = MAX_RETRY_DELAY_S,
                 answer_timeout: float = ANSWER_TIMEOUT_S, deaths: DeliveryDeaths | None = None) -> None:
        """`queues`: each queue's prefetch (unacked messages RabbitMQ hands out at once); `concurrency`: handler
        threads for all the queues, or by queue (every queue needs its own); `retry_delay`: hold
        after a first failure (doubling per attempt, 30 s cap); `drain_timeout`: how long a stop waits for running
        handlers; `on_dead_letter(task, error)`: called in the handler thread before a parsed task goes to the DLQ
        (to record its error row: the task goes to the DLQ only once the hook returned, and waits while the hook
        finds the database away); reconnects wait 0.5 s, doubling up to `max_reconnect_delay` (up to
        RECONNECT_CAP_ONCE_CONSUMING_S once it has consumed); `answer_timeout`: how long opening a connection, and
        then setting up consuming (or closing), may wait for RabbitMQ before the attempt is dropped and another
        one made; `deaths`: where the deaths of redelivered deliveries are counted (broker.poison: a task that killed
        its worker `max_attempts` times is recorded through `on_dead_letter` and dead-lettered, not run again)."""
        if not queues:
            raise ValueError("a consumer needs at least one queue")
        self.queues = {queue: max(1, prefetch) for queue, prefetch in queues.items()}
        self._described = ", ".join(self.queues)
        self._parameters = connection_parameters(
            amqp_url, heartbeat=heartbeat, answer_timeout=answer_timeout,
            connection_name=connection_name or default_connection_name(f"consumer {self._described}"))
        self._where = describe_url(amqp_url)
        self._handler = handler
        if isinstance(concurrency, Mapping):
            missing = [queue for queue in self.queues if queue not in concurrency]
            if missing:
                raise ValueError(f"no handler threads for {', '.join(missing)}")
            self._lane_threads: dict[str, int] | None = {queue: max(1, concurrency[queue]) for queue in self.queues}
            self._concurrency = sum(self._lane_threads.values())
        else:
            self._lane_threads, self._concurrency = None, max(1, concurrency)
        self._max_attempts = max(1, max_attempts)
        self._retry_delay = retry_delay
        self._drain_timeout = drain_timeout
        self._on_dead_letter = on_dead_letter
        self._max_reconnect_delay = max_reconnect_delay
        self._answer_timeout = answer_timeout
        self.stopping = stopping if stopping is not None else threading.Event()
        self._poison = None if deaths is None else PoisonWatch(deaths, self._max_attempts, self.stopping)
        self._leave_now = threading.Event()  # a second stop: do not wait for running handlers
        self.connections = 0  # connections that reached consuming (1 + reconnects)
        self.attempts = 0  # connection attempts that failed, before or while setting up (for status and tests)
        self.last_failure = ""  # why the last attempt or connection failed
        # Touched only by run()'s thread:
        self._channels: dict[str, BlockingChannel] = {}
        self._consumer_tags: dict[str, str] = {}
        self._retry_channel: BlockingChannel | None = None
        self._mailbox: Mailbox[tuple[Delivery, Outcome]] | None = None
        self._unsettled: dict[tuple[str, int], Delivery] = {}
        # (queue, delivery tag) → the timer of a delivery waiting, and what for (RETRY or WAIT_FOR_DATABASE)
        self._held: dict[tuple[str, int], tuple[object, Outcome]] = {}
        self._cancelled_by_broker: str | None = None
        self._draining = False
        self._executors: dict[str, HandlerThreads[Delivery]] = {}  # by queue; the same threads for all without lanes

    def request_stop(self, *, immediately: bool = False) -> None:
        """Stop consuming and drain (running handlers get `drain_timeout` seconds); `immediately`: leave without
        waiting for them (RabbitMQ redelivers their messages)."""
        if immediately:
            self._leave_now.set()
        self.stopping.set()

    def run(self) -> None:
        """Consume until `stopping` is set, reconnecting after every loss; raises RabbitMQError on fatal errors."""
        self._executors = self._handler_pools()
        delays = self._reconnect_delays()
        lost_at: float | None = None
        try:
            while not self.stopping.is_set():
                try:
                    connection = BlockingConnection(self._parameters)
                except Exception as error:
                    if is_fatal(error) or not isinstance(error, RECOVERABLE_ERRORS):
                        raise RabbitMQError(f"cannot consume {self._described} from RabbitMQ at {self._where}: "
                                            f"{describe_error(error)}") from None
                    self.attempts += 1
                    self.last_failure = describe_error(error)
                    delay = next(delays)
                    log.warning("cannot connect to RabbitMQ at %s (%s); trying again in %.1f s", self._where,
                                describe_error(error), delay, extra={"action": "rabbitmq_connect_failed"})
                    self.stopping.wait(delay)
                    continue
                consumed_before, pause = self.connections, 0.0
                try:
                    self._consume(connection, lost_at)
                except Exception as error:
                    if isinstance(error, RabbitMQError) or not isinstance(error, RECOVERABLE_ERRORS):
                        raise
                    if is_fatal(error):
                        raise RabbitMQError(f"cannot consume {self._described} from RabbitMQ at {self._where}: "
                                            f"{describe_error(error)}") from error
                    self.last_failure = describe_error(error)
                    if self.connections > consumed_before:  # a new outage: back off from the start again
                        delays, lost_at = self._reconnect_delays(), time.monotonic()
                        pause = next(delays)
                        log.warning("lost RabbitMQ at %s while consuming %s (%s); %d unacked tasks will be "
                                    "redelivered; reconnecting in %.1f s", self._where, self._described,
                                    describe_error(error), len(self._unsettled), pause,
                                    extra={"action": "rabbitmq_connection_lost"})
                    else:  # connected, but setting up consuming failed: another attempt of the same outage
                        self.attempts += 1
                        pause = next(delays)
                        log.warning("could not set up consuming %s from RabbitMQ at %s (%s); trying again in "
                                    "%.1f s", self._described, self._where, describe_error(error), pause,
                                    extra={"action": "rabbitmq_connect_failed"})
                finally:
                    self._forget(connection)
                self.stopping.wait(pause)
        finally:
            for executor in set(self._executors.values()):
                executor.shutdown()

    def _handler_pools(self) -> dict[str, HandlerThreads[Delivery]]:
        if self._lane_threads is None:
            shared = HandlerThreads(self._concurrency, self._work, "windmill-consumer", self._idle)
            return dict.fromkeys(self.queues, shared)
        return {queue: HandlerThreads(threads, self._work, f"windmill-consumer-{queue}", self._idle)
                for queue, threads in self._lane_threads.items()}

    # -- the connection's thread -----------------------------------------------------------------------------------

    def _consume(self, connection: BlockingConnection, lost_at: float | None) -> None:
        self._unsettled, self._held = {}, {}
        self._cancelled_by_broker, self._draining = None, False
        self._channels, self._consumer_tags = {}, {}
        # A mailbox per connection: one whose connection died with a wake-up pending would never wake again.
        mailbox = self._mailbox = Mailbox(connection.add_callback_threadsafe, self._settle_batch)
        # Each step (a queue's channel, declarations and prefetch; the retry channel; a consumer) gets the answer
        # timeout: a broker slow to answer many queues is waited for as long as it keeps answering.
        with answer_within(connection, self._answer_timeout, f"setting up consuming {self._described}") as clock:
            for queue, prefetch in self.queues.items():
                channel = declare_queue(connection.channel(), queue)
                channel.basic_qos(prefetch_count=prefetch)
                channel.add_on_cancel_callback(functools.partial(self._on_cancelled_by_broker, queue))
                self._channels[queue] = channel
                clock.answered()
            retry_channel = connection.channel()
            retry_channel.confirm_delivery()
            self._retry_channel = retry_channel
            for queue, channel in self._channels.items():
                clock.answered()
                self._consumer_tags[queue] = channel.basic_consume(queue, functools.partial(self._on_message, queue))
        self.connections += 1
        if lost_at is None:
            log.info("consuming %s from RabbitMQ at %s (prefetch %s, %d threads)", self._described, self._where,
                     "/".join(str(prefetch) for prefetch in self.queues.values()), self._concurrency,
                     extra={"action": "rabbitmq_consuming"})
        else:
            log.info("reconnected to RabbitMQ at %s after %.1f s; consuming %s again", self._where,
                     time.monotonic() - lost_at, self._described, extra={"action": "rabbitmq_reconnected"})
        channels = [*self._channels.values(), retry_channel]
        # One timer that fires every PUMP_INTERVAL_S and re-arms itself bounds each wait of the loop below, so that a
        # stop is seen: a time limit per call of process_data_events would add and cancel a timer on every pass, and
        # a trickle of tasks makes a few passes per task.
        self._pump_every(connection, PUMP_INTERVAL_S)
        checked = time.monotonic()
        while not self.stopping.is_set():
            connection.process_data_events(time_limit=None)
            mailbox.settle_posted()
            if (cancelled := self._cancelled_by_broker) is not None:
                raise pika.exceptions.ConsumerCancelled(f"RabbitMQ cancelled the consumer of {cancelled}")
            if (now := time.monotonic()) - checked >= PUMP_INTERVAL_S:  # a closed channel only stops deliveries
                checked = now
                if not all(channel.is_open for channel in channels):
                    raise pika.exceptions.ChannelWrongStateError(f"RabbitMQ closed a channel of {self._described}")
        self._drain(connection)

    def _pump_every(self, connection: BlockingConnection, interval: float) -> None:
        """Make process_data_events return at least every `interval` seconds while the connection lives."""
        def pump() -> None:
            if connection.is_open:
                connection.call_later(interval, pump)

        connection.call_later(interval, pump)

    def _drain(self, connection: BlockingConnection) -> None:
        """Stop deliveries, let running handlers finish and settle them (for at most `drain_timeout` seconds, or
        not at all when told to leave now), then close: RabbitMQ redelivers whatever is still unacked."""
        self._draining = True
        with answer_within(connection, self._answer_timeout, f"cancelling the consumers of {self._described}"):
            for queue, channel in self._channels.items():
                channel.basic_cancel(self._consumer_tags[queue])  # pika requeues deliveries not yet handed to us
        for key, (timer, waiting_for) in list(self._held.items()):
            connection.remove_timeout(timer)
            delivery = self._unsettled[key]
            if waiting_for is Outcome.RETRY:
                self._forward(delivery, delivery.queue)  # publish the next attempt now: its count is kept
            else:
                self._settle(delivery, Outcome.REQUEUE)
        self._held.clear()
        deadline = time.monotonic() + self._drain_timeout
        while self._unsettled and time.monotonic() < deadline and not self._leave_now.is_set():
            connection.process_data_events(time_limit=0.05)
            if self._mailbox is not None:
                self._mailbox.settle_posted()
        if self._unsettled:
            log.warning("%d tasks of %s still running %s; RabbitMQ will redeliver them", len(self._unsettled),
                        self._described, "when told to leave now" if self._leave_now.is_set()
                        else f"after the drain timeout ({self._drain_timeout:g} s)",
                        extra={"action": "rabbitmq_drain_timeout"})
        with answer_within(connection, self._answer_timeout, "closing the connection"):
            connection.close()
        log.info("stopped consuming %s", self._described, extra={"action": "rabbitmq_stopped"})

    def _forget(self, connection: BlockingConnection) -> None:
        self._channels, self._consumer_tags, self._retry_channel, self._mailbox = {}, {}, None, None
        self._unsettled, self._held = {}, {}
        if connection.is_open:
            try:
                with answer_within(connection, self._answer_timeout, "closing the connection"):
                    connection.close()
            except RECOVERABLE_ERRORS as error:
                log.debug("closing the RabbitMQ connection: %s", first_line(error))

    def _on_cancelled_by_broker(self, queue: str, _method: object) -> None:
        self._cancelled_by_broker = queue  # e.g. the queue was deleted: reconnecting declares it again

    def _on_message(self, queue: str, channel: BlockingChannel, method: pika.spec.Basic.Deliver,
                    properties: pika.BasicProperties, body: bytes) -> None:
        assert queue in self._channels and self._channels[queue] is channel and self._mailbox is not None
        delivery = Delivery(connection=channel.connection, mailbox=self._mailbox, channel=channel, queue=queue,
                             tag=method.delivery_tag, body=body, properties=properties,
                             attempt=attempts_made(properties) + 1, redelivered=bool(method.redelivered))
        self._unsettled[queue, delivery.tag] = delivery
        self._executors[queue].put(delivery)

    def _current(self, delivery: Delivery) -> bool:
        current = self._channels.get(delivery.queue)
        return current is not None and current is delivery.channel and bool(current.is_open)

    def _settle_batch(self, outcomes: list[tuple[Delivery, Outcome]]) -> None:
        """Apply the outcomes handler threads posted since the last batch: all but the acks one by one, then the
        acks, by channel, in as few frames as the tags still unsettled there allow (plan_channel_acks)."""
        acks: dict[str, list[int]] = {}
        for delivery, outcome in outcomes:
            if outcome is Outcome.ACK and self._current(delivery):
                del self._unsettled[delivery.queue, delivery.tag]
                acks.setdefault(delivery.queue, []).append(delivery.tag)
            else:
                self._settle(delivery, outcome)
        for queue, (multiple, singles) in plan_channel_acks(acks, self._unsettled).items():
            # The channel's asynchronous side buffers the frame, and the I/O loop this batch runs in sends the
            # batch's frames together once it returns; BlockingChannel.basic_ack would run the loop once per frame.
            channel = self._channels[queue]._impl
            if multiple is not None:
                channel.basic_ack(multiple, multiple=True)
            for tag in singles:
                channel.basic_ack(tag)

    def _settle(self, delivery: Delivery, outcome: Outcome) -> None:
        if not self._current(delivery):
            log.debug("not settling a delivery of a closed channel: RabbitMQ redelivers it")
            return
        if outcome is Outcome.RETRY and not self._draining:
            delay = self._retry_delay_after(delivery.attempt)
            self._hold(delivery, delay, outcome, functools.partial(self._forward, delivery, delivery.queue))
        elif outcome is Outcome.RETRY:
            self._forward(delivery, delivery.queue)
        elif outcome is Outcome.WAIT_FOR_DATABASE and not self._draining:
            delay = self._retry_delay_after(delivery.database_waits)
            self._hold(delivery, delay, outcome, functools.partial(self._handle_again, delivery))
        elif outcome is Outcome.DEAD_LETTER and delivery.task is not None:
            self._forward(delivery, dead_letter_queue(delivery.queue))  # its final row is committed
        else:
            del self._unsettled[delivery.queue, delivery.tag]
            if outcome is Outcome.ACK:
                delivery.channel.basic_ack(delivery.tag)
            elif outcome is Outcome.DEAD_LETTER:  # not a task: RabbitMQ dead-letters the body as it came
                delivery.channel.basic_reject(delivery.tag, requeue=False)
            else:  # REQUEUE, and WAIT_FOR_DATABASE while draining: back to the queue for another consumer
                delivery.channel.basic_nack(delivery.tag, requeue=True)

    def _reconnect_delays(self) -> Iterator[float]:
        cap = self._max_reconnect_delay
        if self.connections:  # it consumed before: the broker is most likely restarting, and back soon
            cap = min(cap, RECONNECT_CAP_ONCE_CONSUMING_S)
        return backoff_delays(first_s=FIRST_RETRY_DELAY_S, cap_s=cap)

    def _retry_delay_after(self, failures: int) -> float:
        return backoff_delay(failures, first_s=self._retry_delay, cap_s=MAX_RETRY_DELAY_S)

    def _hold(self, delivery: Delivery, delay: float, waiting_for: Outcome, then: Callable[[], None]) -> None:
        """Keep the delivery unacked for `delay` seconds, then run `then` on this thread."""
        self._held[delivery.queue, delivery.tag] = (delivery.connection.call_later(delay, then), waiting_for)

    def _handle_again(self, delivery: Delivery) -> None:
        """A delivery that waited for the database goes to a handler thread again (same attempt)."""
        self._held.pop((delivery.queue, delivery.tag), None)
        if not self._current(delivery):
            return
        self._executors[delivery.queue].put(delivery)

    def _forward(self, delivery: Delivery, queue: str) -> None:
        """Publish a copy of the task to `queue` (its own for the next attempt, or its DLQ) with the attempts made
        and the last error in its headers, confirmed; then ack this delivery."""
        self._held.pop((delivery.queue, delivery.tag), None)
        if not self._current(delivery) or self._retry_channel is None:
            return
        headers = {**(delivery.properties.headers or {}), ATTEMPTS_HEADER: delivery.attempt,
                   LAST_ERROR_HEADER: delivery.error[:_LAST_ERROR_LIMIT]}
        properties = pika.BasicProperties(
            content_type=delivery.properties.content_type, delivery_mode=pika.DeliveryMode.Persistent,
            message_id=delivery.properties.message_id, headers=headers)
        del self._unsettled[delivery.queue, delivery.tag]
        try:
            self._retry_channel.basic_publish("", queue, delivery.body, properties, mandatory=True)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
            log.warning("could not publish a task of %s to %s (%s); requeueing it", delivery.queue, queue,
                        type(error).__name__, extra={"action": "task_forward_refused"})
            delivery.channel.basic_nack(delivery.tag, requeue=True)
            return
        delivery.channel.basic_ack(delivery.tag)

    # -- handler threads -------------------------------------------------------------------------------------------

    def _work(self, delivery: Delivery) -> None:
        outcome = Outcome.REQUEUE if self._draining else self._handle(delivery)
        delivery.mailbox.post((delivery, outcome), wake=False)  # settled on the next pass, or woken by _idle

    @staticmethod
    def _idle(delivery: Delivery) -> None:
        """A handler thread with no task waiting: wake the connection's thread for the outcomes posted, whose acks
        bring the next deliveries."""
        try:
            delivery.mailbox.wake()
        except pika.exceptions.ConnectionWrongStateError:
            log.debug("the connection of a finished task closed: RabbitMQ redelivers it")

    def _handle(self, delivery: Delivery) -> Outcome:
        try:
            task = delivery.task or Task.from_body(delivery.body)
        except MalformedTaskError as error:
            log.error("dead-lettering a message of %s (message id %s): %s", delivery.queue,
                      delivery.properties.message_id, error, extra={"action": "task_dead_lettered"})
            return Outcome.DEAD_LETTER
        delivery.task = task
        if self._poison is None or not delivery.redelivered:
            return self._outcome(delivery, task)
        try:  # run as broker.poison says: it may have killed its worker before
            return self._poison.run(delivery, task, functools.partial(self._outcome, delivery, task))
        except PoisonInput as error:
            return self._dead_letter(delivery, task, error, "")
        except Exception as error:  # recording its start needs the database
            if is_database_unavailable(error):
                return self._wait_for_database(delivery, task, error)
            raise

    def _outcome(self, delivery: Delivery, task: Task) -> Outcome:
        try:
            self._handler(task, delivery.first)
        except PermanentJobError as error:
            return self._dead_letter(delivery, task, error, "")
        except AttemptGivenBack as error:  # e.g. the worker stops while its call waits for a service that is down
            log.info("task %s of %s given back: %s", task.task_id, delivery.queue, first_line(error),
                     extra={"action": "task_given_back"})
            return Outcome.REQUEUE
        except Exception as error:
            if is_database_unavailable(error):
                return self._wait_for_database(delivery, task, error)
            log.debug("task %s failed", task.task_id, exc_info=error)
            if delivery.attempt >= self._max_attempts:
                return self._dead_letter(delivery, task, error, f" after {delivery.attempt} attempts")
            delivery.error = f"{type(error).__name__}: {first_line(error)}"
            log.warning("task %s of %s failed (attempt %d of %d): %s; retrying in %.1f s", task.task_id,
                        delivery.queue, delivery.attempt, self._max_attempts, delivery.error,
                        self._retry_delay_after(delivery.attempt), extra={"action": "task_retry"})
            return Outcome.RETRY
        return Outcome.ACK

    def _dead_letter(self, delivery: Delivery, task: Task, error: BaseException, after: str) -> Outcome:
        """Record the task's final failure through `on_dead_letter`, then dead-letter it. While the database is
        away the record cannot be written: the task waits instead, so it never reaches the DLQ without its row."""
        if self._on_dead_letter is not None:
            try:
                self._on_dead_letter(task, error)
            except Exception as hook_error:
                if is_database_unavailable(hook_error):
                    return self._wait_for_database(delivery, task, hook_error)
                log.exception("on_dead_letter failed for task %s: %s; dead-lettering it without its row",
                              task.task_id, first_line(hook_error), extra={"action": "dead_letter_unrecorded"})
        delivery.error = f"{type(error).__name__}: {first_line(error)}"
        log.error("dead-lettering task %s of %s%s: %s", task.task_id, delivery.queue, after, delivery.error,
                  extra={"action": "task_dead_lettered"})
        return Outcome.DEAD_LETTER

    def _wait_for_database(self, delivery: Delivery, task: Task, error: BaseException) -> Outcome:
        delivery.database_waits += 1
        log.warning("task %s of %s: the database is unavailable (%s); not an attempt: the task waits, unacked, and "
                    "is handled again in %.1f s", task.task_id, delivery.queue, first_line(error),
                    self._retry_delay_after(delivery.database_waits),
                    extra={"action": "task_waits_for_database"})
        return Outcome.WAIT_FOR_DATABASE
