"""A service worker's answers written in groups (issue 13 item 6, issue 19 item 5): the answers its handler threads
give at about the same time go in one statement, so one transaction, one commit and one round trip for the group
instead of one per answer (windmill.group_commit gathers them). A handler returns only once its own row is
committed, so its task is acked or completed only after that.

Order: a group's rows are inserted sorted by image, then detectors before the other services, then service and task,
and their triggers take the follow-up jobs' locks in that order (sql/0097: per image the consensus job first, then
the merge job, then each caption source's score). Every group takes its locks in that one order, so two groups
cannot each wait for the other.

Failure: a group whose statement fails for its data (a row PostgreSQL refuses, a deadlock with other work) is
written again one row at a time, so the bad row gets its own error and the others are stored. A database outage is
every row's: each handler meets it as before (is_database_unavailable: the task waits, no attempt counted), and the
rows are not tried one by one against a database that is away.

Hand-off (windmill.jobs.handoff): answers whose job came from the job table carry its Handoff, and a group that
holds any is written with their jobs' completion and their lanes' next claims, in one transaction on the writer's
own connection (Claimer.write_and_hand_off). A group whose hand-off failed for its data is written as above, the
handoffs untaken: the claim loop completes those jobs.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from windmill.catalog import Catalog
from windmill.db.connect import is_database_unavailable
from windmill.db.queries import query
from windmill.errors import first_line
from windmill.group_commit import DEFAULT_CAP, GroupCommit
from windmill.jobs import JobQueue
from windmill.jobs.handoff import Handoff

log = logging.getLogger(__name__)

# insert_results takes a row's fields (Answer.params, insert_result's parameters) as one array each.
_GROUP_PARAMETERS = {"image_id": "image_ids", "service": "services", "task_id": "task_ids", "data": "data",
                     "status": "statuses", "error_message": "error_messages",
                     "processing_time": "processing_times", "worker_id": "worker_ids"}


@dataclass(frozen=True)
class Answer:
    """One results row as a service task writes it."""

    image_id: int
    service: str
    task_id: str
    data: dict[str, Any]
    status: str
    worker_id: str
    error_message: str | None = None
    processing_time: float = 0.0
    handoff: Handoff | None = field(default=None, compare=False)  # its job's, when it may ride on this write

    def params(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "service": self.service, "task_id": self.task_id,
                "data": Jsonb(self.data), "status": self.status, "error_message": self.error_message,
                "processing_time": self.processing_time, "worker_id": self.worker_id}


class AnswerWriter:
    """Writes answers for any number of threads of one process; `write` returns the row's result id (None when the
    task had already been answered)."""

    def __init__(self, pool: ConnectionPool, catalog: Catalog, *, cap: int = DEFAULT_CAP,
                 jobs: JobQueue | None = None) -> None:
        self.pool = pool
        self.detectors = frozenset(service.name for service in catalog.services if service.is_detector)
        self.group: GroupCommit[Answer, int | None] = GroupCommit(self._write_group, cap=cap)
        # The connection for groups that hand off (one group is written at a time); without `jobs`, none do.
        self._handing_off = jobs.claimer(only_claims=False) if jobs is not None else None

    def close(self) -> None:
        if self._handing_off is not None:
            self._handing_off.close()

    def write(self, answer: Answer) -> int | None:
        return self.group.submit(answer)

    def lock_order(self, answer: Answer) -> tuple[int, bool, str, str]:
        """The order a group's rows are inserted in, so the order of the locks their triggers take (module doc)."""
        return answer.image_id, answer.service not in self.detectors, answer.service, answer.task_id

    def _write_group(self, answers: Sequence[Answer]) -> list[int | BaseException | None]:
        handoffs = self._handoffs(answers)
        if handoffs:
            try:
                return self._insert_handing_off(answers, handoffs)
            except Exception as error:
                if is_database_unavailable(error):
                    raise
                log.warning("a group of %d answers could not hand off its jobs (%s); writing it without",
                            len(answers), first_line(error), extra={"action": "answer_handoff_failed"})
        if len(answers) == 1:
            return self._one_by_one(answers)
        try:
            return self._insert_group(answers)
        except Exception as error:
            if is_database_unavailable(error):
                raise  # every handler of the group waits for the database, as with an answer of its own
            log.warning("a group of %d answers failed (%s); writing them one at a time", len(answers),
                        first_line(error), extra={"action": "answer_group_failed"})
            return self._one_by_one(answers)

    def _handoffs(self, answers: Sequence[Answer]) -> list[Handoff]:
        """The group's handoffs that can go together: one worker's (a writer shared by several workers of a process
        hands off the first one's; the others' jobs are completed by their claim loops)."""
        offered = [answer.handoff for answer in answers if answer.handoff is not None]
        if self._handing_off is None or not offered:
            return []
        first = offered[0]
        return [handoff for handoff in offered if handoff.worker_id == first.worker_id and handoff.lanes == first.lanes]

    def _insert_handing_off(self, answers: Sequence[Answer], handoffs: list[Handoff]
                            ) -> list[int | BaseException | None]:
        assert self._handing_off is not None
        rows = self._handing_off.write_and_hand_off(lambda conn: self._execute_insert(conn, answers), handoffs)
        return self._result_ids(answers, rows)

    def _insert_group(self, answers: Sequence[Answer]) -> list[int | BaseException | None]:
        with self.pool.connection() as conn:  # autocommit: the one statement is the group's transaction
            rows = self._execute_insert(conn, answers).fetchall()
        return self._result_ids(answers, rows)

    def _execute_insert(self, conn: psycopg.Connection, answers: Sequence[Answer]) -> psycopg.Cursor[Any]:
        """The group's insert, executed in lock order (module doc); its rows not fetched yet."""
        rows_params = [answer.params() for answer in sorted(answers, key=self.lock_order)]
        columns = {plural: [params[name] for params in rows_params] for name, plural in _GROUP_PARAMETERS.items()}
        return conn.execute(query("insert_results"), columns)

    @staticmethod
    def _result_ids(answers: Sequence[Answer], rows: Sequence[tuple[Any, ...]]) -> list[int | BaseException | None]:
        written = {task_id: result_id for task_id, result_id in rows}
        outcomes: list[int | BaseException | None] = []
        for answer in answers:
            # A task twice in one group is one row: its result id goes to the first of them, as it would to the
            # first of two separate writes.
            outcomes.append(written.pop(uuid.UUID(answer.task_id), None))
        return outcomes

    def _one_by_one(self, answers: Sequence[Answer]) -> list[int | BaseException | None]:
        outcomes: list[int | BaseException | None] = []
        for answer in answers:
            try:
                with self.pool.connection() as conn:
                    row = conn.execute(query("insert_result"), answer.params()).fetchone()
                outcomes.append(row[0] if row else None)
            except Exception as error:
                if is_database_unavailable(error):
                    # The database went away: the rest would only wait for it in turn; they wait in their handlers.
                    return outcomes + [error] * (len(answers) - len(outcomes))
                outcomes.append(error)
        return outcomes
