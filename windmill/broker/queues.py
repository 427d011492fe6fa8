"""Windmill's RabbitMQ queues: each `queue_<service>` is durable and dead-letters into its durable
`queue_<service>.dlq`. Producer and consumers declare them (`declare_queue`), and the operator's definitions file
(deploy/rabbitmq-definitions.json, or -quorum.json for quorum queues) declares them first, built by `definitions`.

The queue type is the broker's to choose: classic by default, quorum when the definitions made them quorum queues
(replicated, for a RabbitMQ cluster). A declaration must repeat the type of an existing queue, so `declare_queue`
takes on the type the queue already has; every other argument stays Windmill's, and a queue that lacks them is
refused.

    python -m windmill.broker.queues [--queue-type quorum] [--vhost NAME] > definitions.json

prints the definitions of the configured catalog's queues (import them with `rabbitmqctl import_definitions` or the
management UI).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from windmill.errors import WindmillError

DEAD_LETTER_SUFFIX = ".dlq"
QUEUE_TYPES = ("classic", "quorum")
NOT_FOUND = 404
_PRECONDITION_FAILED = 406
# RabbitMQ's refusal of a declaration without the existing queue's type: "inequivalent arg 'x-queue-type' for
# queue 'q' in vhost '/': received none but current is the value 'quorum' of type 'longstr'".
_CURRENT_TYPE = re.compile(r"inequivalent arg 'x-queue-type'.*current is (?:the value )?'(\w+)'")


class RabbitMQError(WindmillError):
    """RabbitMQ refused or could not be reached; the message says what to do."""


def dead_letter_queue(queue_name: str) -> str:
    return queue_name + DEAD_LETTER_SUFFIX


class _AnsweredRefusals(logging.Filter):
    """Drops pika's warning that the broker closed a channel when the thread that asked expects that very refusal
    and answers it itself: a queue that does not exist yet (404), a declaration in another type (406). Without
    it, `dlq list` on a broker where a service's queues were never declared printed a warning per queue, with
    pika's internal objects in it, for a state that is no fault."""

    def __init__(self) -> None:
        super().__init__()
        self.expected = threading.local()  # pika reports the close in the thread that waits for the answer

    def filter(self, record: logging.LogRecord) -> bool:
        codes: frozenset[int] = getattr(self.expected, "codes", frozenset())
        return not (codes and record.msg == _CHANNEL_CLOSE_WARNING and isinstance(record.args, tuple)
                    and record.args[:1] and record.args[0] in codes)


_CHANNEL_CLOSE_WARNING = "Received remote Channel.Close (%s): %r on %s"  # pika.channel's own text
_answered_refusals = _AnsweredRefusals()
logging.getLogger("pika.channel").addFilter(_answered_refusals)


@contextmanager
def refusal_answered(*reply_codes: int) -> Iterator[None]:
    """Within the block, this thread answers the broker's refusals of these codes itself: pika does not log them."""
    before: frozenset[int] = getattr(_answered_refusals.expected, "codes", frozenset())
    _answered_refusals.expected.codes = before | frozenset(reply_codes)
    try:
        yield
    finally:
        _answered_refusals.expected.codes = before


def queue_depth(channel: BlockingChannel, queue_name: str) -> tuple[int | None, BlockingChannel]:
    """The messages ready in the queue, None when RabbitMQ has no such queue; with the channel to go on with (the
    broker closes the channel that asked about a missing queue: then a new one of the same connection)."""
    try:
        with refusal_answered(NOT_FOUND):
            return channel.queue_declare(queue=queue_name, passive=True).method.message_count, channel
    except pika.exceptions.ChannelClosedByBroker as error:
        if error.reply_code != NOT_FOUND:
            raise
        return None, channel.connection.channel()


def queue_arguments(queue_name: str, queue_type: str | None = None) -> dict[str, Any]:
    """The arguments of a task queue (dead-lettering into its `.dlq`), with `x-queue-type` when one is given."""
    arguments: dict[str, Any] = {"x-dead-letter-exchange": "",
                                 "x-dead-letter-routing-key": dead_letter_queue(queue_name)}
    return {**arguments, "x-queue-type": queue_type} if queue_type else arguments


def dead_letter_arguments(queue_type: str | None = None) -> dict[str, Any]:
    return {"x-queue-type": queue_type} if queue_type else {}


def declare_queue(channel: BlockingChannel, queue_name: str) -> BlockingChannel:
    """Declare the durable `queue_name` and its durable dead-letter queue, in the type they already have; returns
    the channel to go on with (a refused declaration closes its channel: then a new one of the same connection).

    Producer and consumer both call this, so whichever starts first creates the queue and no publish is dropped
    for want of a queue. A rejected message goes, through the default exchange, to the dead-letter queue.
    """
    for name, arguments in ((dead_letter_queue(queue_name), dead_letter_arguments()),
                            (queue_name, queue_arguments(queue_name))):
        try:
            with refusal_answered(_PRECONDITION_FAILED):
                channel.queue_declare(queue=name, durable=True, arguments=arguments or None)
            continue
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != _PRECONDITION_FAILED:
                raise
            existing = _CURRENT_TYPE.search(error.reply_text or "")
            if existing is None:
                raise _refused(name, queue_name, error) from None
        channel = channel.connection.channel()
        try:
            with refusal_answered(_PRECONDITION_FAILED):
                channel.queue_declare(queue=name, durable=True,
                                      arguments={**arguments, "x-queue-type": existing[1]})
        except pika.exceptions.ChannelClosedByBroker as error:
            if error.reply_code != _PRECONDITION_FAILED:
                raise
            raise _refused(name, queue_name, error) from None
    return channel


def _refused(name: str, queue_name: str, error: pika.exceptions.ChannelClosedByBroker) -> RabbitMQError:
    return RabbitMQError(
        f"the queue {name} exists with other settings than Windmill's (durable, dead-lettering to "
        f"{dead_letter_queue(queue_name)}): {error.reply_text}; drain and delete it, then start again")


def definitions(queue_names: list[str], *, queue_type: str = "classic", vhost: str = "/") -> dict[str, Any]:
    """A RabbitMQ definitions document declaring each task queue and its dead-letter queue, of `queue_type`. No
    users or passwords: the login is the operator's to create (deploy/README.md)."""
    if queue_type not in QUEUE_TYPES:
        raise WindmillError(f"unknown queue type {queue_type!r}; valid types: {', '.join(QUEUE_TYPES)}")
    typed = queue_type if queue_type != "classic" else None
    queues = []
    for name in queue_names:
        for queue, arguments in ((name, queue_arguments(name, typed)),
                                 (dead_letter_queue(name), dead_letter_arguments(typed))):
            queues.append({"name": queue, "vhost": vhost, "durable": True, "auto_delete": False,
                           "arguments": arguments})
    return {"vhosts": [{"name": vhost}], "queues": queues, "exchanges": [], "bindings": []}


def render(document: dict[str, Any]) -> str:
    """The layout of the files in deploy/: one queue per line."""
    queues = ",\n".join("    " + json.dumps(queue, ensure_ascii=False) for queue in document["queues"])
    return (f'{{\n  "vhosts": {json.dumps(document["vhosts"])},\n  "queues": [\n{queues}\n  ],\n'
            f'  "exchanges": [],\n  "bindings": []\n}}\n')


def main(argv: list[str] | None = None) -> int:
    from windmill.catalog import configured_catalog
    from windmill.settings import load_settings

    parser = argparse.ArgumentParser(prog="python -m windmill.broker.queues",
                                     description="Print RabbitMQ definitions of the configured catalog's queues.")
    parser.add_argument("--queue-type", choices=QUEUE_TYPES, default="classic")
    parser.add_argument("--vhost", default="/")
    options = parser.parse_args(argv)
    catalog = configured_catalog(load_settings().service_config)
    document = definitions([service.queue_name for service in catalog.services], queue_type=options.queue_type,
                           vhost=options.vhost)
    sys.stdout.write(render(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
