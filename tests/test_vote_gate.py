"""The triggers queue an image's vote only when it can vote (sql/0105): a voter's final row, a box change or a
face/pose row that finds another voter task of the image outstanding queues no vote, only the image's deadline job;
the final row of the last outstanding task queues the vote. The vote gate (a per-image advisory lock taken before the
check) makes the last two final rows committing together queue the vote: two connections, an open transaction, and a
wait on PostgreSQL's own report that the second one waits for a lock, never on a clock."""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.test_backfill import index_conditions, nested_plans
from tests.test_consensus_waits import SAFE, TEXT, answer, consensus_jobs, due, in_ledger, merge_with
from tests.test_freshness import SAMPLES, detection, insert_answer
from tests.test_merge_follow_ups import calls
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.locks import Product, lock_image
from windmill.roles.merger import merge_image
from windmill.settings import settings_from_mapping

SETTINGS = settings_from_mapping({"WORKER_ID": "vote-gate"})
VOTERS = ("nsfw2", "ocr")
DATA = {"nsfw2": SAFE, "ocr": TEXT}


@pytest.fixture
def image(conn: psycopg.Connection) -> int:
    add_paths(conn, [SAMPLES / "coffee.jpg"])
    return conn.execute("SELECT image_id FROM images").fetchone()[0]


def in_job_table(conn: psycopg.Connection, image: int, service: str) -> uuid.UUID:
    """A job-table service task queued and not answered yet (submit's job)."""
    task = uuid.uuid4()
    conn.execute("INSERT INTO jobs (queue, image_id, payload, dedupe_key) VALUES (%s, %s, %s, %s)",
                 (f"queue_{service}", image,
                  Jsonb({"task_id": str(task), "image_id": image, "service_name": service}), f"{service}:{task}"))
    return task


OUTSTANDING: dict[str, Callable[[psycopg.Connection, int, str], uuid.UUID]] = {
    "rabbitmq": in_ledger, "job table": in_job_table}


def keys(conn: psycopg.Connection, image: int) -> list[tuple[str, str]]:
    """The image's consensus jobs: (dedupe key, state), oldest first."""
    return [(key, state) for key, state, _ in consensus_jobs(conn, image)]


def waits_for_a_lock(conn: psycopg.Connection, pid: int) -> bool:
    return conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone()[0]


@pytest.mark.parametrize("broker", sorted(OUTSTANDING))
@pytest.mark.parametrize("first", VOTERS)
def test_the_last_two_final_rows_committing_together_queue_one_vote(
        database: Database, conn: psycopg.Connection, image: int, first: str, broker: str) -> None:
    """Each final row is stored while the other's transaction is open. Without the gate each would see the other's
    task outstanding, and neither would queue the vote (only the deadline job)."""
    second = next(service for service in VOTERS if service != first)
    tasks = {service: OUTSTANDING[broker](conn, image, service) for service in VOTERS}
    with database.connect(autocommit=False) as first_conn, database.connect(autocommit=False) as second_conn:
        answer(first_conn, image, first, tasks[first], DATA[first])  # open: its transaction holds the image's gate
        stored = threading.Event()

        def store_second() -> None:
            answer(second_conn, image, second, tasks[second], DATA[second])
            stored.set()

        storing = threading.Thread(target=store_second)
        storing.start()
        pid = second_conn.info.backend_pid
        wait_until(lambda: stored.is_set() or waits_for_a_lock(conn, pid),
                   message="the second final row to be stored or to wait")
        first_conn.commit()
        storing.join(30)
        assert stored.is_set()
        second_conn.commit()
    votes = [key for key, state in keys(conn, image) if key == f"consensus:{image}" and state == "queued"]
    assert votes == [f"consensus:{image}"], f"exactly one vote queued: {keys(conn, image)}"
    assert due(conn, f"consensus:{image}") < due(conn, f"consensus-deadline:{image}"), "due before the deadline"


def test_the_last_final_rows_in_one_statement_queue_the_vote(conn: psycopg.Connection, image: int) -> None:
    """A group of answers is one INSERT (windmill/roles/answers.py): each row's trigger sees the rows before it."""
    tasks = [in_ledger(conn, image, service) for service in VOTERS]
    conn.execute("INSERT INTO results (image_id, service, task_id, data, status) "
                 "SELECT %s, service, task, '{}', 'success' FROM unnest(%s::text[], %s::uuid[]) AS t(service, task)",
                 (image, list(VOTERS), tasks))
    assert keys(conn, image) == [(f"consensus-deadline:{image}", "queued"), (f"consensus:{image}", "queued")]


@pytest.mark.parametrize("broker", sorted(OUTSTANDING))
def test_a_final_row_while_another_voter_task_is_outstanding_queues_only_the_deadline_job(
        conn: psycopg.Connection, image: int, broker: str) -> None:
    OUTSTANDING[broker](conn, image, "ocr")
    insert_answer(conn, image, "nsfw2", SAFE)
    assert keys(conn, image) == [(f"consensus-deadline:{image}", "queued")]
    assert conn.execute("SELECT run_after - created_at = consensus_max_wait() FROM jobs WHERE dedupe_key = %s",
                        (f"consensus-deadline:{image}",)).fetchone() == (True,)
    insert_answer(conn, image, "blip", {"predictions": [{"text": "a cup"}]})  # another: the same deadline job
    assert keys(conn, image) == [(f"consensus-deadline:{image}", "queued")]


def test_a_task_of_a_service_that_does_not_vote_holds_no_vote_back(conn: psycopg.Connection, image: int) -> None:
    in_ledger(conn, image, "caption_score")  # not consensus_enabled
    insert_answer(conn, image, "nsfw2", SAFE)
    assert keys(conn, image) == [(f"consensus:{image}", "queued")]


def test_box_changes_and_face_rows_wait_for_the_voter_task_whose_final_row_queues_the_vote(
        pool: ConnectionPool, conn: psycopg.Connection, image: int) -> None:
    ocr = in_ledger(conn, image, "ocr")
    insert_answer(conn, image, "yolov8", detection("person", "🧑", 10))
    conn.execute("DELETE FROM jobs")
    merge_with(pool, image)  # a box change
    assert conn.execute("SELECT count(*) FROM merged_boxes").fetchone() == (1,)
    conn.execute("INSERT INTO postprocessing (image_id, merged_box_id, service, data, status) "
                 "SELECT image_id, merged_id, 'face', '{}', 'empty' FROM merged_boxes")  # a face row
    assert [key for key, state in keys(conn, image) if state == "queued"] == [f"consensus-deadline:{image}"]
    answer(conn, image, "ocr", ocr, TEXT)
    assert [key for key, state in keys(conn, image) if state == "queued"] == [
        f"consensus-deadline:{image}", f"consensus:{image}"]


def test_a_merge_decides_once_while_a_voter_task_is_outstanding(conn: psycopg.Connection, image: int) -> None:
    """The merge's trigger fires at commit for every box row: the first call takes the gate and queues the deadline
    job; the others find it covered and return (sql/0103's shortcut), without another enqueue() or check."""
    in_ledger(conn, image, "ocr")
    for detector in ("yolov8", "rtdetr"):
        insert_answer(conn, image, detector, {"predictions": [
            *detection("person", "🧑", 10)["predictions"], *detection("dog", "🐕", 300)["predictions"]]})
    conn.execute("DELETE FROM jobs")
    conn.execute("SET track_functions = 'pl'")
    with conn.transaction():
        merge_image(conn, image, SETTINGS.harmony, "gate")
        before = {name: calls(conn, name) for name in ("enqueue", "enqueue_consensus_deadline", "queue_vote",
                                                       "enqueue_consensus_for_image")}
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        boxes = conn.execute("SELECT count(*) FROM merged_boxes").fetchone()[0]
        assert boxes == 2
        assert {name: calls(conn, name) - count for name, count in before.items()} == {
            "enqueue": 0, "enqueue_consensus_deadline": 1, "queue_vote": 1, "enqueue_consensus_for_image": boxes}
    assert keys(conn, image) == [(f"consensus-deadline:{image}", "queued")]


def held_keys(conn: psycopg.Connection, pid: int) -> set[int]:
    """The bigint advisory keys the backend holds (pg_locks splits a key into its high and low halves)."""
    return {row[0] for row in conn.execute(
        "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
        "WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND pid = %s", (pid,))}


def test_the_gate_and_the_products_locks_are_keys_of_one_rule_that_never_meet(
        database: Database, conn: psycopg.Connection, image: int) -> None:
    with database.connect() as holder, holder.transaction():
        for product in Product:
            lock_image(holder, product, image)
        expected = {conn.execute("SELECT image_lock_key(%s, %s)", (image, int(product))).fetchone()[0]
                    for product in Product}
        assert held_keys(conn, holder.info.backend_pid) == expected, "locks.py takes image_lock_key's keys"
        with conn.transaction():
            assert conn.execute("SELECT pg_try_advisory_xact_lock(vote_gate_key(%s))", (image,)).fetchone() == (True,)
    assert len({conn.execute("SELECT image_lock_key(%s, %s)", (i, n)).fetchone()[0]
                for i in (image, image + 1) for n in range(4)}) == 8



def test_a_voter_answer_that_waits_for_another_does_not_lock_the_deadline_job(database: Database,
                                                                              conn: psycopg.Connection,
                                                                              image: int) -> None:
    """The deadline job is a timer: an answer that leaves the vote to another voter's final row makes sure it
    exists without holding it (sql/0106), so neither a claim nor a vote's drop of it waits for that answer."""
    in_ledger(conn, image, "ocr")
    answer(conn, image, "blip", in_ledger(conn, image, "blip"), {"predictions": []})  # queues the deadline job
    with database.connect(autocommit=False) as writer:
        answer(writer, image, "clip", in_ledger(writer, image, "clip"), {"predictions": []})  # open: finds it waiting
        assert keys(writer, image) == [(f"consensus-deadline:{image}", "queued")]
        locked = conn.execute("SELECT id FROM jobs WHERE dedupe_key = %s FOR UPDATE NOWAIT",
                              (f"consensus-deadline:{image}",)).fetchall()
        writer.rollback()
    assert len(locked) == 1


def _check_plans(conn: psycopg.Connection, image: int) -> list[str]:
    """EXPLAIN of the check voter_tasks_outstanding runs (its statement, as written there, under the function's own
    settings), planned for the image as a value and as the generic plan PL/pgSQL keeps for every image."""
    source, settings = conn.execute("SELECT prosrc, proconfig FROM pg_proc WHERE proname = 'voter_tasks_outstanding'"
                                    ).fetchone()
    statement = "SELECT " + re.search(r"RETURN (EXISTS .*);", source, re.S).group(1)
    for setting in settings or ():
        name, value = setting.split("=")
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    plans = [conn.execute("EXPLAIN " + statement.replace("p_image_id", str(image))
                          .replace("p_except_task", "NULL::uuid")).fetchall()]
    conn.execute("PREPARE check_voters (bigint, uuid) AS "
                 + statement.replace("p_image_id", "$1").replace("p_except_task", "$2"))
    try:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        plans.append(conn.execute(f"EXPLAIN EXECUTE check_voters({image}, NULL)").fetchall())
    finally:
        conn.execute("RESET ALL")
        conn.execute("DEALLOCATE check_voters")
    return ["\n".join(row[0] for row in plan) for plan in plans]


def test_the_check_probes_the_images_tasks_in_flight_by_index(conn: psycopg.Connection, image: int) -> None:
    """The check runs at every voter answer (sql/0110). Its job-table half reads the image's tasks in flight by
    jobs_service_task_in_flight_image_idx: not every version of the image's jobs (jobs_image_idx: its done
    history), not every task in flight of every image (sql/0020's unique index, led by the queue). Each task's
    results row is looked up by its id, even in a plan made while results is empty (a fresh database: PL/pgSQL
    keeps the plan for the session while the table grows)."""
    conn.execute("""INSERT INTO images (image_filename, image_path)
                    SELECT 'plan' || n || '.jpg', '/plan/' || n || '.jpg' FROM generate_series(1, 400) AS n""")
    # Every other image's eleven tasks in flight; every image's done history (a task's versions, its follow-ups).
    conn.execute("""INSERT INTO jobs (queue, image_id, payload, state)
                    SELECT 'queue_' || s.name, i.image_id,
                           jsonb_build_object('task_id', gen_random_uuid(), 'service_name', s.name), 'queued'
                      FROM images i CROSS JOIN services s
                     WHERE i.image_id <> %(image)s AND s.category = 'primary'""", {"image": image})
    conn.execute("""INSERT INTO jobs (queue, image_id, payload, state)
                    SELECT 'queue_' || s.name, i.image_id,
                           jsonb_build_object('task_id', gen_random_uuid(), 'service_name', s.name), 'done'
                      FROM images i CROSS JOIN services s CROSS JOIN generate_series(1, 3)
                     WHERE s.category = 'primary'""")
    conn.execute("""INSERT INTO jobs (queue, image_id, payload, state)
                    SELECT 'consensus', image_id, '{}', 'done' FROM images CROSS JOIN generate_series(1, 5)""")
    conn.execute("ANALYZE jobs, results, service_tasks_in_flight")
    for plan in _check_plans(conn, image):
        assert "Index Scan using jobs_service_task_in_flight_image_idx on jobs" in plan, plan
        assert "jobs_image_idx" not in plan and "Seq Scan" not in plan and "Bitmap" not in plan, plan
        assert "using results_task_id_key on results" in plan, plan


def test_the_check_runs_its_generic_plan_at_every_call(conn: psycopg.Connection, image: int) -> None:
    """The plan cache judged a plan made for one image cheaper than the generic plan, so it planned the check anew at
    every call, about sixteen times per image (sql/0114). Every call, the first included, now runs the generic plan:
    its conditions name the parameter, not the image."""
    in_job_table(conn, image, "ocr")
    conn.execute("ANALYZE jobs, results, service_tasks_in_flight")
    plans = nested_plans(conn, f"SELECT voter_tasks_outstanding({image}, NULL) FROM generate_series(1, 8)")
    conditions = [condition for plan in plans
                  for condition in index_conditions(plan, "jobs_service_task_in_flight_image_idx")]
    assert len(conditions) == 8, plans
    assert all(condition == "(image_id = $1)" for condition in conditions), conditions


def test_an_answer_that_finds_the_deadline_job_waiting_inserts_nothing(conn: psycopg.Connection, image: int) -> None:
    """Nine answers in ten of an image find its deadline job waiting: they look it up and try no INSERT, which
    would store nothing (sql/0111). A BEFORE trigger sees every attempt, those that yield to a conflict included;
    it lives in a transaction rolled back at the end."""
    in_ledger(conn, image, "ocr")
    insert_answer(conn, image, "nsfw2", SAFE)  # the first answer queues the deadline job
    with conn.transaction(force_rollback=True):
        conn.execute("CREATE FUNCTION job_insert_attempted() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "PERFORM set_config('test.job_inserts', (job_insert_attempts() + 1)::text, true); "
                     "RETURN NEW; END $$")
        conn.execute("CREATE FUNCTION job_insert_attempts() RETURNS integer LANGUAGE sql "
                     "AS $$ SELECT coalesce(nullif(current_setting('test.job_inserts', true), ''), '0')::integer $$")
        conn.execute("CREATE TRIGGER jobs_insert_attempted BEFORE INSERT ON jobs "
                     "FOR EACH ROW EXECUTE FUNCTION job_insert_attempted()")
        insert_answer(conn, image, "colors", {"predictions": []})  # ocr still outstanding: finds it waiting
        assert conn.execute("SELECT job_insert_attempts()").fetchone() == (0,)
        assert keys(conn, image) == [(f"consensus-deadline:{image}", "queued")]
        conn.execute("UPDATE jobs SET state = 'done' WHERE dedupe_key = %s", (f"consensus-deadline:{image}",))
        insert_answer(conn, image, "metadata", {"predictions": []})  # none waiting: queues a new one
        assert conn.execute("SELECT job_insert_attempts()").fetchone() == (1,)
        assert keys(conn, image) == [(f"consensus-deadline:{image}", "done"), (f"consensus-deadline:{image}", "queued")]
