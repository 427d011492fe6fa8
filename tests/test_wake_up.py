"""The wake-up NOTIFY stays silent while a queue is backed up (sql/0098), with two connections: one queues, one
listens as a worker does. The look-up that decides plans on the queue's own index; a worker that drained a backlog
claims once more shortly after, so a job queued silently meanwhile is not left for the poll."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.test_backfill import index_conditions, nested_plans
from windmill.db.connect import Database
from windmill.jobs import Job, JobQueue, NewJob
from windmill.jobs.queue import enqueue_many_on, enqueue_on
from windmill.roles.registry import Role
from windmill.worker.runtime import Worker, WorkerHooks, WorkerOptions


def _notifications(listener: psycopg.Connection) -> int:
    return sum(1 for _ in listener.notifies(timeout=0.3))


@pytest.fixture
def listener(database: Database) -> psycopg.Connection:
    """A connection LISTENing as a worker of the queues q and other does (sql/0096)."""
    with database.connect() as connection:
        connection.execute("SELECT * FROM listen_job_queues(%s)", [["q", "other"]])
        yield connection


def queue_waiting_job(conn: psycopg.Connection, queue: str, *, waited_s: float = 1.0, due_later: bool = False,
                      state: str = "queued") -> int:
    """A committed job of another transaction that was queued `waited_s` ago: due then, or (due_later) only due
    now (a debounced job whose time came, a retry after its backoff)."""
    return conn.execute(
        "INSERT INTO jobs (queue, state, created_at, run_after) "
        "VALUES (%s, %s::job_state, now() - %s, CASE WHEN %s THEN now() ELSE now() - %s END) RETURNING id",
        (queue, state, timedelta(seconds=waited_s), due_later, timedelta(seconds=waited_s))).fetchone()[0]


def test_a_job_queued_into_a_backed_up_queue_wakes_no_one(conn: psycopg.Connection, database: Database,
                                                           listener: psycopg.Connection) -> None:
    queue_waiting_job(conn, "q")
    _notifications(listener)
    with database.connect() as other:
        enqueue_on(other, NewJob("q", {}))
        enqueue_on(other, NewJob("q", {"second": True}))
    assert _notifications(listener) == 0
    # Another queue is not backed up by q's backlog.
    enqueue_on(conn, NewJob("other", {}))
    assert _notifications(listener) == 1


def test_the_first_job_of_an_empty_queue_wakes_the_workers(conn: psycopg.Connection,
                                                           listener: psycopg.Connection) -> None:
    enqueue_on(conn, NewJob("q", {}))
    assert _notifications(listener) == 1


@pytest.mark.parametrize("head", ["due later", "retrying", "just queued", "its own"])
def test_a_queue_is_not_backed_up_by_jobs_whose_waiting_proves_nothing(
        head: str, conn: psycopg.Connection, database: Database, listener: psycopg.Connection) -> None:
    """Counted only: a job due when queued (its own insert ran the wake-up) that has waited 50 ms unclaimed. A job
    that became due later (debounce, backoff) was announced to no one; one just queued may be being claimed now;
    the transaction's own jobs are not visible to the workers yet."""
    with database.connect(autocommit=False) as queuer:
        queuer.execute("SELECT now()")  # the transaction's clock starts here: before the job below was queued
        if head == "due later":
            queue_waiting_job(conn, "q", due_later=True)
        elif head == "retrying":
            queue_waiting_job(conn, "q", due_later=True, state="failed")
        elif head == "just queued":
            enqueue_on(conn, NewJob("q", {}))
        _notifications(listener)
        if head == "its own":
            time.sleep(0.1)  # longer than the backlog wait: its own jobs are older than that by the wall clock
            enqueue_many_on(queuer, [NewJob("q", {"n": n}) for n in range(3)])
        else:
            enqueue_on(queuer, NewJob("q", {}))
        queuer.commit()
    assert _notifications(listener) == 1


def _look_up_plans(conn: psycopg.Connection) -> list[str]:
    """EXPLAIN of the look-up sql/0098 runs (the statement of job_queue_backed_up, as written there), planned for a
    value (each queue named as a literal) and as the generic plan PL/pgSQL keeps for every queue."""
    source, settings = conn.execute("SELECT prosrc, proconfig FROM pg_proc WHERE proname = 'job_queue_backed_up'"
                                    ).fetchone()
    statement = re.search(r"RETURN \((SELECT .*)\);", source, re.S).group(1)
    for setting in settings or ():  # the function's own planner settings
        name, value = setting.split("=")
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    plans = []
    for queue in ("merge", "queue_yolov8", "empty"):
        plans.append(conn.execute("EXPLAIN " + statement.replace("p_queue", f"'{queue}'")).fetchall())
    conn.execute("PREPARE look_up (text) AS " + statement.replace("p_queue", "$1"))
    try:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        plans.append(conn.execute("EXPLAIN EXECUTE look_up('merge')").fetchall())
    finally:
        conn.execute("RESET ALL")
        conn.execute("DEALLOCATE look_up")
    return ["\n".join(row[0] for row in plan) for plan in plans]


def test_the_look_up_reads_the_head_of_its_queue_by_index_beside_a_big_backlog(conn: psycopg.Connection) -> None:
    """sql/0061's look-up had one plan for every queue and walked the other queues' claimable jobs (65 ms beside
    300,000). This one reads the first entries of jobs_claimable_idx for its queue, whatever plan it gets."""
    conn.execute("ANALYZE jobs")
    empty = _look_up_plans(conn)
    # The merge queue's history is done jobs: judging queue and state apart, the planner takes many of them for
    # claimable ones, the case where a plan by jobs_claimable_order_idx walked the service queue's 300,000.
    conn.execute("""INSERT INTO jobs (queue, payload, state)
                    SELECT CASE WHEN n <= 300000 THEN 'queue_yolov8' ELSE 'merge' END, '{}',
                           CASE WHEN n <= 300000 THEN 'queued' ELSE 'done' END::job_state
                      FROM generate_series(1, 400000) AS n""")
    conn.execute("INSERT INTO jobs (queue, payload) SELECT 'merge', '{}' FROM generate_series(1, 5)")
    conn.execute("ANALYZE jobs")
    for plan in empty + _look_up_plans(conn):
        assert "Limit" in plan and "Index Scan using jobs_claimable_idx" in plan, plan
        assert "Seq Scan" not in plan and "Sort" not in plan and "Bitmap" not in plan, plan


def test_the_look_up_runs_its_generic_plan_at_every_call_beside_a_backed_up_queue(conn: psycopg.Connection) -> None:
    """sql/0100: the plan cache judged a plan made for a backed-up queue cheaper than the generic plan (which
    expects a small share of the table in the queue), so it planned the look-up anew at every call. Every call, the
    first included, now runs the generic plan: its condition names the parameter, not the queue."""
    conn.execute("""INSERT INTO jobs (queue, payload, created_at, run_after)
                    SELECT CASE WHEN n <= 5000 THEN 'merge' ELSE 'consensus' END, '{}',
                           now() - interval '1 second', now() - interval '1 second'
                      FROM generate_series(1, 10000) AS n""")
    conn.execute("ANALYZE jobs")
    plans = nested_plans(conn, "SELECT job_queue_backed_up('merge') FROM generate_series(1, 8)")
    conditions = [condition for plan in plans for condition in index_conditions(plan, "jobs_claimable_idx")]
    assert len(conditions) == 8, plans
    assert all("$1" in condition and "merge" not in condition for condition in conditions), conditions


def test_a_worker_that_drained_a_backlog_claims_once_more_so_a_silent_job_is_not_left_for_the_poll(
        conn: psycopg.Connection, database: Database, pool: ConnectionPool, listener: psycopg.Connection) -> None:
    """The lost wake-up sql/0098 bounds: a transaction queues J silently, counting on the waiting job C; a worker
    claims C (J not visible yet) and finds q drained; then J commits. Nothing notifies; the worker's recheck after
    taking a job that had waited claims J long before its poll (60 s here)."""
    waiting = queue_waiting_job(conn, "q")
    claimed: list[int] = []
    took_waiting = threading.Event()

    def on_claimed(job: Job) -> None:
        claimed.append(job.id)
        if job.id == waiting:
            took_waiting.set()

    role = Role(name="recheck", queues=("q",), handle=lambda job: None)
    options = WorkerOptions(poll_interval_s=60, recheck_after_s=2.0)  # the recheck, slowed for a loaded machine
    with database.connect(autocommit=False) as queuer:
        silent = enqueue_on(queuer, NewJob("q", {}))
        _notifications(listener)
        worker = Worker(JobQueue(pool), role, worker_id="recheck", listen_conninfo=database.conninfo,
                        options=options, hooks=WorkerHooks(on_claimed=on_claimed))
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            assert took_waiting.wait(10) and worker.listening.wait(10)
            time.sleep(0.3)  # the claims the start and the LISTEN asked for are over: the lane is dry
            assert claimed == [waiting]
            queuer.commit()
            committed = time.monotonic()
            assert _notifications(listener) == 0
            wait_until(lambda: silent in claimed, timeout=10, message="the job queued silently to be claimed")
            assert time.monotonic() - committed < options.poll_interval_s / 2
        finally:
            worker.request_stop()
            thread.join(timeout=20)
