"""postprocessing_progress's counters (sql/0121): status once showed face, pose and the caption scorer at 0 done
however many boxes they had answered. A statement trigger notes what each statement stored or deleted, the fold
(periodic pass, status) turns the notes into counts that equal a count over every postprocessing row — through
batched inserts, re-runs that store nothing, boxes replaced by a merge, caption scores replaced, images deleted and
concurrent writers; `status --recount` rebuilds them."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from tests.test_monitoring import add_box, add_image, add_job, add_postprocessing
from windmill.db.connect import Database
from windmill.monitor import collect_status, fold_answer_counts, format_status, recount_answers


def counted(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    """(done, failed) per service as postprocessing_progress shows them after a fold, services with rows only."""
    fold_answer_counts(conn)
    rows = conn.execute("SELECT service, done, failed FROM postprocessing_progress").fetchall()
    return {service: (done, failed) for service, done, failed in rows if done or failed}


def recounted(conn: psycopg.Connection) -> dict[str, tuple[int, int]]:
    """The same, counted over every postprocessing row."""
    rows = conn.execute("""
        SELECT CASE WHEN service LIKE 'caption\\_score\\_%' THEN 'caption_score' ELSE service END,
               count(*) FILTER (WHERE status IN ('success', 'empty')),
               count(*) FILTER (WHERE status IN ('error', 'timeout'))
          FROM postprocessing GROUP BY 1""").fetchall()
    return {service: (done, failed) for service, done, failed in rows if done or failed}


def store_rows(conn: psycopg.Connection, image_id: int, boxes: list[int], service: str, statuses: list[str]) -> None:
    """A job's rows in one statement, as the postprocess role stores them (insert_postprocessing_rows)."""
    conn.execute("""INSERT INTO postprocessing (image_id, merged_box_id, service, data, status)
                    SELECT %s, box, %s, '{}', status FROM unnest(%s::bigint[], %s::text[]) AS b (box, status)
                    ON CONFLICT (merged_box_id, service) WHERE merged_box_id IS NOT NULL DO NOTHING""",
                 (image_id, service, boxes, statuses))


def score_caption(conn: psycopg.Connection, image_id: int, captioner: str, status: str = "success") -> None:
    """A caption score replacing the image's previous one of that captioner, as store_caption_score does."""
    service = f"caption_score_{captioner}"
    conn.execute("DELETE FROM postprocessing WHERE image_id = %s AND service = %s AND merged_box_id IS NULL",
                 (image_id, service))
    add_postprocessing(conn, image_id, None, service, status)


def test_postprocessing_is_counted_as_it_is_stored_replaced_and_deleted(conn: psycopg.Connection) -> None:
    a, b = add_image(conn, "a.jpg"), add_image(conn, "b.jpg")
    a_boxes = [add_box(conn, a, "🧑", f"person:{n}") for n in range(3)]
    b_box = add_box(conn, b, "🐱", "cat:0")
    assert counted(conn) == {}
    store_rows(conn, a, a_boxes, "colors", ["success", "success", "error"])
    store_rows(conn, a, a_boxes[:2], "face", ["success", "empty"])
    store_rows(conn, a, a_boxes[:2], "pose", ["timeout", "success"])
    store_rows(conn, b, [b_box], "colors", ["success"])
    score_caption(conn, a, "blip")
    score_caption(conn, a, "ollama", "error")
    assert counted(conn) == recounted(conn) == {"colors": (3, 1), "face": (2, 0), "pose": (1, 1),
                                                "caption_score": (1, 1)}
    store_rows(conn, a, a_boxes, "colors", ["success"] * 3)  # a re-run: every row is there, nothing changes
    score_caption(conn, a, "ollama")  # the failed score asked again: replaced
    conn.execute("DELETE FROM merged_boxes WHERE merged_id = %s", (a_boxes[0],))  # a merge replaced it
    assert counted(conn) == recounted(conn) == {"colors": (2, 1), "face": (1, 0), "pose": (1, 0),
                                                "caption_score": (2, 0)}
    conn.execute("DELETE FROM images WHERE image_id = %s", (a,))  # its boxes and rows go by cascade
    assert counted(conn) == recounted(conn) == {"colors": (1, 0)}
    assert conn.execute("SELECT count(*) FROM postprocessing_count_deltas").fetchone()[0] == 0  # folded


def test_status_shows_postprocessing_and_leaves_it_out_of_the_services(conn: psycopg.Connection) -> None:
    a = add_image(conn, "a.jpg")
    boxes = [add_box(conn, a, "🧑", f"person:{n}") for n in range(2)]
    store_rows(conn, a, boxes, "face", ["success", "error"])
    store_rows(conn, a, boxes, "pose", ["success", "success"])
    add_job(conn, "postprocess_face", "queued", image_id=a)
    report = collect_status(conn)
    rows = {row["service"]: row for row in report["postprocessing"]}
    assert {service: (row["done"], row["failed"], row["queued"]) for service, row in rows.items()} == {
        "face": (1, 1, 1), "pose": (2, 0, 0), "caption_score": (0, 0, 0),
        "colors": (0, 0, 0)}  # before its first crop's colours too (a primary service besides: sql/0125)
    assert rows["pose"]["last_answer_at"] is not None
    assert not {"face", "pose", "caption_score"} & {row["service"] for row in report["services"]}
    text = format_status(report)
    assert "Postprocessing" in text and "face" in text.split("Postprocessing", 1)[1]


def test_recount_rebuilds_wrong_postprocessing_counters(conn: psycopg.Connection, run: Any) -> None:
    a = add_image(conn, "a.jpg")
    box = add_box(conn, a, "🧑", "person:0")
    store_rows(conn, a, [box], "face", ["success"])
    fold_answer_counts(conn)
    conn.execute("UPDATE postprocessing_counts SET done = 41, failed = 3")
    assert counted(conn) == {"face": (41, 3)}
    recount_answers(conn)
    assert counted(conn) == recounted(conn) == {"face": (1, 0)}
    conn.execute("UPDATE postprocessing_counts SET done = 7")
    result = run("status", "--recount", "--json")
    assert result.exit_code == 0, result.output
    assert counted(conn) == recounted(conn)


def test_concurrent_writers_and_folds_count_every_row_once(database: Database, conn: psycopg.Connection) -> None:
    images = [add_image(conn, f"{n}.jpg") for n in range(4)]
    boxes = {image: [add_box(conn, image, "🧑", f"person:{n}") for n in range(10)] for image in images}
    errors: list[BaseException] = []

    def write(image: int) -> None:
        try:
            with database.connect() as own:
                own.autocommit = True
                for service in ("colors", "face", "pose"):
                    for first in range(0, 10, 2):
                        store_rows(own, image, boxes[image][first:first + 2], service, ["success", "error"])
                own.execute("DELETE FROM merged_boxes WHERE merged_id = %s", (boxes[image][0],))
        except BaseException as error:
            errors.append(error)

    def fold() -> None:
        try:
            with database.connect() as own:
                own.autocommit = True
                for _ in range(30):
                    fold_answer_counts(own)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(image,)) for image in images] + [threading.Thread(target=fold)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert counted(conn) == recounted(conn) == {service: (4 * 4, 4 * 5) for service in ("colors", "face", "pose")}
