"""Submit's ledger of RabbitMQ tasks in flight (table service_tasks_in_flight, sql/0020_tasks_in_flight.sql).

RabbitMQ cannot say whether it holds a message for an image × service pair, so PostgreSQL keeps one entry per pair
whose task is published and not yet answered. A task is entered (committed) before it is published, and only the
tasks entered are published; its final results row removes the entry in the same transaction (a trigger). The
statement that enters a page of tasks also names them as unconfirmed, with the session entering them, until RabbitMQ
confirms them (sql/0133): a submit killed in between leaves a page whose session is gone, and `resend_lost` publishes
its tasks again at once. An entry whose message RabbitMQ lost is resent once its queue is empty; `forget` removes
entries. The entry also counts the task's deliveries that died while they ran (DeathsInLedger, sql/0130: a poison
input is bounded).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from windmill.broker.base import Broker, Task
from windmill.db.queries import query


@dataclass(frozen=True)
class Entered:
    """Tasks just entered in the ledger, and the page that names them as unconfirmed until `confirm_in_flight`
    (None when none was entered)."""

    tasks: list[Task]
    page: int | None


def enter_in_flight(conn: psycopg.Connection, tasks: Sequence[Task],
                    replaces: Sequence[str | None] | None = None) -> Entered:
    """Enter the tasks whose pair has no task in flight, unconfirmed; returns those entered, in the order given.
    `replaces[i]`: the id of a task whose entry tasks[i] may take over (a dead-lettered task replayed under a new
    id)."""
    if not tasks:
        return Entered([], None)
    rows = conn.execute(query("register_tasks_in_flight"), {
        "image_ids": [task.image_id for task in tasks],
        "services": [task.service_name for task in tasks],
        "queues": [task.queue_name for task in tasks],
        "task_ids": [task.task_id for task in tasks],
        "replaces": list(replaces) if replaces is not None else [None] * len(tasks),
    }).fetchall()
    entered = {str(row[0]) for row in rows}
    return Entered([task for task in tasks if task.task_id in entered], rows[0][1] if rows else None)


def confirm_in_flight(conn: psycopg.Connection, entered: Entered) -> None:
    """RabbitMQ confirmed every task of the page, or those it did not are released: nothing is left to resend."""
    if entered.page is not None:
        conn.execute(query("confirm_tasks_in_flight"), {"page": entered.page})


def release_in_flight(conn: psycopg.Connection, task_ids: Sequence[str]) -> None:
    """Remove the entries of tasks that were never published, so the next submit sends their pairs."""
    if task_ids:
        conn.execute(query("release_tasks_in_flight"), {"task_ids": list(task_ids)})


def publish_in_flight(conn: psycopg.Connection, broker: Broker, tasks: Sequence[Task], *, unless_answered: bool,
                      replaces: Sequence[str | None] | None = None) -> list[Task]:
    """Publish the tasks whose pair has no task in flight (and, with `unless_answered`, no successful answer when
    they are entered) and return them. With a broker that keeps no ledger of its own, they are entered in
    PostgreSQL's first, unconfirmed, and confirmed once RabbitMQ has confirmed them all; when publishing fails or is
    interrupted, the entries of the tasks RabbitMQ did not confirm are removed again before the error goes on. A
    process killed before either leaves the page unconfirmed, for the scheduler to publish again."""
    if broker.dedupes_in_flight:
        return broker.publish(tasks, unless_answered=unless_answered)
    entered = enter_in_flight(conn, tasks, replaces)
    published = entered.tasks
    if unless_answered and published:
        answered = {str(row[0]) for row in conn.execute(
            query("drop_answered_tasks_in_flight"), {"task_ids": [task.task_id for task in published]})}
        published = [task for task in published if task.task_id not in answered]
    try:
        broker.publish(published)
    except BaseException:
        release_in_flight(conn, broker.unconfirmed())
        confirm_in_flight(conn, entered)
        raise
    confirm_in_flight(conn, entered)
    return published


def list_in_flight(conn: psycopg.Connection, *, service: str | None = None, older_than: timedelta = timedelta(0),
                   limit: int = 100) -> list[dict[str, Any]]:
    """Ledger entries, oldest first."""
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(query("list_tasks_in_flight"), {"service": service, "older_than": older_than, "limit": limit})
        return cursor.fetchall()


def forget_in_flight(conn: psycopg.Connection, *, service: str | None = None,
                     older_than: timedelta = timedelta(0)) -> int:
    """Remove ledger entries whose messages were lost (a purged queue): their pairs are free for the next submit.
    Returns how many were removed."""
    return conn.execute(query("forget_tasks_in_flight"), {"service": service, "older_than": older_than}).rowcount


class QueueHolder(Protocol):
    """What a resend needs of a broker: how many messages each queue holds ready, and a confirmed publish."""

    def queue_depths(self, queue_names: Iterable[str]) -> dict[str, int]: ...

    def publish(self, tasks: Sequence[Task], *, unless_answered: bool = False, resent: bool = False) -> list[Task]: ...


@dataclass(frozen=True)
class Resend:
    resent: dict[str, int]  # queue → tasks published again (RabbitMQ lost them: their queue held none)
    waiting: dict[str, int]  # queue → messages it holds ready (left alone: its old tasks may be among them)
    # queue → tasks published again because the submit that entered them died before RabbitMQ confirmed them
    unconfirmed: dict[str, int] = field(default_factory=dict)


def resend_lost(conn: psycopg.Connection, broker: QueueHolder, queues: Iterable[str], *, older_than: timedelta,
                limit: int = 10_000, pages: int = 100) -> Resend:
    """Publish again, under their own ids, the tasks no message may stand for, and say how many per queue:

    * the tasks of ledger entries older than `older_than` whose queue (of `queues`) holds no message ready: RabbitMQ
      lost them (seen after a crash of the node: a queue recovered empty while the ledger still held its tasks), and
      nothing else would ever answer them. A queue that still holds ready messages is left alone, since its old
      tasks may be among them; a queue RabbitMQ does not know (deleted) counts as empty. At most `limit` tasks per
      queue and call.
    * at once, whatever their queue holds, the tasks of up to `pages` unconfirmed pages whose submitting session is
      gone (`resend_unconfirmed`), of every queue.

    A task that was not lost after all (delivered and still running, or confirmed by RabbitMQ just before its
    submit died) is answered once: its row is written once (results.task_id is unique, and the insert skips a
    second), and a resent copy looks for that row before it calls the service."""
    names = list(dict.fromkeys(queues))
    depths = broker.queue_depths(names)
    resent: dict[str, int] = {}
    waiting = {queue: depth for queue, depth in depths.items() if depth > 0}
    for queue in names:
        if queue in waiting:
            continue
        with conn.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(query("tasks_in_flight_to_resend"),
                                  {"queue": queue, "older_than": older_than, "limit": limit}).fetchall()
        tasks = [Task.from_message(row) for row in rows]
        if tasks:
            broker.publish(tasks, resent=True)
            resent[queue] = len(tasks)
    # After the empty queues' look-up, which leaves unconfirmed entries out: a page resent here is confirmed then,
    # and would otherwise go out twice in one call.
    return Resend(resent, waiting, resend_unconfirmed(conn, broker, pages=pages))


def resend_unconfirmed(conn: psycopg.Connection, broker: QueueHolder, *, pages: int = 100) -> dict[str, int]:
    """Publish again the tasks of up to `pages` unconfirmed pages whose submitting session has ended (killed with
    its process, or its connection lost) and confirm each page; returns the tasks resent per queue. A page of a
    live session is never touched. Two resends at once may both publish a page: its tasks are answered once."""
    resent: dict[str, int] = {}
    for (page,) in conn.execute(query("orphaned_unconfirmed_pages"), {"limit": pages}).fetchall():
        with conn.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(query("unconfirmed_tasks_to_resend"), {"page": page}).fetchall()
        tasks = [Task.from_message(row) for row in rows]
        if tasks:
            broker.publish(tasks, resent=True)
        confirm_in_flight(conn, Entered(tasks, page))
        for task in tasks:
            resent[task.queue_name] = resent.get(task.queue_name, 0) + 1
    return resent


class DeathsInLedger:
    """The deaths of RabbitMQ tasks' deliveries, in their ledger entries (windmill.broker.poison.DeliveryDeaths); only
    for tasks of `services` (another service's task gets no row, and its entry would stay)."""

    def __init__(self, pool: ConnectionPool, services: Iterable[str]) -> None:
        self.pool = pool
        self.services = frozenset(services)

    def starts_clean(self, task: Task) -> int | None:
        return self._start(task, "clean_delivery_starts")

    def starts(self, task: Task) -> int | None:
        return self._start(task, "delivery_starts")

    def _start(self, task: Task, name: str) -> int | None:
        if task.service_name not in self.services:
            return None
        with self.pool.connection() as conn:
            row = conn.execute(query(name), {
                "image_id": task.image_id, "service": task.service_name, "queue": task.queue_name,
                "task_id": task.task_id}).fetchone()
        return None if row is None else int(row[0])

    def hands_on(self, task: Task) -> None:
        if task.service_name in self.services:
            with self.pool.connection() as conn:
                conn.execute(query("delivery_hands_on"), {"task_id": task.task_id})
