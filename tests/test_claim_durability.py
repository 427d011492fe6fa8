"""Job-table workers and every claim loop commit without waiting for the disk (windmill/worker/launch.py,
commits_wait_for_disk; windmill/jobs/queue.py, Claimer): a server crash may lose the last of their commits, a job's
work with its claim, and the job runs again at once; an effect committed after a claim keeps the claim. A worker
that acknowledges RabbitMQ tasks waits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from windmill.bench.chaos.servers import crash_postgres, start_postgres
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.db.embedded import EmbeddedPostgres
from windmill.db.schema import init_database
from windmill.jobs import JobQueue, NewJob
from windmill.worker.launch import commits_wait_for_disk

QUEUE = "merge"
# The WAL writer flushes what asynchronous commits left in memory every wal_writer_delay (10 s is its maximum): long
# enough that the crash below comes first. No autovacuum, whose commits would flush it sooner.
SLOW_WAL_WRITER = {"wal_writer_delay": "10s", "autovacuum": "off"}
# The WAL writer's tick may still fall between a claim and the crash (about 1 in 100: the crash follows within
# 0.1 s), and write the claim out; a claim that stayed is tried again with a new job. A claim that waits for the disk
# stays every time.
TRIES = 3


@pytest.fixture
def crashable(tmp_path: Path, catalog: Catalog) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A private cluster with production durability (fsync, synchronous_commit on), migrated."""
    os.chmod(tmp_path, 0o755)  # the server's unprivileged user keeps its data inside
    cluster = EmbeddedPostgres(tmp_path / "home", fast=False, settings=SLOW_WAL_WRITER)
    conninfo = cluster.acquire()
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            init_database(conn, catalog)
        yield cluster, conninfo
    finally:
        cluster.discard()


def claim_one(jobs: JobQueue, worker: str) -> list[int]:
    claimer = jobs.claimer()
    try:
        return [job.id for job in claimer.complete_and_claim_lanes([], [((QUEUE,), 1)], worker)[0]]
    finally:
        claimer.close()


def crash_and_restart(cluster: EmbeddedPostgres, conninfo: str) -> None:
    crash_postgres(cluster)
    start_postgres(cluster, conninfo)


def job_state(conninfo: str, job_id: int) -> tuple[str, str | None, int]:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT state::text, lease_owner, attempts FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return row


@pytest.mark.timeout(180)
def test_a_claim_lost_in_a_crash_leaves_its_job_claimable_at_once(crashable: tuple[EmbeddedPostgres, str]) -> None:
    cluster, conninfo = crashable
    for _ in range(TRIES):
        with ConnectionPool(conninfo, min_size=1, max_size=2, open=True) as pool:
            job_id = JobQueue(pool).enqueue(NewJob(QUEUE, {}))
            assert claim_one(JobQueue(pool), "worker-a") == [job_id]
        crash_and_restart(cluster, conninfo)
        if job_state(conninfo, job_id) != ("running", "worker-a", 1):
            break
    # The claim was not on disk: the job is as it was before it, its attempt not counted, and another worker takes
    # it now rather than after worker-a's lease expires.
    assert job_state(conninfo, job_id) == ("queued", None, 0)
    with ConnectionPool(conninfo, min_size=1, max_size=2, open=True) as pool:
        assert claim_one(JobQueue(pool), "worker-b") == [job_id]
    assert job_state(conninfo, job_id) == ("running", "worker-b", 1)


@pytest.mark.timeout(120)
def test_an_effect_committed_after_a_claim_keeps_the_claim_through_a_crash(
        crashable: tuple[EmbeddedPostgres, str]) -> None:
    cluster, conninfo = crashable
    with ConnectionPool(conninfo, min_size=1, max_size=2, open=True) as pool:
        jobs = JobQueue(pool)
        job_id = jobs.enqueue(NewJob(QUEUE, {}))
        assert claim_one(jobs, "worker-a") == [job_id]
        # What a handler commits (here a follow-up job, through the pool as every handler writes) waits for the
        # disk, and the WAL before it, the claim's, goes with it.
        effect = jobs.enqueue(NewJob("consensus", {}))
    crash_and_restart(cluster, conninfo)

    assert job_state(conninfo, job_id) == ("running", "worker-a", 1)
    assert effect is not None and job_state(conninfo, effect)[0] == "queued"


@pytest.mark.timeout(180)
def test_a_job_table_workers_work_lost_in_a_crash_goes_with_its_claim_and_runs_again(
        crashable: tuple[EmbeddedPostgres, str]) -> None:
    cluster, conninfo = crashable
    database = Database(conninfo)
    for _ in range(TRIES):
        with database.pool(max_size=2, wait_for_disk=False) as worker_pool:
            jobs = JobQueue(worker_pool)
            with ConnectionPool(conninfo, min_size=1, max_size=1, open=True) as submitter:
                job_id = JobQueue(submitter).enqueue(NewJob(QUEUE, {}))  # what submit queues waits for the disk
            claimer = jobs.claimer()
            assert [job.id for job in claimer.complete_and_claim_lanes([], [((QUEUE,), 1)], "worker-a")[0]] == [job_id]
            work = jobs.enqueue(NewJob("consensus", {}))  # the job's work: here a follow-up job
            claimer.complete_and_claim_lanes([job_id], [((QUEUE,), 1)], "worker-a")
            claimer.close()
        crash_and_restart(cluster, conninfo)
        if job_state(conninfo, job_id)[0] != "done":
            break
    # Work, claim and completion were lost together: the job is queued as before, and runs again now.
    assert job_state(conninfo, job_id) == ("queued", None, 0)
    with psycopg.connect(conninfo) as conn:
        assert conn.execute("SELECT count(*) FROM jobs WHERE id = %s", (work,)).fetchone() == (0,)
    with ConnectionPool(conninfo, min_size=1, max_size=2, open=True) as pool:
        assert claim_one(JobQueue(pool), "worker-b") == [job_id]


def test_only_a_worker_that_acknowledges_rabbitmq_tasks_waits_for_the_disk(
        crashable: tuple[EmbeddedPostgres, str]) -> None:
    assert commits_wait_for_disk("service", rabbitmq=True)
    assert not commits_wait_for_disk("service", rabbitmq=False)
    assert not any(commits_wait_for_disk(role, rabbitmq=True)
                   for role in ("merger", "postprocess", "consensus", "caption_score", "scheduler"))
    database = Database(crashable[1])  # production durability: the server's own setting is on
    for wait, setting in ((True, "on"), (False, "off")):
        with database.pool(max_size=1, wait_for_disk=wait) as pool, pool.connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == (setting,)
