"""A job-table job whose handling kills its worker process (tests/support/poison_worker.py: SIGKILL on one image, as a
decoder's segfault or the OOM killer would) ends as its role's error row once its last attempt's lease expired twice
(sql/0131): a service task, a box's postprocessing, a caption score. Before, it went dead with no row (sql/0126), and
the backfill leaves a dead job's pairs alone. A merge or a vote, which have no error row, end dead with the reason."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, REPOSITORY, wait_until
from tests.farm_fixtures import running_farm
from tests.test_service_role import SAMPLES
from tests.test_worker import InProcessWorker
from windmill.bench.stage import BenchEnvironment, bench_environment
from windmill.broker import Task
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.jobs import Job, JobQueue, NewJob
from windmill.roles.merger import merge_image
from windmill.roles.registry import Role
from windmill.settings import settings_from_mapping
from windmill.worker.runtime import WorkerOptions

REASON = ("the worker died handling it twice (its lease expired on its last attempt each time): a poison input, "
          "not run again")
STARTS = 7  # more than a bounded poison input needs: three deaths (two attempts, one run more) and a start to record it
PERSON = {"label": "person", "emoji": "🧑", "confidence": 0.95,
          "bbox": {"x": 100, "y": 40, "width": 150, "height": 300}}


@dataclass
class Pictures:
    poison: int
    good: int


@pytest.fixture
def pictures(conn: psycopg.Connection, tmp_path: Path) -> Pictures:
    folder = tmp_path / "pictures"
    folder.mkdir()
    shutil.copy(SAMPLES / "coffee.jpg", folder / "poison.jpg")
    shutil.copy(SAMPLES / "chelsea.jpg", folder / "good.jpg")
    add_paths(conn, [folder / "poison.jpg", folder / "good.jpg"])
    ids = dict(conn.execute("SELECT image_filename, image_id FROM images").fetchall())
    return Pictures(ids["poison.jpg"], ids["good.jpg"])


@pytest.fixture
def environment(catalog: Catalog, database_url: str) -> Iterator[tuple[Catalog, BenchEnvironment]]:
    with running_farm(catalog, services=["yolov8", "colors", "caption_score"]) as (_, shifted), \
            bench_environment(shifted, database_url, None) as environment:
        yield shifted, environment


def restarted_until(done: Callable[[], bool], role_args: list[str], environment: BenchEnvironment, log: Path) -> int:
    """Start the worker again each time it dies, as a keeper would, until `done`; the deaths it took."""
    deaths = 0
    env = {**environment.env, "PYTHONPATH": str(REPOSITORY), "LOG_LEVEL": "INFO"}
    for start in range(STARTS):
        with log.open("ab") as output:
            process = subprocess.Popen(
                [PYTHON, "-m", "tests.support.poison_worker", *role_args, "--broker", "postgres",
                 "--lease-seconds", "1", "--concurrency", "2"],
                env={**env, "WORKER_ID": f"poisoned-{start}"}, stdout=output, stderr=output, cwd=REPOSITORY)
        try:
            wait_until(lambda: process.poll() is not None or done(), timeout=60,  # noqa: B023 (waited for here)
                       message=lambda: f"the worker to die or its work to be done\n{log.read_text()}")
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        if process.returncode == -signal.SIGKILL:
            deaths += 1
        elif done():
            return deaths
    tail = "\n".join(log.read_text().splitlines()[-30:])
    pytest.fail(f"not done after {deaths} deaths of the worker:\n{tail}")


def job_states(conn: psycopg.Connection, queue: str) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT image_id, state::text, last_error FROM jobs WHERE queue = %s ORDER BY id",
                        (queue,)).fetchall()


def test_a_service_task_that_kills_its_worker_each_time_ends_as_its_error_row(
        conn: psycopg.Connection, pictures: Pictures, environment: tuple[Catalog, BenchEnvironment],
        pool: ConnectionPool, tmp_path: Path) -> None:
    catalog, bench = environment
    queue = next(name for name in bench.queue_names if name.endswith("yolov8"))
    images = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images ORDER BY image_id")
    columns = ("image_id", "image_filename", "image_path", "image_url")
    jobs = JobQueue(pool)
    for image in images.fetchall():
        task = Task(**{**Task.for_image(dict(zip(columns, image, strict=True)), catalog["yolov8"]).to_message(),
                       "queue_name": queue})
        jobs.enqueue(NewJob(queue, task.to_message(), task.image_id, f"yolov8:{task.image_id}", max_attempts=2))

    def answered() -> bool:
        return conn.execute("SELECT count(*) FROM results WHERE service = 'yolov8'").fetchone()[0] == 2

    deaths = restarted_until(answered, ["--role", "service", "--service", "yolov8"], bench, tmp_path / "worker.log")
    assert deaths == 3, "two attempts, and the last run once more"
    rows = dict((image, row) for image, *row in conn.execute(
        "SELECT image_id, status, error_message, data FROM results WHERE service = 'yolov8'"))
    assert rows[pictures.poison][:2] == ["error", REASON]
    assert rows[pictures.poison][2]["error"]["kind"] == "worker_died"
    assert rows[pictures.good][0] == "success"
    assert [state for _, state, _ in job_states(conn, queue)] == ["done", "done"]


def test_a_boxs_postprocessing_and_a_caption_score_that_kill_their_worker_end_as_their_error_rows(
        conn: psycopg.Connection, pictures: Pictures, environment: tuple[Catalog, BenchEnvironment],
        pool: ConnectionPool, tmp_path: Path) -> None:
    _, bench = environment
    for image in (pictures.poison, pictures.good):
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, 'yolov8', %s, %s, "
                     "'success')", (image, uuid.uuid4(), Jsonb({"predictions": [PERSON]})))
        with pool.connection() as worker_conn:
            merge_image(worker_conn, image, settings_from_mapping({}).harmony, "poison-test")
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, 'blip', %s, %s, "
                     "'success')", (image, uuid.uuid4(), Jsonb({"predictions": [{"text": "a cup of coffee"}]})))
        conn.execute("SELECT enqueue_caption_score(%s, 'blip')", (image,))
    conn.execute("UPDATE jobs SET max_attempts = 2 WHERE queue IN ('postprocess_colors', 'caption_score')")

    def rows_of(service: str) -> dict[int, tuple[Any, ...]]:
        return {image: (status, error_message, data) for image, status, error_message, data in conn.execute(
            "SELECT image_id, status, error_message, data FROM postprocessing WHERE service = %s", (service,))}

    log = tmp_path / "worker.log"
    assert restarted_until(lambda: len(rows_of("colors")) == 2, ["--role", "postprocess", "--service", "colors"],
                           bench, log) == 3
    assert restarted_until(lambda: len(rows_of("caption_score_blip")) == 2, ["--role", "caption_score"], bench,
                           log) == 3
    for service in ("colors", "caption_score_blip"):
        rows = rows_of(service)
        status, error_message, data = rows[pictures.poison]
        assert (status, error_message, data["error"]["kind"]) == ("error", REASON, "worker_died"), service
        assert rows[pictures.good][0] == "success", (service, rows[pictures.good])
    assert rows_of("caption_score_blip")[pictures.poison][2]["caption"] == "a cup of coffee"
    for queue in ("postprocess_colors", "caption_score"):
        assert [state for _, state, _ in job_states(conn, queue)] == ["done", "done"], queue


def expire(conn: psycopg.Connection, job_id: int) -> None:
    conn.execute("UPDATE jobs SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (job_id,))


def test_the_claim_hands_a_job_whose_last_attempt_expired_twice_over_as_a_poison_and_a_third_expiry_is_dead(
        pool: ConnectionPool, conn: psycopg.Connection) -> None:
    jobs = JobQueue(pool)
    job_id = jobs.enqueue(NewJob("q", {}, max_attempts=1))
    now = datetime.now(UTC) + timedelta(seconds=1)
    assert [job.poison for job in jobs.claim(["q"], "w1", 1, now=now)] == [False]
    expire(conn, job_id)
    [again] = jobs.claim(["q"], "w2", 1)
    assert (again.attempts, again.poison) == (1, False), "the last attempt runs once more to record its outcome"
    expire(conn, job_id)
    [poison] = jobs.claim(["q"], "w3", 1)
    assert (poison.id, poison.attempts, poison.poison) == (job_id, 1, True)
    assert poison.last_error == ("lease of worker w2 expired on its last attempt twice: its workers died handling it "
                                 "each time (a poison input); its failure is recorded without running it")
    expire(conn, job_id)  # the recording's lease expired too
    assert jobs.claim(["q"], "w4", 1) == []
    state, reason = conn.execute("SELECT state::text, last_error FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert state == "dead"
    assert reason.startswith("lease of worker w3 expired while the failure of a poison input was recorded")


def test_the_backfill_gives_a_job_whose_last_attempt_expired_twice_to_the_claim_as_a_poison(
        pool: ConnectionPool, conn: psycopg.Connection) -> None:
    jobs = JobQueue(pool)
    job_id = jobs.enqueue(NewJob("q", {}, max_attempts=1))
    jobs.claim(["q"], "w1", 1, now=datetime.now(UTC) + timedelta(seconds=1))
    for expected in (False, True):
        expire(conn, job_id)
        conn.execute("SELECT * FROM backfill()")
        [job] = jobs.claim(["q"], "w2", 1)
        assert (job.id, job.attempts, job.poison) == (job_id, 1, expected)


def poison_in_waiting(conn: psycopg.Connection, job_id: int) -> None:
    """The job's last attempt ran once more after its lease expired, and expired again: the next claim poisons it."""
    conn.execute("UPDATE jobs SET state = 'running', attempts = max_attempts, lease_owner = 'gone', "
                 "lease_expires_at = now() - interval '1 second', last_error = 'lease of worker gone before expired on "
                 "its last attempt; run once more to record its outcome (before: boom)' WHERE id = %s", (job_id,))


def test_a_poison_of_a_role_with_no_error_row_ends_dead_with_the_reason_and_is_not_run(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection) -> None:
    ran: list[int] = []
    role = Role(name="votes", queues=("votes",), handle=lambda job: ran.append(job.id))
    job_id = JobQueue(pool).enqueue(NewJob("votes", {}, max_attempts=2))
    poison_in_waiting(conn, job_id)
    with InProcessWorker(database, pool, role, WorkerOptions(poll_interval_s=0.1)):
        wait_until(lambda: conn.execute("SELECT state::text FROM jobs WHERE id = %s", (job_id,)).fetchone()[0]
                   == "dead", message="the poison dead")
    assert conn.execute("SELECT last_error FROM jobs WHERE id = %s", (job_id,)).fetchone()[0] == REASON
    assert ran == [], "a poison is not run"


def test_jobs_whose_worker_died_run_one_at_a_time_the_others_given_back_uncounted_with_their_marks(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection) -> None:
    release, running = threading.Event(), threading.Event()

    def handle(job: Job) -> None:
        running.set()
        release.wait(10)

    role = Role(name="suspects", queues=("suspects",), handle=handle)
    jobs = JobQueue(pool)
    ids = [jobs.enqueue(NewJob("suspects", {}, max_attempts=2)) for _ in range(2)]
    conn.execute("UPDATE jobs SET state = 'running', attempts = 1, lease_owner = 'gone', "
                 "lease_expires_at = now() - interval '1 second' WHERE id = ANY(%s)", (ids,))
    with InProcessWorker(database, pool, role, WorkerOptions(concurrency=2, poll_interval_s=0.1)):
        assert running.wait(10)
        wait_until(lambda: conn.execute("SELECT count(*) FROM jobs WHERE state = 'failed'").fetchone()[0] == 1,
                   message="the second given back")
        states = conn.execute("SELECT state::text, attempts, last_error FROM jobs ORDER BY state").fetchall()
        release.set()
    assert states[0] == ("failed", 1, "lease of worker gone expired"), "given back: not counted, its mark kept"
    assert states[1][:2] == ("running", 2)
