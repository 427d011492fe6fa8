"""Dead-lettered tasks in `<queue>.dlq`: listed without being consumed, and replayed to their queue with fresh
attempts (the job table's `jobs retry` for RabbitMQ).

Both read a dead-letter queue with `basic_get` and leave every message they do not take unacked until the end, then
hand them back (`basic_nack` with requeue): RabbitMQ puts them back where they were, so a listing changes nothing.
A replay publishes each task under a new task id (the old one already wrote its error row, and a task id writes one
row), entered in submit's ledger first: a task whose image and service has another task in flight stays in the DLQ.
Only once RabbitMQ confirmed the new copies are the DLQ copies acked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions
import pika.spec
import psycopg
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from windmill.broker.base import MalformedTaskError, Task
from windmill.broker.ledger import publish_in_flight
from windmill.broker.queues import queue_depth
from windmill.broker.rabbitmq import (
    ATTEMPTS_HEADER,
    DEAD_LETTER_SUFFIX,
    LAST_ERROR_HEADER,
    RabbitMQBroker,
    connection_parameters,
    dead_letter_queue,
    default_connection_name,
    describe_error,
)
from windmill.catalog import Catalog
from windmill.errors import WindmillError
from windmill.settings import describe_url

Message = tuple[pika.spec.Basic.GetOk, pika.BasicProperties, bytes]


@dataclass(frozen=True)
class DeadLetter:
    """One message of a dead-letter queue, as `dlq list` shows it."""

    queue: str  # the work queue it was dead-lettered from (the message sits in queue + ".dlq")
    task_id: str | None
    image_id: int | None
    service: str | None
    attempts: int | None  # attempts made, from the x-windmill-attempts header
    last_error: str | None  # why the last attempt failed, or why the body is not a task

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReplayReport:
    replayed: int = 0  # published again with fresh attempts, the DLQ copy acked
    skipped: int = 0  # left in the DLQ: another task of the same image and service is in flight, or the image is gone
    malformed: int = 0  # left in the DLQ: the body is not a task


def work_queues(catalog: Catalog, queue: str | None) -> list[str]:
    """The work queues whose DLQs a command looks at: `queue` (with or without its `.dlq`), else every service's."""
    if queue:
        return [queue.removesuffix(DEAD_LETTER_SUFFIX)]
    return [service.queue_name for service in catalog.services]


def list_dead_letters(amqp_url: str, queues: Sequence[str], *, limit: int = 100) -> list[DeadLetter]:
    """Up to `limit` dead-lettered messages of the queues' DLQs, oldest first; all of them stay in their DLQ."""
    letters: list[DeadLetter] = []
    with _connected(amqp_url, "dlq list") as connection:
        for queue in queues:
            with _reading(connection, queue, limit - len(letters)) as messages:
                letters += [_describe(queue, properties, body) for _method, properties, body in messages]
    return letters


def replay_dead_letters(amqp_url: str, conn: psycopg.Connection, queues: Sequence[str], *,
                        limit: int | None = None) -> ReplayReport:
    """Publish up to `limit` dead-lettered tasks of the queues' DLQs to their queue again, each under a new task id
    with fresh attempts, then ack their DLQ copies; `conn` keeps submit's ledger."""
    report = ReplayReport()
    submitted_at = datetime.now(UTC).isoformat()
    with _connected(amqp_url, "dlq replay") as connection, RabbitMQBroker(amqp_url) as broker:
        for queue in queues:
            left = None if limit is None else limit - report.replayed - report.skipped - report.malformed
            if left is not None and left <= 0:
                break
            with _reading(connection, queue, left) as messages:
                dead: list[tuple[int, str]] = []  # (delivery tag, old task id)
                fresh = []
                for method, _properties, body in messages:
                    try:
                        task = Task.from_body(body)
                    except MalformedTaskError:
                        report.malformed += 1
                        continue
                    dead.append((method.delivery_tag, task.task_id))
                    fresh.append(replace(task, task_id=str(uuid.uuid4()), submitted_at=submitted_at, queue_name=queue))
                published = {task.task_id for task in publish_in_flight(
                    conn, broker, fresh, unless_answered=False, replaces=[old for _tag, old in dead])}
                for (tag, _old), task in zip(dead, fresh, strict=True):
                    if task.task_id in published:
                        messages.channel.basic_ack(tag)
                        report.replayed += 1
                    else:
                        report.skipped += 1
    return report


class _Batch(list[Message]):
    """Messages taken from one DLQ, unacked on `channel` until the block ends."""

    def __init__(self, channel: BlockingChannel) -> None:
        super().__init__()
        self.channel = channel


@contextmanager
def _connected(amqp_url: str, role: str) -> Iterator[BlockingConnection]:
    try:
        connection = BlockingConnection(connection_parameters(
            amqp_url, heartbeat=60, connection_name=default_connection_name(role)))
    except pika.exceptions.AMQPError as error:
        raise WindmillError(f"cannot reach RabbitMQ at {describe_url(amqp_url)} for {role}: "
                            f"{describe_error(error)}") from None
    try:
        yield connection
    finally:
        if connection.is_open:
            connection.close()


@contextmanager
def _reading(connection: BlockingConnection, queue: str, limit: int | None) -> Iterator[_Batch]:
    """Up to `limit` messages of the queue's DLQ as it is now (none when it does not exist); whatever the block
    does not ack goes back to the DLQ, in its place, when the block ends."""
    channel = connection.channel()
    batch = _Batch(channel)
    try:
        depth, channel = queue_depth(channel, dead_letter_queue(queue))
        batch.channel = channel
        waiting = depth or 0  # None: never declared, so nothing was dead-lettered
        while len(batch) < (waiting if limit is None else min(waiting, limit)):
            method, properties, body = channel.basic_get(dead_letter_queue(queue), auto_ack=False)
            if method is None:
                break
            batch.append((method, properties, body))
        yield batch
    finally:
        if channel.is_open:
            if batch:
                channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
            channel.close()


def _describe(queue: str, properties: pika.BasicProperties, body: bytes) -> DeadLetter:
    headers = properties.headers or {}
    attempts = headers.get(ATTEMPTS_HEADER)
    last_error = headers.get(LAST_ERROR_HEADER)
    attempts = attempts if isinstance(attempts, int) else None
    last_error = last_error.decode(errors="replace") if isinstance(last_error, bytes) else last_error
    try:
        task = Task.from_body(body)
    except MalformedTaskError as malformed:
        return DeadLetter(queue, properties.message_id, None, None, attempts, f"not a task: {malformed}")
    return DeadLetter(queue, task.task_id, task.image_id, task.service_name, attempts, last_error)
