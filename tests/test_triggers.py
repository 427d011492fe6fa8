"""The pipeline's triggers: stored answers enqueue merge and consensus jobs, deduplicated per image; one trigger per
answer also notes the counters' delta and frees the task's ledger entry."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.conftest import wait_until
from windmill.catalog import Catalog
from windmill.db.connect import Database


def add_image(conn: psycopg.Connection, name: str = "a.jpg") -> int:
    return conn.execute("INSERT INTO images (image_filename, image_path) VALUES (%s, %s) RETURNING image_id",
                        (name, f"/data/{name}")).fetchone()[0]


def add_result(conn: psycopg.Connection, image_id: int, service: str, status: str = "success") -> int:
    return conn.execute(
        """INSERT INTO results (image_id, service, task_id, data, status, error_message)
           VALUES (%s, %s, %s, %s, %s, %s) RETURNING result_id""",
        (image_id, service, uuid.uuid4(), Jsonb({"predictions": []}), status,
         None if status == "success" else "it failed"),
    ).fetchone()[0]


def queued(conn: psycopg.Connection) -> list[tuple[str, int]]:
    return conn.execute("SELECT queue, image_id FROM jobs WHERE state = 'queued' ORDER BY queue, image_id").fetchall()


@pytest.mark.parametrize(
    ("service", "expected_queues"),
    [
        ("yolov8", ["consensus", "merge"]),
        ("clip", ["consensus", "merge"]),
        ("detectron2", ["consensus", "merge"]),
        ("blip", ["caption_score", "consensus"]),
        ("ollama", ["caption_score", "consensus"]),
        ("nsfw2", ["consensus"]),
        # The vote lists every answering service: colors and metadata answers recompute it too.
        ("colors", ["consensus"]),
        ("metadata", ["consensus"]),
    ],
)
def test_a_success_result_enqueues_the_right_follow_up(conn: psycopg.Connection, service: str,
                                                      expected_queues: list[str]) -> None:
    image_id = add_image(conn)
    add_result(conn, image_id, service)
    assert queued(conn) == [(queue, image_id) for queue in expected_queues]


def test_every_primary_answer_queues_what_the_catalog_says(conn: psycopg.Connection, catalog: Catalog) -> None:
    for service in catalog.select("primary"):
        image_id = add_image(conn, f"{service.name}.jpg")
        add_result(conn, image_id, service.name)
        expected = sorted(queue for queue, wanted in (("merge", service.is_detector),
                                                      ("consensus", service.feeds_consensus),
                                                      ("caption_score", service.enable_caption_scoring)) if wanted)
        assert [queue for queue, image in queued(conn) if image == image_id] == expected, service.name


def answer_triggers(conn: psycopg.Connection) -> list[str]:
    """The row triggers an answer's INSERT fires (foreign-key checks aside)."""
    return [row[0] for row in conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'results'::regclass AND NOT tgisinternal "
        "AND tgtype & 1 = 1 AND tgtype & 4 = 4 ORDER BY tgname")]  # FOR EACH ROW, ON INSERT


def test_an_answer_fires_one_trigger_that_queues_notes_and_frees_its_task(conn: psycopg.Connection) -> None:
    """sql/0090: the follow-up jobs, the counters' delta and the ledger entry in one trigger call per answer."""
    assert answer_triggers(conn) == ["results_answer_stored"]
    image_id = add_image(conn)
    task, other = uuid.uuid4(), uuid.uuid4()
    conn.execute("INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id) VALUES "
                 "(%s, 'yolov8', 'queue_yolov8', %s), (%s, 'blip', 'queue_blip', %s)",
                 (image_id, task, image_id, other))
    result_id = conn.execute("INSERT INTO results (image_id, service, task_id, data, status) "
                             "VALUES (%s, 'yolov8', %s, '{}', 'success') RETURNING result_id",
                             (image_id, task)).fetchone()[0]
    add_result(conn, image_id, "blip", status="error")  # another task's error row: its entry stays
    assert queued(conn) == [("consensus", image_id), ("merge", image_id)]
    assert conn.execute("SELECT task_id FROM service_tasks_in_flight").fetchall() == [(other,)]
    deltas = "SELECT service, status, change FROM service_answer_count_deltas ORDER BY result_id, change"
    assert conn.execute(deltas).fetchall() == [("yolov8", "success", 1), ("blip", "error", 1)]
    conn.execute("DELETE FROM jobs")
    conn.execute("DELETE FROM results WHERE result_id = %s", (result_id,))
    assert conn.execute(deltas).fetchall() == [("yolov8", "success", -1), ("yolov8", "success", 1),
                                               ("blip", "error", 1)]
    assert queued(conn) == [], "a deleted answer queues nothing"


def test_a_failed_final_row_queues_only_the_vote(conn: psycopg.Connection) -> None:
    """An error or timeout ends a voter task: a vote put off for that task must follow it (sql/0104). Nothing to
    merge or score."""
    first, second = add_image(conn, "a.jpg"), add_image(conn, "b.jpg")
    add_result(conn, first, "yolov8", status="error")
    add_result(conn, second, "blip", status="timeout")
    assert queued(conn) == [("consensus", first), ("consensus", second)]


def test_follow_up_jobs_are_deduplicated_per_image(conn: psycopg.Connection) -> None:
    first, second = add_image(conn, "a.jpg"), add_image(conn, "b.jpg")
    for service in ("yolov8", "rtdetr", "detectron2", "blip"):
        add_result(conn, first, service)
    add_result(conn, second, "rtdetr")
    assert queued(conn) == [("caption_score", first), ("consensus", first), ("consensus", second),
                            ("merge", first), ("merge", second)]


def test_merged_box_changes_enqueue_consensus(conn: psycopg.Connection) -> None:
    image_id = add_image(conn)
    result_id = add_result(conn, image_id, "metadata")
    merged_id = conn.execute(
        "INSERT INTO merged_boxes (image_id, source_result_ids, merged_data) VALUES (%s, %s, '{}') RETURNING merged_id",
        (image_id, [result_id])).fetchone()[0]
    assert queued(conn) == [("consensus", image_id)]
    conn.execute("DELETE FROM jobs")
    conn.execute("DELETE FROM merged_boxes WHERE merged_id = %s", (merged_id,))
    assert queued(conn) == [("consensus", image_id)]


@pytest.mark.parametrize(("service", "enqueues"), [("face", True), ("pose", True), ("colors", False)])
def test_face_and_pose_postprocessing_enqueue_consensus(conn: psycopg.Connection, service: str,
                                                        enqueues: bool) -> None:
    image_id = add_image(conn)
    conn.execute("INSERT INTO postprocessing (image_id, service, data) VALUES (%s, %s, '{}')", (image_id, service))
    assert queued(conn) == ([("consensus", image_id)] if enqueues else [])


def test_deleting_an_image_cascades_without_enqueueing(conn: psycopg.Connection) -> None:
    image_id = add_image(conn)
    result_id = add_result(conn, image_id, "yolov8")
    conn.execute("INSERT INTO merged_boxes (image_id, source_result_ids, merged_data) VALUES (%s, %s, '{}')",
                 (image_id, [result_id]))
    conn.execute("DELETE FROM images WHERE image_id = %s", (image_id,))
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM merged_boxes").fetchone()[0] == 0


def test_a_task_id_is_written_once(conn: psycopg.Connection) -> None:
    image_id = add_image(conn)
    task = uuid.uuid4()
    insert = """INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, 'blip', %s, '{}', 'success')
                ON CONFLICT (task_id) DO NOTHING"""
    assert conn.execute(insert, (image_id, task)).rowcount == 1
    assert conn.execute(insert, (image_id, task)).rowcount == 0


def test_an_error_row_must_say_why(conn: psycopg.Connection) -> None:
    image_id = add_image(conn)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, 'blip', %s, '{}', "
                     "'error')", (image_id, uuid.uuid4()))


def test_two_transactions_answering_one_image_do_not_deadlock(database: Database, conn: psycopg.Connection) -> None:
    """sql/0097: a voter's answer, then a detector's, in one transaction, against a detector's answer in another.
    When a detector's answer queued the merge job before the consensus job, each transaction ended up waiting for
    the job the other had just inserted."""
    image = add_image(conn)
    errors: list[BaseException] = []
    with database.connect() as first, database.connect() as second:
        def detector_answer() -> None:
            try:
                with second.transaction():
                    add_result(second, image, "yolov8")
            except psycopg.Error as error:
                errors.append(error)

        with first.transaction():
            add_result(first, image, "blip")  # inserts the image's consensus job (and its caption score's)
            thread = threading.Thread(target=detector_answer)
            thread.start()
            wait_until(lambda: conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                                            (second.info.backend_pid,)).fetchone()[0],
                       message="the other answer to wait for the consensus job")
            add_result(first, image, "yolov8")
        thread.join(30)
    assert not errors, errors
    assert queued(conn) == [("caption_score", image), ("consensus", image), ("merge", image)]


def test_functions_called_per_answer_or_box_keep_their_plans(conn: psycopg.Connection) -> None:
    # PostgreSQL before 18 plans an SQL function's body anew at each call when it cannot inline it (one that reads
    # a table): these run for every caption score and every merged box, so they are PL/pgSQL, which keeps plans.
    hot = ("latest_success_id", "enqueue_postprocessing")
    languages = dict(conn.execute("SELECT p.proname, l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                                  "WHERE p.proname = ANY(%s)", [list(hot)]).fetchall())
    assert languages == {name: "plpgsql" for name in hot}


def test_rows_written_by_hand_without_windmills_search_path_fire_the_triggers(conn: psycopg.Connection) -> None:
    """An operator in psql as the superuser (or windmill_owner, which deploy/roles.sql gives no search path), or
    another program, writes Windmill's tables by their qualified names: the triggers still find theirs."""
    conn.execute("SET search_path = public")
    image = conn.execute("INSERT INTO windmill.images (image_filename, image_path) VALUES ('b.jpg', '/data/b.jpg') "
                         "RETURNING image_id").fetchone()[0]
    conn.execute("INSERT INTO windmill.results (image_id, service, task_id, data, status) VALUES (%s, 'yolov8', %s, "
                 "'{\"predictions\": []}', 'success')", (image, uuid.uuid4()))
    assert conn.execute("SELECT queue FROM windmill.jobs WHERE image_id = %s ORDER BY queue", (image,)).fetchall() == [
        ("consensus",), ("merge",)]
    conn.execute("INSERT INTO windmill.jobs (queue, payload) VALUES ('merge', '{}')")
    conn.execute("DELETE FROM windmill.results WHERE image_id = %s", (image,))
    conn.execute("DELETE FROM windmill.postprocessing")
    conn.execute("DELETE FROM windmill.images WHERE image_id = %s", (image,))
    conn.execute("SET search_path = windmill, public")
    assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 0


def test_every_trigger_function_carries_its_search_path(conn: psycopg.Connection) -> None:
    """The rule the test above checks for today's triggers, for every trigger a later migration adds."""
    unset = conn.execute("SELECT DISTINCT p.proname FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid "
                         "WHERE NOT t.tgisinternal AND NOT coalesce(p.proconfig::text LIKE '%%search_path=%%', false)")
    assert unset.fetchall() == []
