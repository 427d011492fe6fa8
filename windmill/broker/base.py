"""The task message and the interface every ingest broker implements."""

from __future__ import annotations

import json
import reprlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from windmill.catalog import Service
from windmill.errors import first_line
from windmill.jobs.model import PermanentJobError


@dataclass(frozen=True)
class Task:
    """One image × service task, with the reference producer's message fields plus a task id that makes
    its result write idempotent."""

    task_id: str
    image_id: int
    image_filename: str
    image_path: str | None
    image_url: str | None
    submitted_at: str
    service_name: str
    queue_name: str

    @classmethod
    def for_image(cls, image: dict[str, Any], service: Service, submitted_at: datetime | None = None) -> Task:
        return cls(
            task_id=str(uuid.uuid4()),
            image_id=image["image_id"],
            image_filename=image["image_filename"],
            image_path=image["image_path"],
            image_url=image["image_url"],
            submitted_at=(submitted_at or datetime.now(UTC)).isoformat(),
            service_name=service.name,
            queue_name=service.queue_name,
        )

    def to_message(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_message(cls, message: object) -> Task:
        """The task a message holds (a RabbitMQ body's JSON, a job-table job's payload), or MalformedTaskError
        naming what is wrong with it: every field present with its JSON type, a non-empty task id."""
        if not isinstance(message, dict):
            raise MalformedTaskError(f"the message is a JSON {type(message).__name__}, not an object")
        for name, types in _TASK_FIELDS.items():
            value = message.get(name)
            if not isinstance(value, types) or isinstance(value, bool) or (name == "task_id" and not value):
                raise MalformedTaskError(
                    f"the field {name!r} is missing or not a {types[0].__name__}: {reprlib.repr(value)}")
        return cls(**{name: message[name] for name in _TASK_FIELDS})

    @classmethod
    def from_body(cls, body: bytes) -> Task:
        """The task in a RabbitMQ message body (JSON), or MalformedTaskError."""
        try:
            message = json.loads(body)
        except (UnicodeDecodeError, ValueError) as error:
            raise MalformedTaskError(f"the body is not JSON: {first_line(error)}") from None
        return cls.from_message(message)


class MalformedTaskError(PermanentJobError):
    """A message that is not a task; retrying cannot fix it."""


# Task fields and the JSON types each accepts; a test keeps this in step with the Task dataclass.
_TASK_FIELDS: dict[str, tuple[type, ...]] = {
    "task_id": (str,),
    "image_id": (int,),
    "image_filename": (str,),
    "image_path": (str, type(None)),
    "image_url": (str, type(None)),
    "submitted_at": (str,),
    "service_name": (str,),
    "queue_name": (str,),
}


# handle(task, first_delivery): raises to have the task retried. `first_delivery` is True when the broker knows
# the task was never handed out before, so no earlier attempt can have answered it.
TaskHandler = Callable[[Task, bool], object]


class Broker(Protocol):
    """Where `submit` puts tasks and service workers take them from."""

    # True when the broker's own storage refuses a second task in flight per image × service (the job table: its
    # rows are the ledger); False when submit must enter tasks in PostgreSQL's ledger first (RabbitMQ).
    dedupes_in_flight: bool

    def declare(self, services: Sequence[Service]) -> None:
        """Make sure every service's queue exists (both sides declare)."""

    def publish(self, tasks: Sequence[Task], *, unless_answered: bool = False) -> list[Task]:
        """Store the tasks durably; when this returns, they survive a broker restart. Returns the tasks queued, in
        the order given: a broker that dedupes skips the pairs it has in flight and, with `unless_answered`, those
        answered successfully meanwhile (a broker that does not ignores both: submit's ledger does it)."""

    def unconfirmed(self) -> list[str]:
        """After `publish` raised: the ids of its tasks the broker did not confirm (they may be lost)."""

    def close(self) -> None: ...
