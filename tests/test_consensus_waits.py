"""A consensus vote waits for the image's voter tasks (sql/0104): while a voter task has no final row (a RabbitMQ
ledger entry, or a job-table service task whose answer is not stored), a consensus job stores nothing and leaves
the vote to that task's final row (success or error), bounded by the image's deadline job, which votes whatever is
outstanding. And the vote's "is the stored consensus current?" agrees with the backfill's staleness rule.

The jobs are claimed at the instants the database gave them (`run_after`), never by waiting on a clock."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.protocol_trace import traced_requests
from tests.test_freshness import SAMPLES, detection, insert_answer
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.jobs import JobQueue
from windmill.roles.consensus import recompute_consensus
from windmill.roles.merger import merge_image
from windmill.roles.registry import Role, RoleContext, build_role
from windmill.settings import settings_from_mapping

SETTINGS = settings_from_mapping({"WORKER_ID": "consensus-waits"})
WORKER = "consensus-waits"
SAFE = {"predictions": [{"label": "safe", "confidence": 0.9}]}
TEXT = {"predictions": [{"text": "coffee", "confidence": 0.9}]}


@pytest.fixture
def image(conn: psycopg.Connection) -> int:
    add_paths(conn, [SAMPLES / "coffee.jpg"])
    return conn.execute("SELECT image_id FROM images").fetchone()[0]


@pytest.fixture
def jobs(pool: ConnectionPool) -> JobQueue:
    return JobQueue(pool)


@pytest.fixture
def role(database: Database, pool: ConnectionPool, jobs: JobQueue, catalog: Catalog) -> Iterator[Role]:
    """The consensus role as a worker runs it (its farm client is never called)."""
    with FarmClient(catalog) as farm:
        context = RoleContext(settings=SETTINGS, database=database, pool=pool, jobs=jobs, catalog=catalog,
                              worker_id=WORKER, farm=farm, images=ImageSource(SETTINGS))
        yield build_role("consensus", context)


def service_types(catalog: Catalog) -> dict[str, Any]:
    return {service.name: service.service_type for service in catalog.services}


def in_ledger(conn: psycopg.Connection, image: int, service: str) -> uuid.UUID:
    """A RabbitMQ task published and not answered yet (submit's ledger entry)."""
    task = uuid.uuid4()
    conn.execute("INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id) VALUES (%s, %s, %s, %s)",
                 (image, service, f"queue_{service}", task))
    return task


def answer(conn: psycopg.Connection, image: int, service: str, task: uuid.UUID, data: dict[str, Any],
           status: str = "success") -> int:
    """The task's final row, as a service worker stores it."""
    return conn.execute("INSERT INTO results (image_id, service, task_id, data, status, error_message) "
                        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING result_id",
                        (image, service, task, Jsonb(data), status,
                         None if status == "success" else "it failed")).fetchone()[0]


def consensus_jobs(conn: psycopg.Connection, image: int) -> list[tuple[str, str, Any]]:
    return conn.execute("SELECT dedupe_key, state::text, payload FROM jobs WHERE queue = 'consensus' "
                        "AND image_id = %s ORDER BY id", (image,)).fetchall()


def voted_on(conn: psycopg.Connection, image: int) -> list[int] | None:
    row = conn.execute("SELECT source_result_ids FROM consensus WHERE image_id = %s", (image,)).fetchone()
    return None if row is None else row[0]


def due(conn: psycopg.Connection, dedupe_key: str) -> datetime:
    """When the queued job of this key may run, as the database set it."""
    return conn.execute("SELECT run_after FROM jobs WHERE dedupe_key = %s AND state = 'queued'",
                        (dedupe_key,)).fetchone()[0]


def run_consensus(jobs: JobQueue, role: Role, now: datetime) -> int:
    """Claim and run the consensus jobs due at `now`, as a worker does, until none is left; how many ran."""
    ran = 0
    while claimed := jobs.claim(["consensus"], WORKER, 10, now=now):
        for job in claimed:
            role.handle(job)
        jobs.complete([job.id for job in claimed], WORKER, now=now)
        ran += len(claimed)
    return ran


def test_a_vote_waits_while_a_voter_task_is_in_the_ledger(conn: psycopg.Connection, image: int,
                                                          catalog: Catalog) -> None:
    in_ledger(conn, image, "ocr")
    insert_answer(conn, image, "nsfw2", SAFE)
    conn.execute("DELETE FROM jobs")
    assert recompute_consensus(conn, image, service_types(catalog), WORKER, {"image_id": image}) is None
    assert voted_on(conn, image) is None, "no vote while ocr's task is outstanding"
    deadline = conn.execute("SELECT payload, run_after - created_at = consensus_max_wait() FROM jobs "
                            "WHERE queue = 'consensus' AND state = 'queued' AND dedupe_key = %s",
                            (f"consensus-deadline:{image}",)).fetchall()
    assert deadline == [({"image_id": image, "deadline": True}, True)], "the deadline job bounds the wait"
    # A second put-off vote keeps the one deadline (and its time).
    assert recompute_consensus(conn, image, service_types(catalog), WORKER, {"image_id": image}) is None
    assert len(consensus_jobs(conn, image)) == 1


def test_a_task_of_a_service_that_does_not_vote_holds_nothing_back(conn: psycopg.Connection, image: int,
                                                                   catalog: Catalog) -> None:
    in_ledger(conn, image, "caption_score")  # not consensus_enabled
    insert_answer(conn, image, "nsfw2", SAFE)
    assert recompute_consensus(conn, image, service_types(catalog), WORKER, {"image_id": image}) is not None


def test_a_vote_waits_for_a_job_table_task_until_its_answer_is_stored(
        conn: psycopg.Connection, jobs: JobQueue, image: int, catalog: Catalog) -> None:
    task = uuid.uuid4()
    conn.execute("INSERT INTO jobs (queue, image_id, payload, dedupe_key) VALUES ('queue_ocr', %s, %s, %s)",
                 (image, Jsonb({"task_id": str(task), "image_id": image, "service_name": "ocr"}), f"ocr:{task}"))
    assert jobs.claim(["queue_ocr"], "ocr-worker", 1), "the ocr task is running"
    insert_answer(conn, image, "nsfw2", SAFE)
    assert recompute_consensus(conn, image, service_types(catalog), WORKER, {"image_id": image}) is None
    assert voted_on(conn, image) is None
    # Its answer is stored; its job stays 'running' until the worker completes it, and holds nothing back.
    ocr = answer(conn, image, "ocr", task, TEXT)
    assert conn.execute("SELECT state::text FROM jobs WHERE queue = 'queue_ocr'").fetchone() == ("running",)
    assert recompute_consensus(conn, image, service_types(catalog), WORKER, {"image_id": image}) is not None
    assert ocr in (voted_on(conn, image) or [])


@pytest.mark.parametrize("status", ["success", "error", "timeout"])
def test_the_vote_put_off_runs_after_the_last_voter_answer(
        conn: psycopg.Connection, jobs: JobQueue, role: Role, image: int, status: str) -> None:
    """A vote queued before a voter task was added (a resubmit) is put off by the vote itself, the safety net behind
    the triggers' gate (sql/0105). The last task's final row, whatever its status, queues the vote that was put off:
    it runs before the deadline, counts every answer and drops the deadline job (left queued, it would keep the image
    pending for nothing)."""
    nsfw2 = insert_answer(conn, image, "nsfw2", SAFE)  # no task outstanding: its vote is queued
    ocr_task = in_ledger(conn, image, "ocr")  # then resubmitted
    assert run_consensus(jobs, role, now=due(conn, f"consensus:{image}")) == 1
    assert voted_on(conn, image) is None, "put off while ocr's task is outstanding"
    deadline = due(conn, f"consensus-deadline:{image}")
    ocr = answer(conn, image, "ocr", ocr_task, TEXT, status)
    vote_due = due(conn, f"consensus:{image}")
    assert vote_due < deadline, "the final row's vote comes before the deadline"
    assert run_consensus(jobs, role, now=vote_due) == 1
    assert voted_on(conn, image) == sorted([nsfw2, ocr] if status == "success" else [nsfw2])
    assert run_consensus(jobs, role, now=deadline) == 0, "the deadline job is not needed any more"
    assert conn.execute("SELECT state::text, last_error FROM jobs WHERE dedupe_key = %s",
                        (f"consensus-deadline:{image}",)).fetchone() == (
        "done", "not needed: a later vote of the image was not put off")


def test_a_vote_is_two_round_trips_begin_with_its_read_and_its_store_with_commit(
        conn: psycopg.Connection, image: int, catalog: Catalog, tmp_path: Path) -> None:
    nsfw2 = insert_answer(conn, image, "nsfw2", SAFE)
    requests = traced_requests(conn, tmp_path / "trace", lambda: recompute_consensus(
        conn, image, service_types(catalog), WORKER, {"image_id": image}))
    assert len(requests) == 2, requests
    assert re.search(r"BEGIN.*lock_and_read_consensus_inputs", requests[0]), requests
    assert re.search(r"store_vote.*COMMIT", requests[1]), requests
    assert voted_on(conn, image) == [nsfw2]


def test_the_deadline_job_votes_with_a_task_still_outstanding(
        conn: psycopg.Connection, jobs: JobQueue, role: Role, image: int) -> None:
    in_ledger(conn, image, "ocr")  # its message is lost: no final row ever comes
    nsfw2 = insert_answer(conn, image, "nsfw2", SAFE)  # queues no vote, only the deadline job (sql/0105)
    assert [(key, state) for key, state, _ in consensus_jobs(conn, image)] == [
        (f"consensus-deadline:{image}", "queued")]
    assert run_consensus(jobs, role, now=due(conn, f"consensus-deadline:{image}")) == 1
    assert voted_on(conn, image) == [nsfw2], "the deadline job voted on the answers there are"
    assert [(key, state) for key, state, _ in consensus_jobs(conn, image)] == [
        (f"consensus-deadline:{image}", "done")]


def stale_consensus(conn: psycopg.Connection, image: int) -> bool:
    """The backfill's rule (stale_products, sql/0014) for the image."""
    return conn.execute("SELECT EXISTS (SELECT 1 FROM stale_products(%s - 1, %s) WHERE queue = 'consensus')",
                        (image, image)).fetchone()[0]


def test_the_vote_and_the_backfill_agree_on_what_is_current(pool: ConnectionPool, conn: psycopg.Connection,
                                                            image: int, catalog: Catalog) -> None:
    """What a consensus records has two readers: the vote (ConsensusInputs.recorded(), compared with the stored
    record) and the backfill (stale_products). After each change of what the vote reads, both must call the
    consensus stale; after the vote, both current. A vote that stores nothing leaves the consensus untouched."""
    types = service_types(catalog)

    def vote_stores(worker: str) -> bool:
        return recompute_consensus(conn, image, types, worker) is not None

    insert_answer(conn, image, "yolov8", detection("person", "🧑", 10))
    changes = [
        lambda: insert_answer(conn, image, "ocr", TEXT),  # a new answer
        lambda: insert_answer(conn, image, "yolov8", detection("person", "🧑", 14)),  # one superseding another
        lambda: merge_with(pool, image),  # the box set
        lambda: conn.execute("INSERT INTO postprocessing (image_id, merged_box_id, service, data, status) "
                             "SELECT image_id, merged_id, 'face', '{}', 'empty' FROM merged_boxes "
                             "WHERE image_id = %s", (image,)),  # a face row
        lambda: conn.execute("DELETE FROM postprocessing WHERE image_id = %s AND service = 'face'", (image,)),
    ]
    assert stale_consensus(conn, image) and vote_stores("first")
    assert not stale_consensus(conn, image) and not vote_stores("unchanged")
    for nth, change in enumerate(changes):
        change()
        assert stale_consensus(conn, image), f"change {nth}: the backfill sees it"
        assert vote_stores(f"change {nth}"), f"change {nth}: the vote sees it"
        assert not stale_consensus(conn, image) and not vote_stores("again"), f"change {nth}: both current"
    # The votes that found nothing changed stored nothing.
    assert conn.execute("SELECT worker_id FROM consensus").fetchone() == (f"change {len(changes) - 1}",)


def merge_with(pool: ConnectionPool, image: int) -> None:
    with pool.connection() as worker_conn:
        merge_image(worker_conn, image, SETTINGS.harmony, WORKER)
