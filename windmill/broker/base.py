"""The task message and the interface every ingest broker implements."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from windmill.catalog import Service


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
    def from_message(cls, message: dict[str, Any]) -> Task:
        return cls(**{name: message.get(name) for name in cls.__dataclass_fields__})  # type: ignore[arg-type]


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
