"""The scheduler role: a self-rescheduling tick job runs backfill() once per interval, however many schedulers
run; a failing or abandoned tick does not end the chain."""

from __future__ import annotations

import itertools
from datetime import timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

import windmill.roles.scheduler  # noqa: F401  (registers the role until windmill.roles imports it)
from tests.conftest import wait_until
from tests.test_monitoring import add_image, add_result
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.errors import ConfigError
from windmill.jobs import JobQueue
from windmill.jobs.queues import SCHEDULER_QUEUE
from windmill.roles.scheduler import schedule_first_tick, schedule_next_tick
from windmill.settings import settings_from_mapping
from windmill.worker.group import WorkerGroup
from windmill.worker.layout import RoleSpec
from windmill.worker.runtime import WorkerOptions

INTERVAL_S = 1.0


def ticks(conn: psycopg.Connection, state: str) -> list[tuple[int, object, object]]:
    return conn.execute("SELECT id, run_after, updated_at FROM jobs WHERE queue = %s AND state = %s ORDER BY id",
                        (SCHEDULER_QUEUE, state)).fetchall()


def scheduler_group(database: Database, pool: ConnectionPool, catalog: Catalog, name: str) -> WorkerGroup:
    settings = settings_from_mapping({"WORKER_ID": name, "WINDMILL_BACKFILL_INTERVAL_S": str(INTERVAL_S)})
    return WorkerGroup(settings, database, pool, catalog,
                       [RoleSpec("scheduler", concurrency=1)], jobs=JobQueue(pool),
                       options=WorkerOptions(poll_interval_s=0.05))


def test_two_schedulers_run_one_backfill_per_interval(database: Database, pool: ConnectionPool,
                                                      conn: psycopg.Connection, catalog: Catalog) -> None:
    image = add_image(conn, "a.jpg")
    add_result(conn, image, "nsfw2")
    conn.execute("DELETE FROM jobs")  # the consensus job is lost: the first tick's backfill queues it again
    groups = [scheduler_group(database, pool, catalog, f"scheduler-{n}") for n in range(2)]
    assert len(ticks(conn, "queued")) == 1, "the second scheduler found the first one's tick"
    for group in groups:
        group.start()
    try:
        wait_until(lambda: conn.execute("SELECT count(*) FROM jobs WHERE queue = 'consensus'").fetchone()[0],
                   timeout=10, message="the first backfill")
        wait_until(lambda: len(ticks(conn, "done")) >= 4, timeout=15, message="four ticks")
    finally:
        for group in groups:
            group.request_stop()
        for group in groups:
            group.join(timeout=30)
    done = ticks(conn, "done")
    # Each tick was due one interval after the previous one ran, and ran once: never two in the same period.
    for (_, due, _), (_, next_due, _) in itertools.pairwise(done):
        assert next_due - due >= timedelta(seconds=INTERVAL_S * 0.95)
    span = (done[-1][2] - done[0][2]).total_seconds()
    assert len(done) <= span / INTERVAL_S + 2
    assert len(ticks(conn, "queued")) == 1 and ticks(conn, "running") == [] and ticks(conn, "dead") == []
    # Two schedulers ran; the repair was queued once (later backfills found it covered).
    owners = conn.execute("SELECT count(DISTINCT worker_id) FROM workers WHERE role = 'scheduler'").fetchone()[0]
    assert owners == 2
    assert conn.execute("SELECT count(*) FROM jobs WHERE queue = 'consensus'").fetchone()[0] == 1


def test_a_running_scheduler_starts_the_chain_again_when_no_tick_is_left(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog) -> None:
    # A tick given up (its last attempt's lease expired twice: its schedulers were killed before each queued the
    # next) ended the chain, and the periodic pass stopped for good while a scheduler kept running.
    group = scheduler_group(database, pool, catalog, "scheduler-alone")
    group.start()
    try:
        wait_until(lambda: len(ticks(conn, "done")) >= 1, timeout=15, message="a first tick")
        conn.execute("UPDATE jobs SET state = 'dead' WHERE queue = %s AND state IN ('queued', 'running')",
                     (SCHEDULER_QUEUE,))
        done = len(ticks(conn, "done"))
        wait_until(lambda: len(ticks(conn, "done")) > done, timeout=15, message="the chain to start again")
    finally:
        group.request_stop()
        group.join(timeout=30)


def test_a_starting_scheduler_leaves_a_waiting_or_running_tick_alone(conn: psycopg.Connection) -> None:
    first = schedule_first_tick(conn)
    assert first is not None and schedule_first_tick(conn) is None
    conn.execute("UPDATE jobs SET state = 'running', lease_expires_at = now() + interval '30 seconds'")
    assert schedule_first_tick(conn) is None, "a tick runs: it queues its successor itself"
    conn.execute("UPDATE jobs SET lease_expires_at = now() - interval '1 second'")
    assert schedule_first_tick(conn) is not None, "a tick whose scheduler died does not end the chain"


def test_the_next_tick_is_one_interval_ahead_and_never_retried(conn: psycopg.Connection) -> None:
    tick = schedule_next_tick(conn, timedelta(seconds=90))
    assert schedule_next_tick(conn, timedelta(seconds=90)) is None  # one tick waits at a time
    delay, attempts, queue = conn.execute(
        "SELECT extract(epoch FROM run_after - now()), max_attempts, queue FROM jobs WHERE id = %s",
        (tick,)).fetchone()
    assert 89 <= delay <= 90 and attempts == 1 and queue == SCHEDULER_QUEUE


@pytest.mark.parametrize(("value", "seconds"), [(None, 60.0), ("", 60.0), ("2.5", 2.5), (" 300 ", 300.0)])
def test_the_interval_comes_from_the_environment(value: str | None, seconds: float) -> None:
    environ = {} if value is None else {"WINDMILL_BACKFILL_INTERVAL_S": value}
    assert settings_from_mapping(environ).backfill_interval_s == seconds


@pytest.mark.parametrize("value", ["0", "-5", "soon", "100000"])
def test_a_bad_interval_is_one_sentence_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^WINDMILL_BACKFILL_INTERVAL_S must be a number of seconds"):
        settings_from_mapping({"WINDMILL_BACKFILL_INTERVAL_S": value})
