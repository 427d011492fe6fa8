"""service_progress's counters (sql/0060): the answers' trigger notes each answer, the fold (periodic pass, status)
turns the notes into counts that equal a count over every answer — under concurrent writers of one pair, batched
inserts, re-answers replacing errors and deleted images; `status --recount` rebuilds them; status never reads every
answer."""

from __future__ import annotations

import contextlib
import random
import threading
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.conftest import wait_until
from tests.test_monitoring import add_image, add_result, seeded  # noqa: F401 (a fixture)
from windmill.db.connect import Database
from windmill.monitor import fold_answer_counts, recount_answers

SERVICES = ["blip", "ocr", "yolov8"]


def counted(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    """(done, failed) per service as service_progress shows them after a fold, services with answers only."""
    fold_answer_counts(conn)
    rows = conn.execute("SELECT service, done, failed FROM service_progress").fetchall()
    return {service: (done, failed) for service, done, failed in rows if done or failed}


def recounted(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    """The same counted the old way, over every answer (sql/0007's definitions)."""
    rows = conn.execute("""
        SELECT s.name,
               (SELECT count(DISTINCT r.image_id) FROM results r WHERE r.service = s.name AND r.status = 'success'),
               (SELECT count(DISTINCT e.image_id) FROM results e
                 WHERE e.service = s.name AND e.status IN ('error', 'timeout')
                   AND NOT EXISTS (SELECT 1 FROM results later
                                    WHERE later.image_id = e.image_id AND later.service = e.service
                                      AND (later.result_created, later.result_id) > (e.result_created, e.result_id)))
          FROM services s""").fetchall()
    return {service: (done, failed) for service, done, failed in rows if done or failed}


INSERT_ANSWER = ("INSERT INTO results (image_id, service, task_id, data, status, error_message) "
                 "VALUES (%s, %s, %s, '{}', %s, %s)")


def insert_answer(conn: psycopg.Connection, image_id: int, service: str, status: str) -> None:
    conn.execute(INSERT_ANSWER,
                 (image_id, service, uuid.uuid4(), status, None if status == "success" else "failed"))


def test_answers_errors_and_reanswers_are_counted_as_they_arrive(conn: psycopg.Connection) -> None:
    a, b = add_image(conn, "a.jpg"), add_image(conn, "b.jpg")
    add_result(conn, a, "blip", "error", seconds_ago=30)
    assert counted(conn) == {"blip": (0, 1)}
    add_result(conn, a, "blip")  # the retry succeeded: no longer failed
    add_result(conn, a, "blip")  # a second success of the pair: still one image
    add_result(conn, b, "blip", "timeout")
    add_result(conn, b, "ocr", "error", seconds_ago=60)
    add_result(conn, b, "ocr", "success", seconds_ago=120)  # older than the error: the error stays the latest
    assert counted(conn) == recounted(conn) == {"blip": (1, 1), "ocr": (1, 1)}
    assert conn.execute("SELECT count(*) FROM service_answer_count_deltas").fetchone()[0] == 0  # folded
    assert fold_answer_counts(conn) == 0
    assert counted(conn) == recounted(conn)
    conn.execute("DELETE FROM images WHERE image_id = %s", (b,))  # its answers go by cascade
    assert counted(conn) == recounted(conn) == {"blip": (1, 0)}


def test_a_batched_insert_of_one_pair_counts_the_image_once(conn: psycopg.Connection) -> None:
    a = add_image(conn, "a.jpg")
    conn.execute("INSERT INTO results (image_id, service, task_id, data, status) "
                 "SELECT %s, 'blip', gen_random_uuid(), '{}', 'success' FROM generate_series(1, 3)", (a,))
    assert counted(conn) == recounted(conn) == {"blip": (1, 0)}


def test_concurrent_answers_of_one_pair_count_the_image_once(database: Database, conn: psycopg.Connection) -> None:
    """Two answers of one pair in flight at once, folds before, between and after their commits: one image done,
    and the later error is the pair's latest (a fold counting each answer alone would say 2 done)."""
    a = add_image(conn, "a.jpg")
    add_result(conn, a, "clip")
    with database.connect(autocommit=False) as first, database.connect(autocommit=False) as second:
        insert_answer(first, a, "ocr", "success")
        # The second voter answer of the image waits in its trigger, at the image's vote gate (sql/0105), until the
        # first commits: its row is written, its count's delta and its follow-up jobs come after the gate.
        storing = threading.Thread(target=insert_answer, args=(second, a, "ocr", "success"))
        storing.start()
        wait_until(lambda: conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                                        (second.info.backend_pid,)).fetchone()[0],
                   message="the second answer to wait at the gate")
        assert counted(conn) == {"clip": (1, 0)}  # nothing of theirs is committed yet
        first.commit()
        storing.join(30)
        assert not storing.is_alive()
        assert counted(conn) == {"clip": (1, 0), "ocr": (1, 0)}
        insert_answer(second, a, "ocr", "timeout")
        second.commit()
    assert counted(conn) == recounted(conn) == {"clip": (1, 0), "ocr": (1, 1)}


def answer(conn: psycopg.Connection, sql: str, params: tuple[Any, ...]) -> None:
    """An answer for an image deleted meanwhile is refused, as in production."""
    with contextlib.suppress(psycopg.errors.ForeignKeyViolation):
        conn.execute(sql, params)


def mixed_workload(database: Database, images: list[int], seed: int, stop: threading.Event,
                   errors: list[BaseException]) -> None:
    """Answers of every kind on few pairs (so that writers meet), now and then a batch, a fold or a deletion."""
    chooser = random.Random(seed)
    try:
        with database.connect() as conn:
            for _ in range(150):
                if stop.is_set():
                    return
                image, service = chooser.choice(images), chooser.choice(SERVICES)
                action = chooser.random()
                if action < 0.05:
                    fold_answer_counts(conn)
                elif action < 0.08:
                    conn.execute("DELETE FROM results WHERE image_id = %s AND service = %s AND status <> 'success'",
                                 (image, service))
                elif action < 0.2:  # a worker's batch: several rows, one statement
                    batch = [(chooser.choice(SERVICES), chooser.choice(["success", "error", "timeout"]))
                             for _ in range(3)]
                    answer(
                        conn, "INSERT INTO results (image_id, service, task_id, data, status, error_message) "
                        "SELECT %s, service, gen_random_uuid(), '{}', status, "
                        "       CASE WHEN status <> 'success' THEN 'failed' END "
                        "  FROM unnest(%s::text[], %s::text[]) AS batch (service, status)",
                        (image, [s for s, _ in batch], [t for _, t in batch]))
                else:
                    status = chooser.choice(["success", "error", "error", "timeout"])
                    answer(conn, INSERT_ANSWER,
                           (image, service, uuid.uuid4(), status, None if status == "success" else "failed"))
    except BaseException as error:  # reported by the test
        errors.append(error)
        stop.set()


def test_counters_equal_a_recount_after_a_concurrent_mixed_workload(database: Database,
                                                                   conn: psycopg.Connection) -> None:
    images = [add_image(conn, f"{n}.jpg") for n in range(6)]
    stop, errors = threading.Event(), []
    writers = [threading.Thread(target=mixed_workload, args=(database, images, seed, stop, errors))
               for seed in range(6)]
    for writer in writers:
        writer.start()
    conn.execute("DELETE FROM images WHERE image_id = %s", (images[0],))  # meanwhile, an image goes
    for writer in writers:
        writer.join(120)
    assert not errors, errors
    assert counted(conn) == recounted(conn)
    fold_answer_counts(conn)
    assert counted(conn) == recounted(conn)


def test_recount_rebuilds_wrong_counters(conn: psycopg.Connection, run: Any) -> None:
    a = add_image(conn, "a.jpg")
    add_result(conn, a, "blip")
    add_result(conn, a, "ocr", "error")
    conn.execute("INSERT INTO service_answer_counts (service, done, failed) VALUES ('blip', 41, 3) "
                 "ON CONFLICT (service) DO UPDATE SET done = 41, failed = 3")
    assert counted(conn)["blip"] != (1, 0)
    assert recount_answers(conn) == 2
    assert counted(conn) == recounted(conn) == {"blip": (1, 0), "ocr": (0, 1)}
    conn.execute("UPDATE service_answer_counts SET done = 7")
    result = run("status", "--recount", "--json")
    assert result.exit_code == 0, result.output
    assert counted(conn) == recounted(conn)


def test_status_reads_no_answer_beyond_the_last_minute(conn: psycopg.Connection, seeded: None) -> None:  # noqa: F811
    """Status reads answers twice per service: the last minute's successes (an index range as long as the rate) and
    the newest success (one index entry, read backwards under a Limit). Never every answer, nor the last hour's."""
    conn.execute("UPDATE results SET result_created = now() - interval '2 days' WHERE result_id % 10 <> 0")
    conn.execute("ANALYZE results")
    [[plan]] = conn.execute("EXPLAIN (FORMAT JSON) SELECT * FROM service_progress").fetchall()
    reads: list[tuple[dict[str, Any], str]] = []

    def walk(node: dict[str, Any], parent: str) -> None:
        if node.get("Relation Name") == "results":
            reads.append((node, parent))
        for child in node.get("Plans", []):
            walk(child, node["Node Type"])

    walk(plan[0]["Plan"], "")
    assert reads, "the rates read the answers of the last minute"
    for node, parent in reads:
        condition = node.get("Index Cond", node.get("Recheck Cond", ""))
        newest = parent == "Limit" and node.get("Scan Direction") == "Backward"
        assert newest or "'00:01:00'" in condition, (parent, node)


def test_rates_come_from_the_folded_minutes(conn: psycopg.Connection) -> None:
    a, b = add_image(conn, "a.jpg"), add_image(conn, "b.jpg")
    add_result(conn, a, "blip")
    add_result(conn, b, "blip", seconds_ago=1800)
    add_result(conn, a, "ocr", seconds_ago=2 * 3600)  # older than an hour: no rate
    rates = ("SELECT service, rate_1m, rate_1h, last_success_at FROM service_progress "
             "WHERE service IN ('blip', 'ocr') ORDER BY service")
    assert fold_answer_counts(conn) == 3
    folded = conn.execute(rates).fetchall()
    assert [(rate_1m, float(rate_1h)) for _, rate_1m, rate_1h, _ in folded] == [(1, round(2 / 60, 2)), (0, 0.0)]
    assert folded[1][3] is not None  # the newest success, however old
    recount_answers(conn)
    assert conn.execute(rates).fetchall() == folded
    conn.execute("DELETE FROM images WHERE image_id = %s", (b,))
    fold_answer_counts(conn)
    assert float(conn.execute(rates).fetchone()[2]) == round(1 / 60, 2)


def test_status_totals_count_small_tables(conn: psycopg.Connection) -> None:
    add_image(conn, "a.jpg")
    with conn.cursor(row_factory=dict_row) as cursor:
        assert cursor.execute("SELECT table_rows('images') AS n").fetchone()["n"] == 1
