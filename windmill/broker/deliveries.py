"""A RabbitMQ delivery as the consumer tracks it (windmill.broker.consumer), and what becomes of it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pika
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from windmill.broker.base import Task
from windmill.broker.rabbitmq import ATTEMPTS_HEADER, RESENT_HEADER
from windmill.broker.settling import Mailbox


class Outcome(Enum):
    ACK = "ack"
    DEAD_LETTER = "dead-letter"
    RETRY = "retry"
    REQUEUE = "requeue"
    WAIT_FOR_DATABASE = "wait for the database"


@dataclass(eq=False)
class Delivery:
    """One message as delivered on one channel; its tag means nothing on any other channel."""

    connection: BlockingConnection
    mailbox: Mailbox[tuple[Delivery, Outcome]]  # its connection's: where its outcome goes
    channel: BlockingChannel
    queue: str
    tag: int
    body: bytes
    properties: pika.BasicProperties
    attempt: int
    redelivered: bool
    error: str = ""
    task: Task | None = None  # None until parsed, and for a body that is not a task
    database_waits: int = 0  # times this delivery was handled while the database was away
    deaths: int | None = None  # a redelivered one: its task's deaths, once its start is recorded (broker.poison)

    @property
    def first(self) -> bool:
        """Never handed to any handler before: neither redelivered by RabbitMQ, nor a retry of ours, nor published
        again from submit's ledger (an earlier copy may have been answered), nor handled already by this consumer (a
        run that lost the database may have committed its row before it failed)."""
        return (self.attempt == 1 and not self.redelivered and self.database_waits == 0
                and not (self.properties.headers or {}).get(RESENT_HEADER))


def attempts_made(properties: pika.BasicProperties) -> int:
    value = (properties.headers or {}).get(ATTEMPTS_HEADER, 0)
    return value if isinstance(value, int) and value > 0 else 0
