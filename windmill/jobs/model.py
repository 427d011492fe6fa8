"""The job queue's vocabulary: states, a claimed job, and the errors a handler raises."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    """Mirrors the SQL enum job_state (a test compares the two)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"  # an attempt failed; claimable again after its backoff
    DEAD = "dead"  # no attempts left, or a permanent error: waits for `jobs retry`


@dataclass(frozen=True)
class Job:
    """A job this worker holds a lease on."""

    id: int
    queue: str
    payload: dict[str, Any]
    image_id: int | None
    attempts: int
    max_attempts: int
    dedupe_key: str | None = None
    last_error: str | None = None
    # It had waited in a backed-up queue when claimed: an enqueue may have skipped its wake-up counting on it
    # (sql/0098), so the worker claims once more shortly after (windmill.worker.runtime).
    waited: bool = False
    # Its last attempt's lease expired twice, its workers dying on it each time (sql/0131): its role records its
    # failure without running it (windmill.worker.runtime).
    poison: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=row["id"],
            queue=row["queue"],
            payload=row["payload"] or {},
            image_id=row["image_id"],
            attempts=row["attempts"],
            max_attempts=row["max_attempts"],
            dedupe_key=row["dedupe_key"],
            last_error=row["last_error"],
            waited=row["waited"],
            poison=bool(row.get("poison")),
        )


    @property
    def about_image(self) -> int:
        """The image the job is about: its image_id column, else its payload's `image_id` (the job contract writes
        both; a job queued by hand may carry only the payload's). PermanentJobError when it has neither."""
        if self.image_id is not None:
            return self.image_id
        try:
            return int(self.payload["image_id"])
        except (KeyError, TypeError, ValueError):
            raise PermanentJobError(f"job {self.id} of {self.queue} names no image") from None


class PermanentJobError(Exception):
    """Raised by a handler when retrying cannot help (bad input): the job goes dead at once."""
