"""Jobs one expiry away from being recorded as a poison input run one at a time in a worker process, so that a
poison (sql/0131) takes no healthy job down that path with it.

A job's lease that expires counts an attempt, and a job whose last attempt's lease expired twice is recorded as a
poison input (`the worker died handling it twice`). When a worker dies, every job it held expires, the poison's and
those that ran beside it; they come back together, are claimed together by the next worker, and the jobs beside the
poison died with it each time, spent their attempts as fast as it did and were recorded as poisons too. So a claimed
job on its last attempt whose last run's lease expired (a suspect: rare, it has expired as many times as it has
attempts, or its attempts were few) runs only while no other suspect runs in the process: another is given back at
once, before any job of its claim starts, with its attempt uncounted and its last_error (the claim's marks, sql/0126
and sql/0131) kept. Jobs with attempts to spare are not held back: an expiry costs them an attempt, as it always did,
and decides nothing yet. A poison being recorded reads no image and needs no place.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from windmill.jobs import Job

log = logging.getLogger(__name__)

# How expired_lease_error (sql/0126, sql/0131) begins the last_error of a job whose lease expired.
EXPIRED_LEASE = "lease of worker "


def died_before(job: Job) -> bool:
    """Its last run's lease expired (its worker died, or lost the database for longer than the lease)."""
    return (job.last_error or "").startswith(EXPIRED_LEASE) and not job.poison


def suspect(job: Job) -> bool:
    """On its last attempt, and its last run's lease expired: another expiry makes it a poison (or brings it there)."""
    return job.attempts >= job.max_attempts and died_before(job)


class SuspectPlace:
    """The one place of a worker process for a suspect job."""

    def __init__(self, give_back: Callable[[Job], object]) -> None:
        self._give_back = give_back  # uncounted, its last_error kept
        self._lock = threading.Lock()
        self._holder: int | None = None

    def admit(self, jobs: list[Job]) -> list[Job]:
        """The claimed jobs to run: all but the suspects that find the place taken, given back here, first."""
        admitted = []
        for job in jobs:
            if suspect(job):
                with self._lock:
                    taken = self._holder is not None
                    if not taken:
                        self._holder = job.id
                if taken:
                    self._hand_back(job)
                    continue
            admitted.append(job)
        return admitted

    def leave(self, job: Job) -> None:
        """The job ended (however): its place, if it held it, is free."""
        with self._lock:
            if self._holder == job.id:
                self._holder = None

    def _hand_back(self, job: Job) -> None:
        try:
            self._give_back(job)
        except Exception as error:  # its lease expires instead, and counts an attempt
            log.warning("job %d (%s) could not be given back to run alone later (%s)", job.id, job.queue, error,
                        extra={"action": "suspect_not_given_back"})
            return
        log.info("job %d (%s) given back: another job whose worker died runs in this worker", job.id, job.queue,
                 extra={"action": "suspect_given_back"})
