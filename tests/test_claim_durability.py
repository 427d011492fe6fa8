"""A claim loop's round trips commit without waiting for the disk (windmill/jobs/queue.py, Claimer): a server crash
may lose the last claims, and the job runs again at once. A job's work waits for the disk, and with it the claim
before it: a worker that outlives the crash completes only work that is there."""

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
def test_work_committed_after_a_claim_keeps_the_claim_through_a_crash(
        crashable: tuple[EmbeddedPostgres, str]) -> None:
    cluster, conninfo = crashable
    with Database(conninfo).pool(max_size=2) as pool:  # the pool a worker's handlers write through
        jobs = JobQueue(pool)
        job_id = jobs.enqueue(NewJob(QUEUE, {}))
        assert claim_one(jobs, "worker-a") == [job_id]
        # The job's work (here a follow-up job) waits for the disk, and the WAL before it, the claim's, goes with
        # it: had the work been rolled back, worker-a, believing it done, would complete the job once the server is
        # back (the chaos run via the job table lost an answer so).
        work = jobs.enqueue(NewJob("consensus", {}))
    crash_and_restart(cluster, conninfo)

    assert job_state(conninfo, job_id) == ("running", "worker-a", 1)
    assert work is not None and job_state(conninfo, work)[0] == "queued"
