"""The worker runtime with real processes: no job runs twice across processes, a SIGKILLed worker's jobs come
back after its lease, SIGTERM drains, NOTIFY wakes an idle worker, and a lost connection is survived."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, REPOSITORY, wait_until
from tests.support.probe_worker import PROBE_QUEUE, PROBE_TABLE
from windmill.db.connect import Database
from windmill.jobs import Job, JobQueue, NewJob
from windmill.roles.registry import Role
from windmill.worker.runtime import Worker, WorkerHooks, WorkerOptions

PROBE_SCRIPT = REPOSITORY / "tests" / "support" / "probe_worker.py"


@pytest.fixture
def probe_table(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute(PROBE_TABLE)
    conn.execute("TRUNCATE public.probe_runs")
    return conn


@pytest.fixture
def start_probe_worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator:
    processes: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        env = {**worker_env, "WORKER_ID": name}
        log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115  (closed with the process below)
        process = subprocess.Popen([PYTHON, str(PROBE_SCRIPT), *args], env=env, stdout=log, stderr=log,
                                   cwd=tmp_path)
        process.log = log  # type: ignore[attr-defined]
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        process.log.close()  # type: ignore[attr-defined]


def enqueue_probes(conn: psycopg.Connection, count: int, payload: dict | None = None, max_attempts: int = 5) -> None:
    conn.execute(
        "INSERT INTO jobs (queue, payload, max_attempts) SELECT %s, %s, %s FROM generate_series(1, %s)",
        (PROBE_QUEUE, Jsonb(payload or {}), max_attempts, count),
    )


def count(conn: psycopg.Connection, sql: str, *params: object) -> int:
    return conn.execute(sql, params).fetchone()[0]


def test_no_job_runs_twice_across_worker_processes(probe_table: psycopg.Connection, start_probe_worker) -> None:
    conn = probe_table
    for n in range(4):
        start_probe_worker(f"concurrent-{n}", "--concurrency", "4", "--batch-size", "16")
    # All four running before the jobs arrive: started first, one worker could take all 600 before another is up.
    wait_until(lambda: count(conn, "SELECT count(*) FROM workers WHERE worker_id LIKE 'concurrent-%%'") == 4,
               timeout=60, message="four workers registered")
    enqueue_probes(conn, 600)
    wait_until(lambda: count(conn, "SELECT count(*) FROM jobs WHERE state = 'done'") == 600, timeout=60,
               message="600 jobs done")
    assert count(conn, "SELECT count(*) FROM public.probe_runs") == 600
    assert count(conn, "SELECT count(DISTINCT job_id) FROM public.probe_runs") == 600
    assert count(conn, "SELECT count(DISTINCT worker_id) FROM public.probe_runs") > 1


def test_jobs_of_a_killed_worker_finish_elsewhere_after_the_lease(probe_table: psycopg.Connection,
                                                                 start_probe_worker) -> None:
    conn = probe_table
    enqueue_probes(conn, 2, {"sleep": 1.0})
    victim = start_probe_worker("victim", "--lease-seconds", "2", "--concurrency", "2")
    wait_until(lambda: count(conn, "SELECT count(*) FROM public.probe_runs WHERE worker_id = 'victim'") == 2,
               message="the victim to start both jobs")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    start_probe_worker("rescuer", "--lease-seconds", "2")
    wait_until(lambda: count(conn, "SELECT count(*) FROM jobs WHERE state = 'done'") == 2, timeout=30,
               message="the rescuer to finish the victim's jobs")
    assert count(conn, "SELECT count(*) FROM public.probe_runs WHERE worker_id = 'rescuer' "
                       "AND finished_at IS NOT NULL") == 2
    assert count(conn, "SELECT max(attempts) FROM jobs") == 2


def test_sigterm_drains_in_flight_jobs_and_exits_cleanly(probe_table: psycopg.Connection,
                                                        start_probe_worker) -> None:
    conn = probe_table
    enqueue_probes(conn, 3, {"sleep": 1.5})
    # A batch of 3: while its 3 jobs run the worker holds no more, so the 5 below wait for the claim after them,
    # which the signal (sent long before 1.5 s pass) cancels. With a larger batch a NOTIFY could hand them over early.
    worker = start_probe_worker("drainer", "--concurrency", "3", "--batch-size", "3", "--drain-timeout", "20")
    wait_until(lambda: count(conn, "SELECT count(*) FROM public.probe_runs") == 3, message="3 jobs to start")
    enqueue_probes(conn, 5)  # must stay queued: the drain finishes what runs and claims nothing new
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert count(conn, "SELECT count(*) FROM public.probe_runs WHERE finished_at IS NOT NULL") == 3
    assert count(conn, "SELECT count(*) FROM jobs WHERE state = 'done'") == 3
    assert count(conn, "SELECT count(*) FROM jobs WHERE state = 'running'") == 0
    assert count(conn, "SELECT count(*) FROM workers WHERE worker_id = 'drainer' AND stopped_at IS NOT NULL") == 1


def test_after_the_drain_timeout_the_worker_leaves_without_waiting_for_its_handlers(
        probe_table: psycopg.Connection, start_probe_worker) -> None:
    conn = probe_table
    enqueue_probes(conn, 1, {"sleep": 300})  # a handler that outlasts any test
    worker = start_probe_worker("stuck", "--drain-timeout", "1")
    wait_until(lambda: count(conn, "SELECT count(*) FROM public.probe_runs") == 1, message="the job to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, "the worker waited for its handler past the drain timeout"
    # The job keeps its lease until it expires; then another worker runs it.
    assert count(conn, "SELECT count(*) FROM jobs WHERE state = 'running' AND lease_owner = 'stuck'") == 1
    assert count(conn, "SELECT count(*) FROM workers WHERE worker_id = 'stuck' AND stopped_at IS NOT NULL") == 1


def test_failing_jobs_retry_then_go_dead_with_the_reason(probe_table: psycopg.Connection,
                                                        start_probe_worker) -> None:
    conn = probe_table
    enqueue_probes(conn, 1, {"fail": "service exploded"}, max_attempts=2)
    enqueue_probes(conn, 1, {"fail": "unreadable image", "permanent": True}, max_attempts=5)
    start_probe_worker("flaky")
    wait_until(lambda: count(conn, "SELECT count(*) FROM jobs WHERE state = 'dead'") == 2, timeout=30,
               message="both jobs to go dead")
    rows = dict(conn.execute("SELECT last_error, attempts FROM jobs ORDER BY id").fetchall())
    assert rows == {"service exploded": 2, "unreadable image": 1}


# -- in-process workers: wake-up latency and reconnection ----------------------------------------------------


class InProcessWorker:
    def __init__(self, database: Database, pool: ConnectionPool, role: Role, options: WorkerOptions) -> None:
        self.started = threading.Event()
        self.claimed_at: list[float] = []
        self.done: list[Job] = []
        hooks = WorkerHooks(on_claimed=lambda job: self.claimed_at.append(time.perf_counter()),
                            on_done=lambda job, error: self.done.append(job))
        self.worker = Worker(JobQueue(pool), role, worker_id="in-process", listen_conninfo=database.conninfo,
                             options=options, hooks=hooks)
        self.thread = threading.Thread(target=self.worker.run)

    def __enter__(self) -> InProcessWorker:
        self.thread.start()
        wait_until(self.worker.listening.is_set, message="the worker to LISTEN")
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=20)


def test_notify_wakes_an_idle_worker_long_before_its_poll(database: Database, pool: ConnectionPool) -> None:
    handled = threading.Event()
    role = Role(name="wake", queues=("wake",), handle=lambda job: handled.set())
    jobs = JobQueue(pool)
    with InProcessWorker(database, pool, role, WorkerOptions(poll_interval_s=60)) as worker:
        time.sleep(0.2)  # let the first poll pass: from now on only a notification can wake it
        sent = time.perf_counter()
        jobs.enqueue(NewJob("wake", {}))
        assert handled.wait(5), "the worker did not wake up"
        assert worker.claimed_at[0] - sent < 5


def test_worker_survives_its_connections_being_killed(database: Database, pool: ConnectionPool) -> None:
    seen: list[int] = []
    role = Role(name="survivor", queues=("survivor",), handle=lambda job: seen.append(job.id))
    jobs = JobQueue(pool)
    with database.pool(max_size=2, name="worker-pool") as worker_pool, database.connect() as admin, \
            InProcessWorker(database, worker_pool, role, WorkerOptions(poll_interval_s=0.2)) as worker:
        first = jobs.enqueue(NewJob("survivor", {}))
        wait_until(lambda: first in seen, message="the first job")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE pid <> pg_backend_pid() AND datname = current_database() "
                      "AND application_name = 'windmill-tests' AND backend_type = 'client backend' "
                      "AND pid NOT IN (SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_terminate%%')")
        second = JobQueue(database.pool(max_size=1, name="after")).enqueue(NewJob("survivor", {}))
        wait_until(lambda: second in seen, timeout=20, message="the job queued after the connections died")
        wait_until(lambda: len(worker.done) == 2, message="both recorded")
    with database.connect() as conn:
        assert count(conn, "SELECT count(*) FROM jobs WHERE state = 'done'") == 2


def test_lease_of_a_long_job_is_renewed_while_it_runs(database: Database, pool: ConnectionPool) -> None:
    release = threading.Event()
    role = Role(name="long", queues=("long",), handle=lambda job: release.wait(10))
    jobs = JobQueue(pool, lease=timedelta(seconds=1))
    with database.pool(max_size=3, name="long-pool") as worker_pool:
        worker = Worker(JobQueue(worker_pool, lease=timedelta(seconds=1)), role, worker_id="long-runner",
                        listen_conninfo=database.conninfo, options=WorkerOptions(heartbeat_interval_s=0.2))
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            job_id = jobs.enqueue(NewJob("long", {}))
            with database.connect() as conn:
                wait_until(lambda: count(conn, "SELECT count(*) FROM jobs WHERE state = 'running'") == 1)
                time.sleep(2.5)  # more than two lease periods
                assert jobs.claim(["long"], "thief", 1) == []
                release.set()
                wait_until(lambda: count(conn, "SELECT count(*) FROM jobs WHERE id = %s AND state = 'done'",
                                         job_id) == 1)
        finally:
            release.set()
            worker.request_stop()
            thread.join(timeout=20)


def test_a_job_whose_image_was_removed_while_it_ran_fails_without_a_warning(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    """`images remove` takes the image's jobs with it: a handler that then fails on the missing image has nothing
    to retry and nothing lost, which is no reason for a warning per job."""
    caplog.set_level(logging.INFO, logger="windmill.worker.runtime")
    image_id = conn.execute("INSERT INTO images (image_filename, image_path) VALUES ('gone.jpg', '/nowhere/gone.jpg') "
                            "RETURNING image_id").fetchone()[0]

    def handle(job: Job) -> None:
        with database.connect() as other:
            other.execute("DELETE FROM images WHERE image_id = %s", (job.image_id,))
            other.execute("INSERT INTO consensus (image_id, consensus_data) VALUES (%s, '{}')", (job.image_id,))

    role = Role(name="voter", queues=("voter",), handle=handle)
    worker = Worker(JobQueue(pool), role, worker_id="voter-1", listen_conninfo=database.conninfo,
                    options=WorkerOptions(poll_interval_s=0.1))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        JobQueue(pool).enqueue(NewJob("voter", {}, image_id=image_id))
        wait_until(lambda: worker.jobs_failed == 1, message="the failed attempt recorded")
    finally:
        worker.request_stop()
        thread.join(timeout=20)
    said = [(record.levelname, record.getMessage()) for record in caplog.records
            if record.name == "windmill.worker.runtime"]
    assert [level for level, message in said if message.startswith("job ")] == ["INFO"], said
    assert any("no longer this worker's" in message for _, message in said), said


def test_a_dying_side_task_stops_the_worker_with_a_failure_code(database: Database, pool: ConnectionPool) -> None:
    role = Role(name="x", queues=("x",), handle=lambda job: None)
    worker = Worker(JobQueue(pool), role, worker_id="doomed", listen_conninfo="host=/nonexistent/socket dbname=x",
                    options=WorkerOptions(poll_interval_s=0.1))
    worker._listener.run = lambda: (_ for _ in ()).throw(RuntimeError("listener bug"))  # type: ignore[method-assign]
    assert worker.run() == 1


def test_a_job_that_lost_the_database_and_its_lease_is_not_said_to_be_back_in_the_queue(
        database: Database, pool: ConnectionPool, caplog: pytest.LogCaptureFixture) -> None:
    # A worker logged "back in the queue, not counted as an attempt" for a job another worker's claim had taken back
    # (or given up) while the database was away: jobs.fail() changed nothing, as the job was no longer its own.
    caplog.set_level(logging.INFO, logger="windmill.worker.runtime")
    jobs = JobQueue(pool, lease=timedelta(seconds=30))
    jobs.enqueue(NewJob("lost", {}))
    [job] = jobs.claim(["lost"], "lost-1", 1)
    with database.connect() as conn:  # its lease ran out, and another worker took it back
        conn.execute("UPDATE jobs SET lease_owner = 'lost-2' WHERE id = %s", (job.id,))
    worker = Worker(jobs, Role(name="lost", queues=("lost",), handle=lambda job: None), worker_id="lost-1",
                    listen_conninfo=database.conninfo)
    worker._record_failure(job, psycopg.OperationalError("server closed the connection unexpectedly"))
    said = [record.getMessage() for record in caplog.records if record.name == "windmill.worker.runtime"]
    assert said and "no longer this worker's" in said[-1] and "back in the queue" not in said[-1], said


def test_an_error_of_the_work_is_an_attempt_and_the_database_away_is_not(
        database: Database, conn: psycopg.Connection) -> None:
    # Every OperationalError was taken for the database away: a merge whose box overflowed an index row (54000)
    # was given its attempt back every two seconds for ever, never dead.
    from psycopg_pool import PoolTimeout

    from windmill.db.connect import is_database_unavailable

    with database.connect() as session:
        session.execute("CREATE TEMPORARY TABLE wide (t text)")
        session.execute("CREATE INDEX ON wide (t)")
        with pytest.raises(psycopg.errors.ProgramLimitExceeded) as too_wide:
            session.execute("INSERT INTO wide SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i")
        session.execute("SET statement_timeout = '20ms'")
        with pytest.raises(psycopg.errors.QueryCanceled) as cancelled:
            session.execute("SELECT pg_sleep(1)")
        session.execute("SET statement_timeout = 0")
        conn.execute("SELECT pg_terminate_backend(%s)", (session.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError) as terminated:
            session.execute("SELECT 1")
    assert not is_database_unavailable(too_wide.value) and not is_database_unavailable(cancelled.value)
    assert is_database_unavailable(terminated.value) and is_database_unavailable(PoolTimeout("no connection"))
