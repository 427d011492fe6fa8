"""A merge's follow-up jobs (sql/0102, 0103): the postprocessing of its new boxes is queued in one INSERT, without a
call of enqueue() per job, while a box that already has a job waiting still has it locked; the consensus trigger
that fires at commit for every box row goes through enqueue() once per transaction, and again only when the job it
covered is gone.

How many times enqueue() ran is read from pg_stat_xact_user_functions: PostgreSQL's own count of PL/pgSQL calls
(track_functions = 'pl', set for the test's session), so the count needs no hook in the functions. Its figures also
hold the calls of earlier transactions whose statistics the backend has not flushed yet (it flushes between
transactions, at most once a second), never during a transaction: each test reads the difference across a
transaction of its own."""

from __future__ import annotations

import random
import string

import psycopg
import pytest

from tests.test_freshness import detection, insert_answer
from tests.test_monitoring import add_box, add_image
from windmill.db.connect import Database
from windmill.emoji import PERSON
from windmill.jobs.queues import CONSENSUS_QUEUE, POSTPROCESS_QUEUES
from windmill.roles.merger import merge_image
from windmill.settings import settings_from_mapping

SETTINGS = settings_from_mapping({"WORKER_ID": "follow-up-test"})


@pytest.fixture
def counted(conn: psycopg.Connection) -> psycopg.Connection:
    """The test's connection, counting its PL/pgSQL calls per transaction (a superuser setting: the tests' own
    cluster)."""
    conn.execute("SET track_functions = 'pl'")
    return conn


def calls(conn: psycopg.Connection, function: str) -> int:
    """The function's PL/pgSQL calls not flushed to the statistics yet: this transaction's, plus some before it."""
    row = conn.execute("SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = %s", (function,)).fetchone()
    return 0 if row is None else row[0]


COUNTED = ("enqueue", "enqueue_boxes_postprocessing", "enqueue_consensus_for_image")


def calls_since(conn: psycopg.Connection, before: dict[str, int]) -> dict[str, int]:
    return {function: calls(conn, function) - before[function] for function in COUNTED}


def postprocess_jobs(conn: psycopg.Connection) -> list[tuple[str, int, dict[str, int], str]]:
    return conn.execute("SELECT queue, image_id, payload, dedupe_key FROM jobs "
                        "WHERE state = 'queued' AND queue LIKE 'postprocess\\_%%' ORDER BY id").fetchall()


def answered_image(conn: psycopg.Connection) -> int:
    """An image two detectors answered: two people and a dog, apart, so three boxes."""
    image = add_image(conn, "street.jpg")
    for detector in ("yolov8", "rtdetr"):
        insert_answer(conn, image, detector, {"predictions": [
            *detection("person", PERSON, 10)["predictions"], *detection("person", PERSON, 200)["predictions"],
            *detection("dog", "🐕", 400)["predictions"]]})
    conn.execute("DELETE FROM jobs")
    return image


def test_a_merge_queues_the_postprocessing_of_its_new_boxes_in_one_insert(counted: psycopg.Connection) -> None:
    image = answered_image(counted)
    with counted.transaction():  # merge_image's transaction becomes a savepoint: the counts stay readable
        before = {function: calls(counted, function) for function in COUNTED}
        outcome = merge_image(counted, image, SETTINGS.harmony, "follow-up-test")
        # No enqueue() per job: the new boxes' jobs are one INSERT. (The consensus trigger has not fired yet.)
        assert calls_since(counted, before) == {"enqueue": 0, "enqueue_boxes_postprocessing": 1,
                                                "enqueue_consensus_for_image": 0}
    boxes = counted.execute("SELECT merged_id, merged_data->>'emoji' FROM merged_boxes ORDER BY merged_id").fetchall()
    assert [box for box, _ in boxes] == outcome.inserted and len(boxes) == 3
    # A job per image and service (sql/0115): colors for every box, face and pose for the people.
    assert sum(emoji == PERSON for _, emoji in boxes) == 2
    assert postprocess_jobs(counted) == [
        (POSTPROCESS_QUEUES[service], image, {"image_id": image}, f"{service}:image:{image}")
        for service in ("colors", "face", "pose")]


def test_the_postprocessing_of_an_old_box_locks_the_job_already_waiting(
        database: Database, conn: psycopg.Connection) -> None:
    """enqueue_postprocessing(box) for a box of any age: a job already waiting is locked as enqueue() locks it
    (sql/0012), so no claim takes it before this transaction commits; the jobs missing are queued."""
    image = add_image(conn, "a.jpg")
    box = add_box(conn, image, PERSON, f"{PERSON}:0,0,9,9")
    conn.execute("DELETE FROM jobs")
    conn.execute("SELECT enqueue(postprocess_job(%s, %s, 'colors'))", (box, image))
    claim = "SELECT dedupe_key FROM jobs WHERE state = 'queued' FOR UPDATE SKIP LOCKED"
    with database.connect() as claimer:
        assert claimer.execute(claim).fetchall() == [(f"colors:image:{image}",)]
        with conn.transaction():
            assert conn.execute("SELECT enqueue_postprocessing(%s)", (box,)).fetchone() == (2,)  # face and pose
            assert claimer.execute(claim).fetchall() == [], "the waiting colors job is locked until we commit"
        assert sorted(row[0] for row in claimer.execute(claim)) == [
            f"colors:image:{image}", f"face:image:{image}", f"pose:image:{image}"]
    assert conn.execute("SELECT enqueue_postprocessing(%s)", (box,)).fetchone() == (0,)
    assert len(postprocess_jobs(conn)) == 3


def test_a_merges_consensus_trigger_goes_through_enqueue_once(counted: psycopg.Connection) -> None:
    image = answered_image(counted)
    with counted.transaction():
        merge_image(counted, image, SETTINGS.harmony, "follow-up-test")
        before = {function: calls(counted, function) for function in COUNTED}
        counted.execute("SET CONSTRAINTS ALL IMMEDIATE")  # the deferred triggers fire now, inside the transaction
        boxes = counted.execute("SELECT count(*) FROM merged_boxes").fetchone()[0]
        # The first trigger call queues through enqueue(); the others find the job covered and return at once.
        assert calls_since(counted, before) == {"enqueue": 1, "enqueue_boxes_postprocessing": 0,
                                                "enqueue_consensus_for_image": boxes}
        assert boxes == 3
    assert counted.execute("SELECT queue, dedupe_key FROM jobs WHERE queue = %s", (CONSENSUS_QUEUE,)).fetchall() == [
        (CONSENSUS_QUEUE, f"consensus:{image}")]


def test_the_consensus_trigger_queues_again_when_the_job_it_covered_is_gone(conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    conn.execute("DELETE FROM jobs")
    with conn.transaction():
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        add_box(conn, image, "🐕", "🐕:0,0,9,9")
        covered = conn.execute("SELECT id FROM jobs WHERE queue = %s", (CONSENSUS_QUEUE,)).fetchone()[0]
        conn.execute("DELETE FROM jobs WHERE id = %s", (covered,))  # claimed and done, say
        add_box(conn, image, "🐕", "🐕:20,0,9,9")
    assert conn.execute("SELECT dedupe_key FROM jobs WHERE queue = %s", (CONSENSUS_QUEUE,)).fetchall() == [
        (f"consensus:{image}",)]


def test_the_backfill_finds_a_merges_postprocessing_queued_and_adds_none(conn: psycopg.Connection) -> None:
    """The jobs the one INSERT queued are the contract's jobs (queue, key): the backfill's job_pending() sees them."""
    image = answered_image(conn)
    merge_image(conn, image, SETTINGS.harmony, "follow-up-test")
    before = postprocess_jobs(conn)
    queued = dict(conn.execute("SELECT queue, queued FROM backfill()").fetchall())
    assert not any(queue.startswith("postprocess_") for queue in queued), queued
    assert postprocess_jobs(conn) == before and len(before) == 3


def test_a_class_too_long_for_the_key_index_merges_and_merges_again_the_same(conn: psycopg.Connection) -> None:
    """A label of thousands of characters without an emoji is the box's class (answers stored before normalisation cut
    labels to 200 characters): spelt out in the crop key, it overflowed the key's index row on every attempt."""
    rng = random.Random(4)  # letters PostgreSQL cannot compress much: a repetitive key would fit
    label = "".join(rng.choice(string.ascii_letters) for _ in range(3000))
    image = add_image(conn, "odd.jpg")
    for detector in ("yolov8", "rtdetr"):
        insert_answer(conn, image, detector, {"predictions": [
            {"label": label, "emoji": "", "confidence": 0.9, "bbox": {"x": 10, "y": 10, "width": 100, "height": 90}},
            {"label": label[:-1] + "!", "emoji": "", "confidence": 0.8,
             "bbox": {"x": 10, "y": 10, "width": 100, "height": 90}}]})
    conn.execute("DELETE FROM jobs")
    merge_image(conn, image, SETTINGS.harmony, "follow-up-test")
    keys = conn.execute("SELECT merged_id, crop_key FROM merged_boxes ORDER BY merged_id").fetchall()
    assert len(keys) == 2 and len({key for _, key in keys}) == 2, keys  # two classes alike but for the last letter
    assert all(len(key) < 300 and key.startswith(label.lower()[:100]) for _, key in keys), keys  # a label class
    outcome = merge_image(conn, image, SETTINGS.harmony, "follow-up-test")
    assert (outcome.kept, outcome.inserted, outcome.deleted) == (2, [], 0)
    assert conn.execute("SELECT merged_id, crop_key FROM merged_boxes ORDER BY merged_id").fetchall() == keys
