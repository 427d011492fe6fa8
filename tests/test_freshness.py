"""Products are fresh by content (DESIGN rule 7).

No lost wake-up: an answer whose transaction is still open while the image's merge, consensus or caption score job
is claimed and run is read by a later run of that product. Two connections: the answer's transaction is held open
across the claim and the run, then committed; nothing waits on a clock. (Before sql/0012, an enqueue that found
the image's job queued did nothing: the job ran without the uncommitted answer and nothing ran after it, so the
product missed the answer for good.)

Newest caption wins: a score is stored only while its caption is the source's latest. And each product records
the rows it was computed from."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.jobs import Job, JobQueue
from windmill.locks import Product, lock_image
from windmill.roles.caption_score import CaptionScorer
from windmill.roles.consensus import recompute_consensus
from windmill.roles.merger import merge_image
from windmill.roles.registry import RoleContext
from windmill.settings import settings_from_mapping

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
SETTINGS = settings_from_mapping({"WORKER_ID": "wakeup-test"})
WORKER = "wakeup-test-worker"


def detection(label: str, emoji: str, x: int) -> dict[str, Any]:
    return {"predictions": [{"label": label, "emoji": emoji, "confidence": 0.95,
                             "bbox": {"x": x, "y": 10, "width": 50, "height": 60}}]}


def insert_answer(conn: psycopg.Connection, image_id: int, service: str, data: dict[str, Any]) -> int:
    """A service worker's write: the results row, whose trigger queues the follow-up jobs."""
    return conn.execute("INSERT INTO results (image_id, service, task_id, data, status) "
                        "VALUES (%s, %s, %s, %s, 'success') RETURNING result_id",
                        (image_id, service, uuid.uuid4(), Jsonb(data))).fetchone()[0]


def run_queue(jobs: JobQueue, queue: str, handle: Callable[[Job], object], *, now: datetime | None = None) -> int:
    """Claim and run every claimable job of the queue, as a worker does, until none is left; how many ran."""
    ran = 0
    while claimed := jobs.claim([queue], WORKER, 10, now=now):
        for job in claimed:
            handle(job)
        jobs.complete([job.id for job in claimed], WORKER, now=now)
        ran += len(claimed)
    return ran


@pytest.fixture
def jobs(pool: ConnectionPool) -> JobQueue:
    return JobQueue(pool)


@pytest.fixture
def image(conn: psycopg.Connection) -> int:
    add_paths(conn, [SAMPLES / "coffee.jpg"])
    return conn.execute("SELECT image_id FROM images").fetchone()[0]


def test_a_detector_answer_committed_after_the_merge_job_ran_is_merged(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, jobs: JobQueue, image: int) -> None:
    def merge(job: Job) -> None:
        with pool.connection() as worker_conn:
            merge_image(worker_conn, job.image_id, SETTINGS.harmony, WORKER)

    later = datetime.now().astimezone() + timedelta(minutes=1)  # past the merge window, without waiting
    first = insert_answer(conn, image, "yolov8", detection("person", "🧑", 10))  # queues the image's merge job
    with database.connect() as answering, answering.transaction():
        second = insert_answer(answering, image, "rtdetr", detection("dog", "🐕", 300))  # finds that job waiting
        run_queue(jobs, "merge", merge, now=later)  # a merger runs while the answer is not committed yet
    run_queue(jobs, "merge", merge, now=later)
    read = conn.execute("SELECT source_result_ids FROM merged_images WHERE image_id = %s", (image,)).fetchone()
    assert read == ([first, second],), "the merge after the commit read the late answer"
    assert sorted(row[0] for row in conn.execute("SELECT merged_data->>'emoji' FROM merged_boxes")) == ["🐕", "🧑"]


def test_a_voter_answer_committed_after_the_consensus_job_ran_is_voted_on(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, jobs: JobQueue, image: int,
        catalog: Catalog) -> None:
    service_types = {service.name: service.service_type for service in catalog.services}

    def vote(job: Job) -> None:
        with pool.connection() as worker_conn:
            recompute_consensus(worker_conn, job.image_id, service_types, WORKER)

    later = datetime.now().astimezone() + timedelta(minutes=1)  # past the consensus debounce, without waiting
    first = insert_answer(conn, image, "nsfw2", {"predictions": [{"label": "safe", "confidence": 0.9}]})
    with database.connect() as answering, answering.transaction():
        second = insert_answer(answering, image, "ocr", {"predictions": [{"text": "coffee", "confidence": 0.9}]})
        run_queue(jobs, "consensus", vote, now=later)
    run_queue(jobs, "consensus", vote, now=later)
    voted = conn.execute("SELECT consensus_data->'debug'->'result_ids', consensus_data->'services_list' "
                         "FROM consensus WHERE image_id = %s", (image,)).fetchone()
    assert voted == ([first, second], ["nsfw2", "ocr"]), "the vote after the commit counted the late answer"


@pytest.fixture
def scorer(pool: ConnectionPool, database: Database, jobs: JobQueue, catalog: Catalog) -> Iterator[CaptionScorer]:
    with running_farm(catalog) as (_, farm_catalog), FarmClient(farm_catalog) as farm:
        context = RoleContext(settings=SETTINGS, database=database, pool=pool, jobs=jobs, catalog=farm_catalog,
                              worker_id=WORKER, farm=farm, images=ImageSource(SETTINGS))
        yield CaptionScorer(context, farm, context.images)


def test_a_caption_committed_after_the_caption_score_job_ran_is_scored(
        database: Database, conn: psycopg.Connection, jobs: JobQueue, image: int, scorer: CaptionScorer) -> None:
    insert_answer(conn, image, "blip", {"predictions": [{"text": "a dog on a lawn"}]})  # queues caption_score
    with database.connect() as answering, answering.transaction():
        newer = insert_answer(answering, image, "blip", {"predictions": [{"text": "a cup of coffee"}]})
        run_queue(jobs, "caption_score", scorer.handle)
    run_queue(jobs, "caption_score", scorer.handle)
    scored = conn.execute("SELECT (data->>'source_result_id')::bigint, data->>'caption' FROM postprocessing "
                          "WHERE image_id = %s AND service = 'caption_score_blip'", (image,)).fetchall()
    assert scored == [(newer, "a cup of coffee")], "the score after the commit is of the late caption"


# -- newest caption wins, recorded inputs ------------------------------------------------------------------------


def test_the_score_of_an_older_caption_that_finishes_last_is_not_stored(
        conn: psycopg.Connection, image: int, scorer: CaptionScorer) -> None:
    insert_answer(conn, image, "blip", {"predictions": [{"text": "a dog on a lawn"}]})
    slow = scorer.score(image, "blip")  # scored while it was the latest caption; its answer comes back late
    newer = insert_answer(conn, image, "blip", {"predictions": [{"text": "a cup of coffee"}]})
    fast = scorer.score(image, "blip")
    assert slow is not None and fast is not None and fast.source_result_id == newer
    assert scorer.store(fast) == "success"
    assert scorer.store(slow) is None, "a superseded caption's score is not stored"
    assert conn.execute("SELECT source_result_id, data->>'caption' FROM postprocessing WHERE image_id = %s "
                        "AND service = 'caption_score_blip'", (image,)).fetchall() == [(newer, "a cup of coffee")]


def test_a_score_stored_while_another_holds_the_lock_replaces_what_the_holder_committed(
        database: Database, conn: psycopg.Connection, image: int, scorer: CaptionScorer) -> None:
    """The store waits for the image's caption-score lock and only then looks for the previous score: the score
    the lock's holder commits meanwhile is replaced, not kept beside the new one."""
    insert_answer(conn, image, "blip", {"predictions": [{"text": "a dog on a lawn"}]})
    scored = scorer.score(image, "blip")
    assert scored is not None
    stored: list[str | None] = []
    with database.connect() as holder:
        with holder.transaction():
            lock_image(holder, Product.CAPTION_SCORE, image)
            storing = threading.Thread(target=lambda: stored.append(scorer.store(scored)))
            storing.start()
            storing.join(0.5)
            assert storing.is_alive(), "the store waits for the image's caption-score lock"
            holder.execute("INSERT INTO postprocessing (image_id, service, data, status, source_result_id) "
                           "VALUES (%s, 'caption_score_blip', '{}', 'success', %s)",
                           (image, scored.source_result_id))
        storing.join(10)
    assert stored == ["success"]
    assert conn.execute("SELECT count(*) FROM postprocessing WHERE image_id = %s AND service = 'caption_score_blip'",
                        (image,)).fetchone()[0] == 1


def test_a_consensus_records_the_answers_boxes_and_face_and_pose_rows_it_read(
        pool: ConnectionPool, conn: psycopg.Connection, image: int, catalog: Catalog) -> None:
    service_types = {service.name: service.service_type for service in catalog.services}
    old = insert_answer(conn, image, "yolov8", detection("person", "🧑", 10))
    latest = insert_answer(conn, image, "yolov8", detection("person", "🧑", 12))  # supersedes `old`
    ocr = insert_answer(conn, image, "ocr", {"predictions": [{"text": "coffee", "confidence": 0.9}]})
    with pool.connection() as worker_conn:
        merge_image(worker_conn, image, SETTINGS.harmony, WORKER)
    box = conn.execute("SELECT merged_id FROM merged_boxes WHERE image_id = %s", (image,)).fetchone()[0]
    face = conn.execute("INSERT INTO postprocessing (image_id, merged_box_id, service, data, status) VALUES "
                        "(%s, %s, 'face', '{}', 'empty') RETURNING postprocessing_id", (image, box)).fetchone()[0]
    recompute_consensus(conn, image, service_types, WORKER)
    recorded = conn.execute("SELECT source_result_ids, boxes_revision, postprocessing_ids FROM consensus "
                            "WHERE image_id = %s", (image,)).fetchone()
    revision = conn.execute("SELECT revision FROM merged_images WHERE image_id = %s", (image,)).fetchone()[0]
    assert recorded == ([latest, ocr], revision, [face]) and old not in recorded[0] and revision == 1


def test_a_vote_whose_rows_did_not_change_is_not_run_again(pool: ConnectionPool, conn: psycopg.Connection,
                                                           image: int, catalog: Catalog) -> None:
    """A consensus job that finds the stored consensus recording the rows it would read leaves it as it is; any
    change of those rows (a face row, a newer answer) is voted on."""
    service_types = {service.name: service.service_type for service in catalog.services}

    def voter() -> str | None:
        return conn.execute("SELECT worker_id FROM consensus WHERE image_id = %s", (image,)).fetchone()[0]

    insert_answer(conn, image, "yolov8", detection("person", "🧑", 10))
    insert_answer(conn, image, "ocr", {"predictions": [{"text": "coffee", "confidence": 0.9}]})
    with pool.connection() as worker_conn:
        merge_image(worker_conn, image, SETTINGS.harmony, WORKER)
    assert recompute_consensus(conn, image, service_types, "first") is not None
    assert recompute_consensus(conn, image, service_types, "second") is None and voter() == "first"
    box = conn.execute("SELECT merged_id FROM merged_boxes WHERE image_id = %s", (image,)).fetchone()[0]
    conn.execute("INSERT INTO postprocessing (image_id, merged_box_id, service, data, status) VALUES "
                 "(%s, %s, 'colors', '{}', 'empty')", (image, box))  # the vote does not read colors
    assert recompute_consensus(conn, image, service_types, "third") is None and voter() == "first"
    conn.execute("INSERT INTO postprocessing (image_id, merged_box_id, service, data, status) VALUES "
                 "(%s, %s, 'face', '{}', 'empty')", (image, box))
    assert recompute_consensus(conn, image, service_types, "fourth") is not None and voter() == "fourth"
    newer = insert_answer(conn, image, "ocr", {"predictions": [{"text": "tea", "confidence": 0.9}]})
    assert recompute_consensus(conn, image, service_types, "fifth") is not None and voter() == "fifth"
    assert newer in conn.execute("SELECT source_result_ids FROM consensus WHERE image_id = %s", (image,)).fetchone()[0]


def test_the_box_revision_moves_only_when_the_box_set_changes(pool: ConnectionPool, conn: psycopg.Connection,
                                                             image: int) -> None:
    def merge() -> int:
        with pool.connection() as worker_conn:
            merge_image(worker_conn, image, SETTINGS.harmony, WORKER)
        return conn.execute("SELECT revision FROM merged_images WHERE image_id = %s", (image,)).fetchone()[0]

    insert_answer(conn, image, "yolov8", {"predictions": []})
    assert merge() == 0  # merged into no box: nothing changed
    insert_answer(conn, image, "rtdetr", detection("dog", "🐕", 300))
    assert merge() == 1
    assert merge() == 1  # the same answers again: the same set
    insert_answer(conn, image, "detectron2", detection("person", "🧑", 10))
    assert merge() == 2


# -- the enqueue's lock, piece by piece ---------------------------------------------------------------------------


def waiting_for_a_lock(conn: psycopg.Connection, pid: int) -> bool:
    return conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()[0]


def test_an_answer_that_raced_another_to_queue_the_job_holds_the_job_that_won(
        database: Database, conn: psycopg.Connection, jobs: JobQueue, image: int) -> None:
    """Both answers find no job waiting and insert one; the second waits for the first (unique key), meets its job
    when it commits, and must hold that one until its own commit, as if it had found it waiting."""
    later = datetime.now().astimezone() + timedelta(minutes=1)  # past the merge window, without waiting
    inserted, commit = threading.Event(), threading.Event()
    failures: list[BaseException] = []
    with database.connect() as first:
        first.execute("BEGIN")
        insert_answer(first, image, "yolov8", detection("person", "🧑", 10))  # inserts the merge job, uncommitted
        second = database.connect()
        second_pid = second.info.backend_pid

        def answer_later() -> None:
            try:
                with second, second.transaction():
                    insert_answer(second, image, "rtdetr", detection("dog", "🐕", 300))
                    inserted.set()
                    commit.wait(timeout=30)
            except BaseException as error:  # reported below, in the test's thread
                failures.append(error)
                inserted.set()

        thread = threading.Thread(target=answer_later)
        thread.start()
        try:
            wait_until(lambda: waiting_for_a_lock(conn, second_pid), message="the second answer to wait for the first")
            first.execute("COMMIT")
            assert inserted.wait(timeout=30) and not failures, failures
            assert jobs.claim(["merge"], WORKER, 10, now=later) == [], \
                "the job is held while the second answer is uncommitted"
        finally:
            commit.set()
            thread.join(timeout=30)
    assert not failures, failures
    assert [job.queue for job in jobs.claim(["merge"], WORKER, 10, now=later)] == ["merge"]


def test_enqueues_of_one_waiting_job_do_not_wait_for_each_other(database: Database, conn: psycopg.Connection,
                                                                image: int) -> None:
    """The lock an enqueue takes on the waiting job is shared: a second enqueue passes through it. (Voter answers of
    one image also pass the image's vote gate one at a time, sql/0105: tests/test_vote_gate.py.)"""
    insert_answer(conn, image, "yolov8", detection("person", "🧑", 10))  # the merge job waits
    with database.connect() as first, first.transaction(), database.connect() as second, second.transaction():
        first.execute("SELECT enqueue_merge(%s)", (image,))
        second.execute("SET LOCAL lock_timeout = '10s'")  # a guard: a wait would fail the test, not hang it
        second.execute("SELECT enqueue_merge(%s)", (image,))
    assert conn.execute("SELECT count(*) FROM jobs WHERE queue = 'merge'").fetchone() == (1,)


def test_an_answer_finding_the_job_running_queues_another(conn: psycopg.Connection, jobs: JobQueue,
                                                          image: int) -> None:
    later = datetime.now().astimezone() + timedelta(minutes=1)  # past the merge window, without waiting
    insert_answer(conn, image, "yolov8", detection("person", "🧑", 10))
    [running] = jobs.claim(["merge"], WORKER, 10, now=later)
    insert_answer(conn, image, "rtdetr", detection("dog", "🐕", 300))
    [again] = jobs.claim(["merge"], WORKER, 10, now=later)
    assert again.id != running.id


def test_a_vote_that_waited_for_the_lock_reads_what_its_holder_committed(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, image: int, catalog: Catalog) -> None:
    """The vote takes the image's consensus lock and reads its inputs in one call; the read's snapshot follows the
    lock, so an answer committed by the lock's holder while the vote waited is voted on."""
    service_types = {service.name: service.service_type for service in catalog.services}
    insert_answer(conn, image, "ocr", {"predictions": [{"text": "coffee", "confidence": 0.9}]})
    voted: list[dict[str, Any] | None] = []
    with database.connect() as holder:
        with holder.transaction():
            lock_image(holder, Product.CONSENSUS, image)

            def vote() -> None:
                with pool.connection() as worker_conn:
                    voted.append(recompute_consensus(worker_conn, image, service_types, WORKER))

            voting = threading.Thread(target=vote)
            voting.start()
            voting.join(0.5)
            assert voting.is_alive(), "the vote waits for the image's consensus lock"
            late = insert_answer(holder, image, "nsfw2", {"predictions": [{"label": "safe", "confidence": 0.9}]})
        voting.join(10)
    assert voted and voted[0] is not None
    assert late in conn.execute("SELECT source_result_ids FROM consensus WHERE image_id = %s", (image,)).fetchone()[0]
