"""The merge's coalescing window (sql/0113): a merge job falls due merge_delay() after it is queued, so an image's
detector answers that arrive within it are merged once; its notification makes the merger claim when it is due, not
at the poll. Consensus jobs, due consensus_delay() later, are claimed the same way (sql/0118)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.test_freshness import SAMPLES, SETTINGS, WORKER, detection, insert_answer
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.db.queries import fetch_value
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.jobs import Job, JobQueue, NewJob
from windmill.jobs.queue import enqueue_on
from windmill.roles.merger import merge_image
from windmill.roles.registry import Role, RoleContext, build_role
from windmill.worker.runtime import Worker, WorkerHooks, WorkerOptions


@pytest.fixture
def image(conn: psycopg.Connection) -> int:
    add_paths(conn, [SAMPLES / "coffee.jpg"])
    return conn.execute("SELECT image_id FROM images").fetchone()[0]


def test_detector_answers_within_the_window_are_merged_once(conn: psycopg.Connection, pool: ConnectionPool,
                                                             image: int) -> None:
    jobs = JobQueue(pool)
    first = insert_answer(conn, image, "yolov8", detection("person", "🧑", 10))
    assert jobs.claim(["merge"], WORKER, 10) == [], "the merge waits for the image's other detectors"
    second = insert_answer(conn, image, "rtdetr", detection("dog", "🐕", 300))  # finds that job waiting
    due = conn.execute("SELECT now() + merge_delay()").fetchone()[0]
    [job] = jobs.claim(["merge"], WORKER, 10, now=due)
    with pool.connection() as worker_conn:
        merge_image(worker_conn, job.image_id, SETTINGS.harmony, WORKER)
    jobs.complete([job.id], WORKER, now=due)
    read = conn.execute("SELECT source_result_ids FROM merged_images WHERE image_id = %s", (image,)).fetchone()
    assert read == ([first, second],), "one merge read both answers"


def test_the_merger_claims_a_merge_job_when_it_falls_due_not_at_the_poll(
        conn: psycopg.Connection, database: Database, pool: ConnectionPool, image: int) -> None:
    """The notification of a merge job due later makes the lane claim when it is due; without that, the claim the
    notification asks for finds nothing due and the job waits for the poll (60 s here)."""
    claimed: list[Job] = []
    got_it = threading.Event()

    def on_claimed(job: Job) -> None:
        claimed.append(job)
        got_it.set()

    delay_s = float(fetch_value(conn, "merge_delay_s"))
    assert delay_s > 0
    role = Role(name="merge-window", queues=("merge",), handle=lambda job: None, claim_delay_s=delay_s)
    worker = Worker(JobQueue(pool), role, worker_id="merge-window", listen_conninfo=database.conninfo,
                    options=WorkerOptions(poll_interval_s=60), hooks=WorkerHooks(on_claimed=on_claimed))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert worker.listening.wait(10)
        time.sleep(0.3)  # the claims the start and the LISTEN asked for are over: the lane is dry
        insert_answer(conn, image, "yolov8", detection("person", "🧑", 10))  # autocommit: queued and notified
        committed = time.monotonic()
        wait_until(got_it.is_set, timeout=20, message="the merge job to be claimed before the poll")
        assert time.monotonic() - committed < 30
        assert [job.queue for job in claimed] == ["merge"]
    finally:
        worker.request_stop()
        thread.join(timeout=20)


def test_a_job_due_within_a_second_notifies_and_one_due_later_does_not(conn: psycopg.Connection,
                                                                         database: Database, image: int) -> None:
    """A consensus job (due consensus_delay() later) notifies as a merge job does (sql/0118); a deadline job (due
    30 s later) waits for the poll."""
    with database.connect() as listener:
        listener.execute("SELECT * FROM listen_job_queues(%s)", [["consensus"]])
        for job in ("consensus_deadline_job", "consensus_job"):
            spec = conn.execute(f"SELECT ({job}(%s)).*", (image,)).fetchone()
            enqueue_on(conn, NewJob(spec[0], spec[2], image_id=image, dedupe_key=spec[3]), run_after=spec[4])
            expected = 0 if job == "consensus_deadline_job" else 1
            assert sum(1 for _ in listener.notifies(timeout=0.3)) == expected, job


def test_the_consensus_worker_claims_a_vote_when_it_falls_due_not_at_the_poll(
        conn: psycopg.Connection, database: Database, pool: ConnectionPool, catalog: Catalog, image: int) -> None:
    """The consensus role delays its queue by the debounce, so a vote is claimed when due: before sql/0118 it waited
    for the poll (up to a second; 60 s here), and a batch's last votes kept it from ending."""
    claimed_at: list[float] = []
    with FarmClient(catalog) as farm:
        context = RoleContext(settings=SETTINGS, database=database, pool=pool, jobs=JobQueue(pool),
                              catalog=catalog, worker_id=WORKER, farm=farm, images=ImageSource(SETTINGS))
        role = build_role("consensus", context)
        worker = Worker(JobQueue(pool), role, worker_id=WORKER, listen_conninfo=database.conninfo,
                        options=WorkerOptions(poll_interval_s=60),
                        hooks=WorkerHooks(on_claimed=lambda job: claimed_at.append(time.monotonic())))
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            assert worker.listening.wait(10)
            time.sleep(0.3)  # the claims the start and the LISTEN asked for are over: the lane is dry
            spec = conn.execute("SELECT (consensus_job(%s)).*", (image,)).fetchone()
            queued = time.monotonic()
            enqueue_on(conn, NewJob(spec[0], spec[2], image_id=image, dedupe_key=spec[3]), run_after=spec[4])
            wait_until(lambda: bool(claimed_at), timeout=20, message="the vote to be claimed before the poll")
            assert claimed_at[0] - queued >= role.claim_delay_s - 0.05, "claimed before it was due"
        finally:
            worker.request_stop()
            thread.join(timeout=20)


def test_a_merge_job_locked_by_an_answer_when_it_falls_due_is_claimed_once_that_answer_commits(
        conn: psycopg.Connection, database: Database, pool: ConnectionPool, image: int) -> None:
    """A second detector answer that finds the image's merge job waiting locks it FOR SHARE until it commits (the
    job must not run before the answer is visible: sql/0012). If the merger's claim comes at the job's due time in
    between, SKIP LOCKED passes the job by, and the answer's commit notifies nobody: the lane claims again shortly
    after (windmill.worker.claim_state), not at the poll (up to a second in production; 60 s here). Seen once as a
    first-boxes p95 of 1,021 ms in `bench pipeline --latency-profile gpu --scale-latency ollama=10`."""
    got_it = threading.Event()
    delay_s = float(fetch_value(conn, "merge_delay_s"))
    role = Role(name="merge-window", queues=("merge",), handle=lambda job: None, claim_delay_s=delay_s)
    worker = Worker(JobQueue(pool), role, worker_id="merge-window", listen_conninfo=database.conninfo,
                    options=WorkerOptions(poll_interval_s=60), hooks=WorkerHooks(on_claimed=lambda job: got_it.set()))
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        assert worker.listening.wait(10)
        time.sleep(0.3)  # the claims the start and the LISTEN asked for are over: the lane is dry
        with database.connect() as answering:
            answering.autocommit = False
            insert_answer(conn, image, "yolov8", detection("person", "🧑", 10))  # queued and notified
            insert_answer(answering, image, "rtdetr", detection("dog", "🐕", 300))  # finds it waiting: FOR SHARE
            time.sleep(delay_s + 0.08)  # the lane's claim at the job's due time has passed it by
            assert not got_it.is_set()
            answering.commit()
        assert got_it.wait(3), "the merge job was not claimed after the answer holding it committed"
    finally:
        worker.request_stop()
        thread.join(timeout=20)
