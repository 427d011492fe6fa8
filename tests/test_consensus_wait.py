"""A consensus job waits for the image's merge and face/pose work in flight (sql/0095), within consensus_max_lag():
it queues its successor instead of voting, and the vote that finally runs reads every row, the late ones included."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.test_freshness import SETTINGS, WORKER, detection, image, insert_answer, jobs, run_queue  # noqa: F401
from windmill.catalog import Catalog
from windmill.jobs import Job, JobQueue
from windmill.roles.consensus import recompute_consensus
from windmill.roles.merger import merge_image

LATER = timedelta(minutes=1)  # past the consensus debounce, without waiting


def queued_consensus_jobs(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM jobs WHERE queue = 'consensus' AND state = 'queued'").fetchone()[0]


def answered_at(conn: psycopg.Connection, result_id: int) -> datetime:
    return conn.execute("SELECT result_created FROM results WHERE result_id = %s", (result_id,)).fetchone()[0]


@pytest.fixture
def consensus_job(pool: ConnectionPool, catalog: Catalog) -> Callable[[Job], None]:
    """What the consensus role does with a job: wait while the image's follow-ups are in flight, else vote."""
    service_types = {service.name: service.service_type for service in catalog.services}

    def handle(job: Job) -> None:
        with pool.connection() as conn:
            recompute_consensus(conn, job.image_id, service_types, WORKER, may_wait=True,
                                now=answered_at(conn, first_answer(conn)))

    return handle


def run_claimable(job_queue: JobQueue, queue: str, handle: Callable[[Job], None], now: datetime) -> int:
    """Claim and run the queue's jobs claimable at `now` once (a successor they queue is left waiting)."""
    claimed = job_queue.claim([queue], WORKER, 10, now=now)
    for job in claimed:
        handle(job)
    job_queue.complete([job.id for job in claimed], WORKER, now=now)
    return len(claimed)


def defer_consensus(conn: psycopg.Connection, image_id: int, now: datetime) -> bool:
    return conn.execute("SELECT defer_consensus(%s, %s)", (image_id, now)).fetchone()[0]


def first_answer(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT min(result_id) FROM results").fetchone()[0]


def test_a_consensus_job_waits_for_the_merge_in_flight_and_the_vote_after_it_reads_the_boxes(
        pool: ConnectionPool, conn: psycopg.Connection, jobs: JobQueue, image: int,  # noqa: F811
        consensus_job: Callable[[Job], None]) -> None:
    insert_answer(conn, image, "yolov8", detection("dog", "🐕", 10))  # queues a merge and a consensus job
    later = datetime.now().astimezone() + LATER
    assert run_claimable(jobs, "consensus", consensus_job, later) == 1
    assert conn.execute("SELECT count(*) FROM consensus").fetchone()[0] == 0, "no vote while the merge waits"
    assert queued_consensus_jobs(conn) == 1, "the job queued its successor"

    def merge(job: Job) -> None:
        with pool.connection() as worker_conn:
            merge_image(worker_conn, job.image_id, SETTINGS.harmony, WORKER)

    run_queue(jobs, "merge", merge)
    assert run_claimable(jobs, "consensus", consensus_job, later + LATER) == 1
    assert conn.execute("SELECT boxes_revision FROM consensus").fetchone() == (1,), "the one vote counted the boxes"
    assert queued_consensus_jobs(conn) == 0


def test_an_image_waits_no_longer_than_consensus_max_lag(conn: psycopg.Connection, image: int) -> None:  # noqa: F811
    answer = insert_answer(conn, image, "yolov8", detection("dog", "🐕", 10))
    lag = conn.execute("SELECT consensus_max_lag()").fetchone()[0]
    assert lag > timedelta(0)
    assert defer_consensus(conn, image, answered_at(conn, answer) + lag / 2)
    assert not defer_consensus(conn, image, answered_at(conn, answer) + lag), "past the bound: vote now"


def test_an_image_without_follow_ups_in_flight_is_voted_on_at_once(conn: psycopg.Connection,
                                                                   image: int) -> None:  # noqa: F811
    answer = insert_answer(conn, image, "nsfw2", {"predictions": [{"label": "safe", "confidence": 0.9}]})
    assert not defer_consensus(conn, image, answered_at(conn, answer)), "no merge, face or pose job waits"
    conn.execute("UPDATE jobs SET state = 'done'")
    conn.execute("INSERT INTO jobs (queue, image_id, dedupe_key) VALUES ('postprocess_pose', %s, 'pose:1')", (image,))
    assert defer_consensus(conn, image, answered_at(conn, answer)), "a pose job of the image is in flight"
