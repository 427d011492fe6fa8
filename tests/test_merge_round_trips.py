"""A merge in two statements (sql/0108): the lock and both reads in one round trip with BEGIN, every write in another
with COMMIT (windmill/db/pipelined.py); a merge that waited for the image's lock reads what the lock's holder
committed (the reads take their snapshots after the lock was granted); enqueue_boxes_postprocessing runs on its
generic plans.

Round trips are counted from libpq's own trace of the connection (tests/protocol_trace.py)."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import psycopg
import pytest

from tests.conftest import wait_until
from tests.protocol_trace import traced_requests
from tests.test_freshness import detection, insert_answer
from tests.test_merge_follow_ups import answered_image
from tests.test_monitoring import add_image
from tests.test_vote_gate import waits_for_a_lock
from windmill.db.connect import Database
from windmill.emoji import PERSON
from windmill.roles.merger import MergeOutcome, merge_image
from windmill.settings import settings_from_mapping

SETTINGS = settings_from_mapping({"WORKER_ID": "round-trips-test"})
WORKER = "round-trips-test"


@pytest.mark.parametrize("state", ["first merge: new boxes", "merge again: boxes kept", "a box gone, one changed"])
def test_a_merge_is_two_statements_in_two_round_trips_with_begin_and_commit(conn: psycopg.Connection, tmp_path: Path,
                                                              state: str) -> None:
    image = answered_image(conn)
    if state != "first merge: new boxes":
        merge_image(conn, image, SETTINGS.harmony, WORKER)
    if state == "a box gone, one changed":
        for detector in ("yolov8", "rtdetr"):  # the dog gone, a person nudged
            insert_answer(conn, image, detector, {"predictions": [
                *detection("person", PERSON, 13)["predictions"], *detection("person", PERSON, 200)["predictions"]]})
    outcomes: list[MergeOutcome] = []
    requests = traced_requests(conn, tmp_path / "trace",
                               lambda: outcomes.append(merge_image(conn, image, SETTINGS.harmony, WORKER)))
    assert len(requests) == 2, requests
    assert re.search(r"BEGIN.*merge_inputs", requests[0]), requests
    assert re.search(r"store_merge.*COMMIT", requests[1]), requests
    # The writes did happen in that one statement.
    (outcome,) = outcomes
    assert (len(outcome.inserted), outcome.kept, outcome.deleted) == {
        "first merge: new boxes": (3, 0, 0), "merge again: boxes kept": (0, 3, 0),
        "a box gone, one changed": (0, 2, 1)}[state]
    assert conn.execute("SELECT count(*) FROM merged_boxes WHERE image_id = %s", (image,)).fetchone()[0] == (
        2 if state == "a box gone, one changed" else 3)


def test_a_merge_that_waited_for_the_lock_reads_what_the_holder_committed(database: Database,
                                                                          conn: psycopg.Connection) -> None:
    """The holder, another merge of the image, stores its boxes and also commits a new answer while the second merge
    waits for the lock. The second must see both: it keeps the holder's boxes (read after the lock) and records the
    new answer among its sources. Reading on a snapshot taken before the wait, it would find no stored boxes and insert
    them again (the image's crop keys are unique), and would not have read the new answer."""
    image = answered_image(conn)
    outcome: list[MergeOutcome | BaseException] = []

    def second_merge(waiter: psycopg.Connection) -> None:
        try:
            outcome.append(merge_image(waiter, image, SETTINGS.harmony, WORKER))
        except BaseException as error:  # the assertion below shows it
            outcome.append(error)

    with database.connect() as holder, database.connect() as waiter:
        waiter_pid = waiter.execute("SELECT pg_backend_pid()").fetchone()[0]
        with holder.transaction():
            first = merge_image(holder, image, SETTINGS.harmony, WORKER)  # a savepoint: the lock is held to commit
            late = insert_answer(holder, image, "detectron2", {"predictions": [
                *detection("person", PERSON, 10)["predictions"], *detection("person", PERSON, 200)["predictions"],
                *detection("dog", "🐕", 400)["predictions"]]})
            thread = threading.Thread(target=second_merge, args=(waiter,))
            thread.start()
            wait_until(lambda: waits_for_a_lock(conn, waiter_pid), message="the second merge waiting for the lock")
        thread.join(timeout=30)
    assert len(first.inserted) == 3
    assert len(outcome) == 1 and isinstance(outcome[0], MergeOutcome), outcome
    assert (outcome[0].inserted, outcome[0].kept, outcome[0].deleted) == ([], 3, 0)
    sources = conn.execute("SELECT source_result_ids FROM merged_images WHERE image_id = %s", (image,)).fetchone()[0]
    assert late in sources
    assert conn.execute("SELECT array_agg(merged_id ORDER BY merged_id) FROM merged_boxes WHERE image_id = %s",
                        (image,)).fetchone()[0] == first.inserted


def generic_plan(conn: psycopg.Connection, statement: str, types: str) -> str:
    """The plan PostgreSQL caches for the statement with its parameters unknown (a PL/pgSQL statement's variables
    are such parameters)."""
    conn.execute("SET plan_cache_mode = force_generic_plan")
    conn.execute(f"PREPARE planned({types}) AS {statement}")
    try:
        arguments = ", ".join("NULL" for _ in types.split(","))
        return "\n".join(row[0] for row in conn.execute(f"EXPLAIN (COSTS OFF) EXECUTE planned({arguments})"))
    finally:
        conn.execute("DEALLOCATE planned")
        conn.execute("RESET plan_cache_mode")


def test_enqueue_boxes_postprocessing_runs_on_its_generic_plans(conn: psycopg.Connection) -> None:
    """sql/0108 tells the function to use its generic plans; they read merged_boxes by id, never the whole table
    (a big one, analyzed, and the empty one a session may first plan on)."""
    assert conn.execute("SELECT proconfig FROM pg_proc WHERE proname = 'enqueue_boxes_postprocessing'").fetchone()[0] \
        == ["plan_cache_mode=force_generic_plan"]
    read_boxes = ("SELECT array_agg(postprocess_job(mb.merged_id, mb.image_id, s.service) ORDER BY b.position, "
                  "s.position) FROM unnest($1) WITH ORDINALITY AS b(merged_id, position) "
                  "CROSS JOIN LATERAL (SELECT m.merged_id, m.image_id, m.merged_data, m.crop_key "
                  "FROM merged_boxes m WHERE m.merged_id = b.merged_id OFFSET 0) AS mb "
                  "CROSS JOIN LATERAL unnest(box_postprocessing(mb.merged_data, mb.crop_key)) "
                  "WITH ORDINALITY AS s(service, position)")
    for rows in (0, 20_000):
        if rows:
            image = add_image(conn, "many.jpg")
            conn.execute("INSERT INTO merged_boxes (image_id, source_result_ids, merged_data, crop_key) "
                         "SELECT %s, '{1}', '{}', n::text FROM generate_series(1, %s) AS n", (image, rows))
            conn.execute("ANALYZE merged_boxes")
        plan = generic_plan(conn, read_boxes, "bigint[]")
        assert "Index Scan using merged_boxes_pkey" in plan and "Seq Scan" not in plan, plan
