"""The job contract has one home, SQL (sql/0012_job_contract.sql): what each enqueue function queues, the person
rule of postprocessing, and the Python constants naming the queues the roles consume, checked against it."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.test_monitoring import add_box, add_image
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.emoji import PERSON
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.jobs import JobQueue
from windmill.jobs.queues import (
    CAPTION_SCORE_QUEUE,
    CONSENSUS_QUEUE,
    MERGE_QUEUE,
    POSTPROCESS_QUEUES,
    SCHEDULER_QUEUE,
)
from windmill.roles.registry import RoleContext, build_role
from windmill.settings import settings_from_mapping


def queued(conn: psycopg.Connection) -> list[tuple[str, object, object, str, bool, int]]:
    return conn.execute("""SELECT queue, image_id, payload, dedupe_key, run_after > now(), max_attempts
                             FROM jobs WHERE state = 'queued' ORDER BY id""").fetchall()


def test_each_enqueue_function_queues_its_job(conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    conn.execute("DELETE FROM jobs")
    conn.execute("SELECT enqueue_merge(%s), enqueue_consensus(%s), enqueue_caption_score(%s, 'ollama')",
                 (image, image, image))
    conn.execute("SELECT enqueue(scheduler_tick_job(interval '1 minute'))")
    assert queued(conn) == [
        (MERGE_QUEUE, image, {"image_id": image}, f"merge:{image}", True, 5),  # the coalescing window
        (CONSENSUS_QUEUE, image, {"image_id": image}, f"consensus:{image}", True, 5),  # the debounce
        (CAPTION_SCORE_QUEUE, image, {"image_id": image, "service": "ollama"}, f"caption_score:ollama:{image}",
         False, 5),
        (SCHEDULER_QUEUE, None, {}, "scheduler:tick", True, 1),
    ]


def test_a_transaction_enqueues_a_job_once_and_again_only_when_its_job_is_gone(conn: psycopg.Connection) -> None:
    """sql/0080: the second enqueue of a key in a transaction takes the short path while the job it covered still
    waits; once that job is gone (claimed, deleted) the full path queues a new one."""
    image = add_image(conn, "a.jpg")
    conn.execute("DELETE FROM jobs")
    with conn.transaction():
        first = conn.execute("SELECT enqueue_consensus(%s)", (image,)).fetchone()[0]
        assert conn.execute("SELECT current_setting('windmill.enqueue_covered', true), "
                            "current_setting('windmill.enqueue_covered_id', true)").fetchone() == (
            f"{CONSENSUS_QUEUE} consensus:{image}", str(first))
        assert conn.execute("SELECT enqueue_consensus(%s)", (image,)).fetchone()[0] is None
        conn.execute("DELETE FROM jobs WHERE id = %s", (first,))
        second = conn.execute("SELECT enqueue_consensus(%s)", (image,)).fetchone()[0]
        assert second is not None and second != first
    assert [row[3] for row in queued(conn)] == [f"consensus:{image}"]
    assert conn.execute("SELECT current_setting('windmill.enqueue_covered', true)").fetchone()[0] in ("", None)


@pytest.mark.parametrize(("emoji", "crop_key", "services"), [
    (PERSON, f"{PERSON}:0,0,9,9", ["colors", "face", "pose"]),
    ("", "person:0,0,9,9", ["colors", "face", "pose"]),  # no emoji: the class is the label
    ("🐕", "🐕:0,0,9,9", ["colors"]),
])
def test_postprocessing_is_colors_for_every_box_and_face_and_pose_for_people(
        conn: psycopg.Connection, emoji: str, crop_key: str, services: list[str]) -> None:
    image = add_image(conn, "a.jpg")
    box = add_box(conn, image, emoji, crop_key)
    conn.execute("DELETE FROM jobs")
    assert conn.execute("SELECT enqueue_postprocessing(%s)", (box,)).fetchone() == (len(services),)
    assert [row[:4] for row in queued(conn)] == [
        (POSTPROCESS_QUEUES[service], image, {"image_id": image}, f"{service}:image:{image}")
        for service in services]
    assert conn.execute("SELECT enqueue_postprocessing(%s)", (box,)).fetchone() == (0,)  # waiting already
    # A second box of the image is covered by the image's jobs (sql/0115): it adds only what it needs and they lack.
    other = add_box(conn, image, PERSON, f"{PERSON}:20,0,9,9")
    assert conn.execute("SELECT enqueue_postprocessing(%s)", (other,)).fetchone() == (3 - len(services),)
    assert [row[3] for row in queued(conn) if row[0].startswith("postprocess_")] == [
        f"{service}:image:{image}" for service in ("colors", "face", "pose")]


def test_the_roles_consume_the_queues_sql_fills(database: Database, pool: ConnectionPool, catalog: Catalog) -> None:
    settings = settings_from_mapping({"WORKER_ID": "contract"})
    with FarmClient(catalog) as farm:
        context = RoleContext(settings=settings, database=database, pool=pool, jobs=JobQueue(pool), catalog=catalog,
                              worker_id="contract", farm=farm, images=ImageSource(settings))
        consumed = {name: build_role(name, context).queues for name in ("merger", "consensus", "caption_score",
                                                                         "postprocess", "scheduler")}
    with pool.connection() as conn:
        image = add_image(conn, "a.jpg")
        box = add_box(conn, image, PERSON, f"{PERSON}:0,0,9,9")
        conn.execute("DELETE FROM jobs")
        conn.execute("SELECT enqueue_merge(%s), enqueue_consensus(%s), enqueue_caption_score(%s, 'blip'), "
                     "enqueue_postprocessing(%s), enqueue(scheduler_tick_job(%s))",
                     (image, image, image, box, timedelta(0)))
        filled = {row[0] for row in conn.execute("SELECT DISTINCT queue FROM jobs")}
    assert consumed == {"merger": (MERGE_QUEUE,), "consensus": (CONSENSUS_QUEUE,),
                        "caption_score": (CAPTION_SCORE_QUEUE,), "postprocess": tuple(POSTPROCESS_QUEUES.values()),
                        "scheduler": (SCHEDULER_QUEUE,)}
    assert filled == {queue for queues in consumed.values() for queue in queues}

