"""A job's completion handed to the write that stores its answer (windmill/jobs/handoff.py): the answer, the job
done and its lane's next task claimed commit together, and the handler's thread runs that task next. On real
PostgreSQL, with the service role against the stand-in for the worker's side."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.protocol_trace import traced_requests
from tests.test_answer_groups import answer, held_group, writer_pool  # noqa: F401  (a fixture)
from tests.test_caption_score import scorer  # noqa: F401  (a fixture)
from tests.test_postprocess_crops import merged_image, stub_handler
from tests.test_service_role import farm_catalog, submit_samples  # noqa: F401  (a fixture)
from tests.test_triggers import add_image, add_result
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.farm import ServiceAnswer, ServiceCallError
from windmill.image_cache import ImageSource
from windmill.jobs import Job, JobQueue, NewJob
from windmill.jobs.handoff import Handoff
from windmill.roles.answers import AnswerWriter
from windmill.roles.caption_score import CaptionScore, CaptionScorer
from windmill.roles.registry import RoleContext, build_role
from windmill.settings import settings_from_mapping
from windmill.worker.farm_client import process_farm_client
from windmill.worker.runtime import Worker, WorkerHooks, WorkerOptions

LANES = (("queue_yolov8",), ("queue_blip",))
WORKER = "handing-off"


@pytest.fixture
def jobs(writer_pool: ConnectionPool) -> JobQueue:  # noqa: F811
    return JobQueue(writer_pool)


@pytest.fixture
def writer(writer_pool: ConnectionPool, catalog: Catalog, jobs: JobQueue) -> Iterator[AnswerWriter]:  # noqa: F811
    answers = AnswerWriter(writer_pool, catalog, jobs=jobs)
    yield answers
    answers.close()


def running_jobs(jobs: JobQueue, queue: str, queued: int, running: int) -> list[Job]:
    """`queued` jobs of `queue`, the first `running` of them leased to the worker."""
    jobs.enqueue_many([NewJob(queue, {"n": n}) for n in range(queued)])
    claimed = jobs.claim([queue], WORKER, running)
    assert len(claimed) == running
    return claimed


def handoff(job: Job, lane: int = 0, wants: int = 1) -> Handoff:
    return Handoff(job.id, WORKER, LANES, lane, wants)


def job_rows(conn: psycopg.Connection, queue: str) -> list[tuple[int, str, str | None, str]]:
    return conn.execute("SELECT id, state::text, lease_owner, xmin::text FROM jobs WHERE queue = %s ORDER BY id",
                        (queue,)).fetchall()


def test_an_answer_its_job_done_and_the_lanes_next_task_claimed_are_one_transaction(
        writer: AnswerWriter, jobs: JobQueue, database: Database, conn: psycopg.Connection) -> None:
    image = add_image(conn)
    first, second = running_jobs(jobs, "queue_yolov8", queued=3, running=2)
    given = [handoff(first), handoff(second)]
    # Two answers written together (the first holds the second back): one transaction for both and their jobs.
    held = held_group(writer, database, conn, [replace(answer(image, "yolov8"), handoff=h) for h in given])
    assert [h.error for h in held] == [None, None]
    assert [h.taken for h in given] == [True, True]
    # Three jobs waited, two ran: the one left goes to the first hand-off, the second finds its lane empty.
    rows = job_rows(conn, "queue_yolov8")
    assert [(state, owner) for _, state, owner, _ in rows] == [("done", None), ("done", None), ("running", WORKER)]
    assert [[job.id for job in h.next_jobs] for h in given] == [[rows[2][0]], []]
    [answer_xmin] = {row[0] for row in conn.execute("SELECT xmin::text FROM results WHERE image_id = %s", (image,))}
    assert {xmin for *_, xmin in rows} == {answer_xmin}, "the answers, their jobs and the claim were not one commit"


def test_a_hand_offs_claim_runs_on_its_generic_plan_from_the_first_while_the_write_keeps_the_servers_choice(
        writer: AnswerWriter, jobs: JobQueue, conn: psycopg.Connection) -> None:
    image = add_image(conn)
    [job] = running_jobs(jobs, "queue_yolov8", queued=12, running=1)
    for _ in range(10):
        given = handoff(job)
        writer.write(replace(answer(image, "yolov8"), handoff=given))
        [job] = given.next_jobs
    assert writer._handing_off is not None and writer._handing_off._conn is not None
    plans = dict((tuple(statement.split()[:2]), (generic, custom)) for statement, generic, custom in
                 writer._handing_off._conn.execute("SELECT statement, generic_plans, custom_plans "
                                                   "FROM pg_prepared_statements"))
    # Left to choose, the server plans the claim anew at every execution (its array of ids it cannot see).
    assert plans[("WITH", "done")] == (10, 0)
    assert plans[("INSERT", "INTO")][1] == 5  # its five custom plans first, as on any connection


def test_a_hand_off_is_one_round_trip_to_the_server(
        writer: AnswerWriter, jobs: JobQueue, conn: psycopg.Connection, tmp_path: Path) -> None:
    image = add_image(conn)
    [job] = running_jobs(jobs, "queue_yolov8", queued=3, running=1)
    first = handoff(job)
    writer.write(replace(answer(image, "yolov8"), handoff=first))  # opens the hand-off's connection
    assert writer._handing_off is not None and writer._handing_off._conn is not None
    second = handoff(first.next_jobs[0])
    requests = traced_requests(writer._handing_off._conn, tmp_path / "trace",
                               lambda: writer.write(replace(answer(image, "yolov8"), handoff=second)))
    assert second.taken and len(second.next_jobs) == 1
    assert len(requests) == 1 and re.search(r"BEGIN.*INSERT INTO results.*COMMIT", requests[0]), requests


def test_a_hand_off_claims_only_from_its_own_lane_and_not_once_its_worker_stops(
        writer: AnswerWriter, jobs: JobQueue, conn: psycopg.Connection) -> None:
    image = add_image(conn)
    [yolo] = running_jobs(jobs, "queue_yolov8", queued=1, running=1)
    [_, stopping] = running_jobs(jobs, "queue_blip", queued=4, running=2)
    given = handoff(yolo)
    writer.write(replace(answer(image, "yolov8"), handoff=given))
    assert given.taken and given.next_jobs == []  # two blip tasks wait, but they are another lane's
    last = handoff(stopping, lane=1, wants=0)
    writer.write(replace(answer(image, "blip"), handoff=last))
    assert last.taken and last.next_jobs == []
    assert [state for _, state, _, _ in job_rows(conn, "queue_blip")] == ["running", "done", "queued", "queued"]


def test_a_hand_off_whose_claim_also_takes_an_expired_lease_hands_on_every_job_it_claimed(
        writer: AnswerWriter, jobs: JobQueue, conn: psycopg.Connection) -> None:
    image = add_image(conn)
    [mine] = running_jobs(jobs, "queue_yolov8", queued=3, running=1)
    [lost] = jobs.claim(["queue_yolov8"], "gone-worker", 1)
    conn.execute("UPDATE jobs SET lease_expires_at = now() - interval '1 minute' WHERE id = %s", (lost.id,))
    given = handoff(mine)
    writer.write(replace(answer(image, "yolov8"), handoff=given))
    # A claim takes a lane's expired leases beside its waiting jobs, each up to the limit: two for one asked.
    assert given.taken
    waiting = [job_id for job_id, state, owner, _ in job_rows(conn, "queue_yolov8") if state == "running"]
    assert sorted(job.id for job in given.next_jobs) == sorted(waiting) and lost.id in waiting and len(waiting) == 2


def test_a_group_that_cannot_hand_off_is_stored_without_and_its_jobs_stay_with_their_worker(
        writer: AnswerWriter, jobs: JobQueue, database: Database, conn: psycopg.Connection) -> None:
    image = add_image(conn)
    first, second = running_jobs(jobs, "queue_yolov8", queued=3, running=2)
    good = handoff(first)
    bad = handoff(second)
    refused = replace(answer(image, "clip", data={"caption": "a \u0000 in text jsonb cannot hold"}), handoff=bad)
    held = held_group(writer, database, conn, [replace(answer(image, "yolov8"), handoff=good), refused])
    assert held[0].error is None and isinstance(held[1].error, psycopg.DataError)
    assert not good.taken and not bad.taken  # the claim loop completes the good one, the runtime fails the bad one
    assert [(state, owner) for _, state, owner, _ in job_rows(conn, "queue_yolov8")] == [
        ("running", WORKER), ("running", WORKER), ("queued", None)]
    assert conn.execute("SELECT service FROM results WHERE image_id = %s", (image,)).fetchall() == [("yolov8",)]
    # The failed hand-off left its connection clean: the next answer hands its job off on it.
    again = handoff(first)
    writer.write(replace(answer(image, "yolov8"), handoff=again))
    assert again.taken and len(again.next_jobs) == 1


def run_worker(database: Database, pool: ConnectionPool, catalog: Catalog, hooks: WorkerHooks,
               until: Callable[[], bool], *, started: Callable[[Worker], None] = lambda _: None) -> None:
    """A yolov8 service worker of one thread, in this process, until `until()` holds or it stops by itself."""
    settings = settings_from_mapping({"WORKER_ID": WORKER})
    jobs = JobQueue(pool, lease=timedelta(seconds=30))
    with process_farm_client(settings, catalog, database) as farm:
        context = RoleContext(settings=settings, database=database, pool=pool, jobs=jobs, catalog=catalog,
                              worker_id=WORKER, farm=farm, images=ImageSource(settings), service="yolov8")
        worker = Worker(jobs, build_role("service", context), worker_id=WORKER, listen_conninfo=database.conninfo,
                        options=WorkerOptions(concurrency=1, poll_interval_s=0.1), hooks=hooks)
        started(worker)
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_until(lambda: until() or not thread.is_alive(), timeout=60, message="the worker to finish")
        finally:
            worker.request_stop()
            thread.join(timeout=30)


def yolo_states(conn: psycopg.Connection) -> list[tuple[str, int]]:
    return conn.execute("SELECT state::text, attempts FROM jobs WHERE queue = 'queue_yolov8' ORDER BY id").fetchall()


def test_a_service_workers_thread_goes_on_with_the_task_its_answer_claimed(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, farm_catalog: Catalog) -> None:  # noqa: F811
    tasks = submit_samples(conn, pool, farm_catalog, "yolov8", database)
    assert tasks >= 3
    seen: list[tuple[str, int]] = []  # as each handler returned: its job's state, the jobs leased besides it

    def on_handled(job: Job, error: BaseException | None, _: float) -> None:
        with psycopg.connect(database.conninfo) as look:
            state, = look.execute("SELECT state::text FROM jobs WHERE id = %s", (job.id,)).fetchone()
            others, = look.execute("SELECT count(*) FROM jobs WHERE state = 'running' AND lease_owner = %s "
                                   "AND id <> %s", (WORKER, job.id)).fetchone()
        seen.append((state, others))

    run_worker(database, pool, farm_catalog, WorkerHooks(on_handled=on_handled),
               until=lambda: all(state == "done" for state, _ in yolo_states(conn)))
    assert conn.execute("SELECT count(*) FROM results WHERE service = 'yolov8'").fetchone()[0] == tasks
    # Before the runtime records anything, each job is done and the next (while any waited) leased to its thread.
    assert seen == [("done", 1)] * (tasks - 1) + [("done", 0)]
    assert all(attempts == 1 for _, attempts in yolo_states(conn))


def test_jobs_a_hand_off_claimed_beyond_its_thread_run_too(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, farm_catalog: Catalog) -> None:  # noqa: F811
    submit_samples(conn, pool, farm_catalog, "yolov8", database)
    first_claimed: list[int] = []

    def on_claimed(job: Job) -> None:
        if not first_claimed:  # before its handler runs: a waiting task's worker is found dead
            first_claimed.append(job.id)
            conn.execute("UPDATE jobs SET state = 'running', attempts = 1, lease_owner = 'gone-worker', "
                         "lease_expires_at = now() - interval '1 minute' WHERE id = (SELECT max(id) FROM jobs "
                         "WHERE queue = 'queue_yolov8')")

    run_worker(database, pool, farm_catalog, WorkerHooks(on_claimed=on_claimed),
               until=lambda: all(state == "done" for state, _ in yolo_states(conn)))
    lost = conn.execute("SELECT last_error FROM jobs WHERE queue = 'queue_yolov8' AND last_error IS NOT NULL"
                        ).fetchall()
    assert lost == [("lease of worker gone-worker expired",)]  # and no job of this worker's waited for its lease


def test_a_stopping_worker_hands_off_its_last_job_without_claiming_more(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, farm_catalog: Catalog) -> None:  # noqa: F811
    tasks = submit_samples(conn, pool, farm_catalog, "yolov8", database)
    claimed: list[int] = []
    running: list[Worker] = []

    def on_claimed(job: Job) -> None:
        claimed.append(job.id)
        running[0].request_stop()  # before its handler starts: the stop is known when it hands off

    run_worker(database, pool, farm_catalog, WorkerHooks(on_claimed=on_claimed), until=lambda: False,
               started=running.append)
    assert len(claimed) == 1
    assert yolo_states(conn) == [("done", 1)] + [("queued", 0)] * (tasks - 1)


def one_xmin(conn: psycopg.Connection, sql: str, *params: object) -> str:
    [(xmin,)] = conn.execute(sql, params).fetchall()
    return xmin


def test_a_caption_score_hands_its_job_off_with_the_scores_write(
        scorer: CaptionScorer, pool: ConnectionPool, conn: psycopg.Connection) -> None:  # noqa: F811
    jobs_of_pool = JobQueue(pool)
    image = add_image(conn)
    caption = add_result(conn, image, "blip")
    jobs_of_pool.enqueue_many([NewJob("caption_score", {"image_id": image, "service": "blip"}, image, f"k{n}")
                               for n in range(2)])
    [job] = jobs_of_pool.claim(["caption_score"], WORKER, 1)
    given = Handoff(job.id, WORKER, (("caption_score",),), 0, 1)
    assert scorer.store(CaptionScore(image, "blip", caption, "success", {"similarity_score": 0.5}), given)
    assert given.taken and len(given.next_jobs) == 1
    stored = one_xmin(conn, "SELECT xmin::text FROM postprocessing WHERE service = 'caption_score_blip'")
    assert one_xmin(conn, "SELECT xmin::text FROM jobs WHERE id = %s AND state = 'done'", job.id) == stored
    assert one_xmin(conn, "SELECT xmin::text FROM jobs WHERE id = %s AND state = 'running'",
                    given.next_jobs[0].id) == stored


class Colors:
    """A colors service that answers every box, or fails the `failing`-th call as a busy service does."""

    def __init__(self, failing: int = 0) -> None:
        self.calls, self.failing = 0, failing

    def analyze(self, service: str, image: object, **_options: object) -> ServiceAnswer:
        self.calls += 1
        if self.calls == self.failing:
            raise ServiceCallError("HTTP 503: busy", kind="http_5xx", service=service, status_code=503)
        return ServiceAnswer(service, {"predictions": [{"color": "red"}]}, 0.01, 200)


@pytest.mark.parametrize("failing", [0, 2])
def test_a_postprocess_job_hands_off_with_its_rows_and_only_once_every_box_is_answered(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, failing: int) -> None:
    image = merged_image(conn, pool, ("dog", "🐕"))  # two boxes, and their image's colors job
    queue = JobQueue(pool)
    queue.enqueue(NewJob("postprocess_colors", {"image_id": image}, image, "another"))
    [job] = queue.claim(["postprocess_colors"], WORKER, 1)
    handler = stub_handler(database, pool, Colors(failing))
    given = Handoff(job.id, WORKER, (("postprocess_colors",),), 0, 1)
    try:
        if failing:  # the second box's call fails: the first box is stored, the job is retried for the second
            with pytest.raises(ServiceCallError):
                handler.handle(job, "colors", given)
            assert not given.taken
            assert conn.execute("SELECT state::text FROM jobs WHERE id = %s", (job.id,)).fetchone() == ("running",)
            return
        assert handler.handle(job, "colors", given) == ["success", "success"]
    finally:
        handler.writes.close()
    assert given.taken and len(given.next_jobs) == 1
    # The image's two rows and the job's completion: one transaction.
    first, last = (row[0] for row in conn.execute("SELECT xmin::text FROM postprocessing ORDER BY merged_box_id"))
    assert one_xmin(conn, "SELECT xmin::text FROM jobs WHERE id = %s AND state = 'done'", job.id) == last == first
