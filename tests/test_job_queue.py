"""The job queue against a real PostgreSQL: dedupe, SKIP LOCKED claims, leases, retry with backoff, dead,
NOTIFY only for newly queued jobs, and the claim query's plan. Time is passed in, never slept."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from windmill.broker import JobTableBroker, Task
from windmill.db.connect import Database
from windmill.db.queries import query
from windmill.jobs import Job, JobQueue, JobState, NewJob, PermanentJobError
from windmill.jobs.queue import Claimer, enqueue_many_on, enqueue_on, round_trip_parameters, round_trip_query
from windmill.worker.listener import JobListener


@pytest.fixture
def jobs(pool: ConnectionPool) -> JobQueue:
    return JobQueue(pool, lease=timedelta(seconds=30))


def state_of(conn: psycopg.Connection, job_id: int) -> tuple[str, int, str | None]:
    return conn.execute("SELECT state::text, attempts, last_error FROM jobs WHERE id = %s", (job_id,)).fetchone()


def test_dedupe_key_is_unique_among_queued_jobs_only(jobs: JobQueue, conn: psycopg.Connection) -> None:
    first = jobs.enqueue(NewJob("merge", {"image_id": 1}, dedupe_key="merge:1"))
    assert first is not None
    assert jobs.enqueue(NewJob("merge", {"image_id": 1}, dedupe_key="merge:1")) is None
    assert jobs.enqueue(NewJob("consensus", {"image_id": 1}, dedupe_key="merge:1")) is not None
    jobs.claim(["merge"], "w1", 10)
    # The running job no longer blocks a new one: work that arrives during a run must run again.
    assert jobs.enqueue(NewJob("merge", {"image_id": 1}, dedupe_key="merge:1")) is not None
    assert conn.execute("SELECT count(*) FROM jobs WHERE queue = 'merge'").fetchone()[0] == 2


def test_enqueue_many_skips_duplicates_of_waiting_jobs(jobs: JobQueue) -> None:
    batch = [NewJob("q", {"n": n}, dedupe_key=f"k{n % 3}") for n in range(9)]
    assert jobs.enqueue_many(batch) == 3


def test_enqueue_many_numbers_jobs_of_several_queues_in_the_order_given(jobs: JobQueue) -> None:
    batch = [NewJob(queue, {"image": image}, max_attempts=attempts)
             for image in range(3) for queue, attempts in (("q_b", 2), ("q_a", 7))]
    assert jobs.enqueue_many(batch) == 6
    claimed = jobs.claim(["q_a", "q_b"], "w1", 10)
    assert [(job.queue, job.payload["image"], job.max_attempts) for job in claimed] == [
        (job.queue, job.payload["image"], job.max_attempts) for job in batch]


def test_claim_takes_oldest_first_in_batches_and_skips_locked_rows(jobs: JobQueue, database: Database) -> None:
    ids = [jobs.enqueue(NewJob("q", {"n": n})) for n in range(5)]
    with database.connect(autocommit=False) as other:
        other.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (ids[0],))
        claimed = jobs.claim(["q"], "w1", 3)
        other.rollback()
    assert [job.id for job in claimed] == ids[1:4]
    assert all(job.attempts == 1 for job in claimed)
    assert [job.id for job in jobs.claim(["q"], "w2", 10)] == [ids[0], ids[4]]
    assert jobs.claim(["q"], "w3", 10) == []


def test_a_due_job_a_claim_passed_by_is_seen_waiting_and_one_another_worker_took_is_not(
        jobs: JobQueue, database: Database) -> None:
    """What a delayed lane reads after an empty claim at a due time (windmill.worker.claim_state, left_behind):
    a job locked by an enqueue still waits, so the lane claims again; a job another worker took does not."""
    claimer = jobs.claimer()
    try:
        assert not claimer.due_job_waiting(["q"])
        job_id = jobs.enqueue(NewJob("q", {}))
        jobs.enqueue(NewJob("q", {}), run_after=datetime.now(UTC) + timedelta(minutes=5))  # not due: not waiting
        with database.connect(autocommit=False) as enqueuing:
            enqueuing.execute("SELECT id FROM jobs WHERE id = %s FOR SHARE", (job_id,))
            assert claimer.complete_and_claim_lanes([], [(["q"], 5)], "w1") == [[]]  # passed by
            assert claimer.due_job_waiting(["q"])
            assert not claimer.due_job_waiting(["other"])
            enqueuing.rollback()
        assert [job.id for job in jobs.claim(["q"], "w2", 5)] == [job_id]  # another worker takes it
        assert not claimer.due_job_waiting(["q"])
    finally:
        claimer.close()


def test_claim_only_reads_the_named_queues(jobs: JobQueue) -> None:
    jobs.enqueue(NewJob("a", {}))
    wanted = jobs.enqueue(NewJob("b", {}))
    assert [job.id for job in jobs.claim(["b", "c"], "w", 10)] == [wanted]


def test_expired_lease_is_reclaimed_by_the_same_query(jobs: JobQueue, conn: psycopg.Connection) -> None:
    job_id = jobs.enqueue(NewJob("q", {}))
    now = datetime.now(UTC) + timedelta(seconds=1)  # after the enqueue: its run_after is the DB clock
    assert [job.id for job in jobs.claim(["q"], "dead-worker", 1, now=now)] == [job_id]
    assert jobs.claim(["q"], "w2", 1, now=now + timedelta(seconds=29)) == []
    [again] = jobs.claim(["q"], "w2", 1, now=now + timedelta(seconds=31))
    assert (again.id, again.attempts) == (job_id, 2)
    assert "dead-worker" in (again.last_error or "")
    # The dead worker's late completion does not count: the job belongs to w2 now.
    assert jobs.complete([job_id], "dead-worker") == 0
    assert jobs.complete([job_id], "w2") == 1
    assert state_of(conn, job_id)[0] == "done"


def test_renewed_lease_is_not_reclaimed(jobs: JobQueue) -> None:
    job_id = jobs.enqueue(NewJob("q", {}))
    now = datetime.now(UTC) + timedelta(seconds=1)  # after the enqueue: its run_after is the DB clock
    jobs.claim(["q"], "w1", 1, now=now)
    assert jobs.renew_leases([job_id], "w1", now=now + timedelta(seconds=25)) == {job_id}
    assert jobs.claim(["q"], "w2", 1, now=now + timedelta(seconds=40)) == []
    assert jobs.renew_leases([job_id], "w2", now=now) == set()


def test_failed_attempts_back_off_then_go_dead_with_the_reason(jobs: JobQueue, conn: psycopg.Connection) -> None:
    job_id = jobs.enqueue(NewJob("q", {}, max_attempts=3))
    now = datetime.now(UTC) + timedelta(seconds=1)  # after the enqueue: its run_after is the DB clock
    moment = now
    for attempt in (1, 2, 3):
        [job] = jobs.claim(["q"], "w", 1, now=moment)
        assert job.attempts == attempt
        state = jobs.fail(job, "w", f"boom {attempt}", now=moment)
        assert state is (JobState.FAILED if attempt < 3 else JobState.DEAD)
        if attempt < 3:
            assert jobs.claim(["q"], "w", 1, now=moment) == [], "claimable before its backoff ended"
        moment += timedelta(minutes=10)
    assert state_of(conn, job_id) == ("dead", 3, "boom 3")
    assert jobs.claim(["q"], "w", 1, now=moment + timedelta(days=1)) == []


def test_an_expired_last_attempt_runs_once_more_to_record_its_outcome_and_twice_is_recorded_as_a_poison(
        jobs: JobQueue, conn: psycopg.Connection) -> None:
    # It went dead with no outcome recorded: only a handler on the final attempt writes a failure's error row, and
    # this one's worker had died (or lost the database longer than the lease) while running it.
    job_id = jobs.enqueue(NewJob("q", {}, max_attempts=2))
    now = datetime.now(UTC) + timedelta(seconds=1)  # after the enqueue: its run_after is the DB clock
    [first] = jobs.claim(["q"], "w1", 1, now=now)
    assert jobs.fail(first, "w1", "pose: cannot connect", now=now) is JobState.FAILED
    now += timedelta(minutes=10)
    [last] = jobs.claim(["q"], "w1", 1, now=now)
    assert (last.attempts, last.max_attempts) == (2, 2)
    now += timedelta(minutes=5)  # w1 died on its last attempt: its lease expired
    [again] = jobs.claim(["q"], "w2", 1, now=now)
    assert (again.id, again.attempts, again.max_attempts) == (job_id, 2, 2), "the last attempt, run once more"
    assert again.last_error == ("lease of worker w1 expired on its last attempt; run once more to record its outcome "
                                "(before: pose: cannot connect)")
    now += timedelta(minutes=5)  # w2 died on it too: a poison input, whose failure its role records (sql/0131)
    [poison] = jobs.claim(["q"], "w3", 1, now=now)
    assert (poison.id, poison.attempts, poison.poison) == (job_id, 2, True)
    assert poison.last_error == ("lease of worker w2 expired on its last attempt twice: its workers died handling it "
                                 "each time (a poison input); its failure is recorded without running it (before: "
                                 "pose: cannot connect)")
    now += timedelta(minutes=5)  # the recording's lease expired too: given up
    assert jobs.claim(["q"], "w4", 1, now=now) == []
    state, attempts, reason = state_of(conn, job_id)
    assert (state, attempts) == ("dead", 2)
    assert reason == ("lease of worker w3 expired while the failure of a poison input was recorded: no outcome is "
                      "recorded (`jobs retry` runs it again) (before: pose: cannot connect)")


def test_a_scheduler_tick_whose_scheduler_died_runs_once_more(jobs: JobQueue, conn: psycopg.Connection) -> None:
    # A tick (one attempt) whose scheduler died before queueing its successor went dead, and the periodic pass
    # stopped for good: nothing queued a tick again until a scheduler process started.
    job_id = jobs.enqueue(NewJob("scheduler", {}, max_attempts=1))
    now = datetime.now(UTC) + timedelta(seconds=1)
    jobs.claim(["scheduler"], "sched-a", 1, now=now)
    [again] = jobs.claim(["scheduler"], "sched-b", 1, now=now + timedelta(minutes=5))
    assert (again.id, again.attempts) == (job_id, 1)


def test_permanent_error_goes_dead_at_once_and_retry_requeues(jobs: JobQueue, conn: psycopg.Connection) -> None:
    job_id = jobs.enqueue(NewJob("q", {}, dedupe_key="k"))
    [job] = jobs.claim(["q"], "w", 1)
    assert jobs.fail(job, "w", "bad image", permanent=True) is JobState.DEAD
    assert jobs.retry_dead(queue="q") == [job_id]
    assert state_of(conn, job_id)[:2] == ("queued", 0)
    assert jobs.retry_dead(queue="q") == []


def test_retry_of_a_dead_job_whose_twin_is_waiting_leaves_it_dead(jobs: JobQueue, conn: psycopg.Connection) -> None:
    dead_id = jobs.enqueue(NewJob("q", {}, dedupe_key="k"))
    [job] = jobs.claim(["q"], "w", 1)
    jobs.fail(job, "w", "bad", permanent=True)
    jobs.enqueue(NewJob("q", {}, dedupe_key="k"))
    assert jobs.retry_dead() == []
    assert state_of(conn, dead_id)[0] == "dead"


def _notifications(listener: psycopg.Connection) -> int:
    return sum(1 for _ in listener.notifies(timeout=0.3))


def _listen(listener: psycopg.Connection, *queues: str) -> None:
    """LISTEN as a worker of these queues does (sql/0096)."""
    listener.execute("SELECT * FROM listen_job_queues(%s)", [list(queues)])


def test_notify_only_when_a_job_is_newly_queued(jobs: JobQueue, database: Database) -> None:
    with database.connect() as listener:
        _listen(listener, "q")
        jobs.enqueue(NewJob("q", {}, dedupe_key="same"))
        assert _notifications(listener) == 1
        jobs.enqueue(NewJob("q", {}, dedupe_key="same"))
        assert _notifications(listener) == 0
        [job] = jobs.claim(["q"], "w", 1)
        jobs.complete([job.id], "w")
        assert _notifications(listener) == 0


def test_notify_once_per_transaction_and_never_for_a_job_due_later(jobs: JobQueue, database: Database,
                                                                   conn: psycopg.Connection) -> None:
    """Issue 13 item 5: a job due later cannot be claimed yet (the poll covers it); a transaction queueing several
    due jobs notifies once per queue."""
    with database.connect() as listener:
        _listen(listener, "q", "other", "later", "bulk")
        enqueue_on(conn, NewJob("later", {}), run_after=datetime.now(UTC) + timedelta(minutes=5))
        assert _notifications(listener) == 0
        with conn.transaction():
            for queue in ("q", "q", "other"):
                enqueue_on(conn, NewJob(queue, {}))
        assert _notifications(listener) == 2
        enqueue_many_on(conn, [NewJob("bulk", {}) for _ in range(50)])  # an empty queue (sql/0098)
        assert _notifications(listener) == 1


def test_a_due_job_wakes_the_workers_behind_a_job_just_queued(jobs: JobQueue, database: Database) -> None:
    """A job that has not waited yet says nothing about the workers: the queue is not backed up (sql/0098)."""
    with database.connect() as listener:
        _listen(listener, "q")
        jobs.enqueue(NewJob("q", {}))
        jobs.enqueue(NewJob("q", {}))
        assert _notifications(listener) == 2


def test_a_job_wakes_only_the_listeners_of_its_queue(jobs: JobQueue, database: Database) -> None:
    """sql/0096: a queue of its own per channel, so a merge job does not wake the service workers; the wake-all
    channel still reaches every worker (`jobs retry`)."""
    long_queue = "postprocess_" + "a_service_named_at_great_length" * 2
    heard: list[str] = []
    woken = threading.Event()
    stopping = threading.Event()
    listener = JobListener(database.conninfo, woken, stopping, queues=["merge", long_queue], on_queue=heard.append)
    thread = threading.Thread(target=listener.run)
    thread.start()
    try:
        assert listener.connected.wait(10)
        woken.clear()
        jobs.enqueue(NewJob("queue_yolov8", {}))
        jobs.enqueue(NewJob("merge", {}))
        jobs.enqueue(NewJob(long_queue, {}))  # its channel's name would be over 63 bytes: a hash of it instead
        wait_until(lambda: len(heard) == 2, timeout=10, message="both queues' notifications")
        assert heard == ["merge", long_queue] and not woken.is_set()
        with database.connect() as conn:
            conn.execute(query("notify_jobs"))
        assert woken.wait(10)
    finally:
        stopping.set()
        thread.join()


def test_notify_payload_is_constant(jobs: JobQueue, database: Database) -> None:
    with database.connect() as listener:
        _listen(listener, "q")
        jobs.enqueue(NewJob("q", {"secret": "x"}, image_id=None))
        [note] = list(listener.notifies(timeout=1, stop_after=1))
    assert note.payload == ""


def _plan(conn: psycopg.Connection, queues: list[str]) -> str:
    params = round_trip_parameters((tuple(queues),), [], [10], "w", timedelta(seconds=30))
    explained = psycopg.RawCursor(conn).execute("EXPLAIN " + round_trip_query((tuple(queues),)), params)
    return "\n".join(row[0] for row in explained)


def test_claim_queries_use_the_claimable_partial_indexes(conn: psycopg.Connection) -> None:
    # Many finished jobs, a big queue of waiting service tasks, and a few merge jobs.
    conn.execute("""INSERT INTO jobs (queue, payload, state)
                    SELECT CASE WHEN n <= 20000 THEN 'queue_yolov8' WHEN n <= 25000 THEN 'queue_blip' ELSE 'merge' END,
                           '{}', CASE WHEN n <= 20000 THEN 'done' ELSE 'queued' END::job_state
                      FROM generate_series(1, 25020) AS n""")
    conn.execute("ANALYZE jobs")
    merge = _plan(conn, ["merge"])
    assert "jobs_claimable_idx" in merge
    several = _plan(conn, ["queue_blip", "queue_yolov8"])
    assert "jobs_claimable" in several
    for plan in (merge, several):
        assert "Seq Scan on jobs" not in plan


def _claimer_plan(claimer: Claimer) -> str:
    """The plan the claimer's prepared claim runs now (its only claim text in these tests)."""
    assert claimer._conn is not None
    [name] = claimer._conn.execute("SELECT name FROM pg_prepared_statements "
                                   "WHERE statement LIKE '%FOR UPDATE SKIP LOCKED%'").fetchone()
    return "\n".join(row[0] for row in claimer._conn.execute(f"EXPLAIN EXECUTE {name}('{{}}', 'w', '30 s', 1)"))


def test_a_claimer_plans_again_so_a_grown_table_is_read_by_index(database: Database,
                                                                 conn: psycopg.Connection) -> None:
    # A generic plan made on a nearly empty job table reads the table whole; kept after a bulk submit, every claim
    # would read 100,000 tasks until an ANALYZE. No ANALYZE here (autovacuum off for the table), only the replan.
    conn.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
    try:
        with database.pool(min_size=1, max_size=1, name="one") as one:
            jobs = JobQueue(one)
            claimer = jobs.claimer(replan_after_s=3600)
            try:
                for _ in range(6):
                    jobs.enqueue(NewJob("merge", {}))
                    claimer.complete_and_claim_lanes([], [(["merge"], 1)], "w")
                conn.execute("INSERT INTO jobs (queue, payload) "
                             "SELECT 'queue_yolov8', '{}' FROM generate_series(1, 100000)")
                jobs.enqueue(NewJob("merge", {}))
                claimer.replan_after_s = 0.0  # its plans are old now
                assert len(claimer.complete_and_claim_lanes([], [(["merge"], 1)], "w")[0]) == 1
                plan = _claimer_plan(claimer)
            finally:
                claimer.close()
    finally:
        conn.execute("ALTER TABLE jobs RESET (autovacuum_enabled)")
    assert "jobs_claimable_idx" in plan and "Seq Scan" not in plan


def test_a_claim_loop_keeps_one_connection_whose_plans_are_generic_from_the_start(database: Database) -> None:
    with database.pool(min_size=1, max_size=1, name="one") as one:
        jobs = JobQueue(one)
        jobs.enqueue_many([NewJob("merge", {}) for _ in range(6)])
        claimer = jobs.claimer()
        try:
            with one.connection():  # the pool's one connection busy: the claim loop does not need it
                for _ in range(6):
                    assert len(claimer.complete_and_claim_lanes([], [(["merge"], 1)], "w")[0]) == 1
            assert claimer._conn is not None
            plans = claimer._conn.execute("SELECT generic_plans, custom_plans FROM pg_prepared_statements "
                                          "WHERE statement LIKE '%FOR UPDATE SKIP LOCKED%'").fetchall()
            assert plans == [(6, 0)]  # one connection ran all six, on the generic plan from the first
            with one.connection() as conn:
                assert conn.execute("SHOW plan_cache_mode").fetchone()[0] == "auto"
        finally:
            claimer.close()


def test_a_one_queue_claim_reads_its_own_queue_beside_a_backlog_and_a_long_history(conn: psycopg.Connection) -> None:
    # A merge history much longer than the service tasks' backlog: the planner expects merges everywhere, and read in
    # id order, the claim would skip every waiting service task (they are older) before its first merge.
    conn.execute("INSERT INTO jobs (queue, payload, state) "
                 "SELECT 'merge', '{}', 'done' FROM generate_series(1, 100000)")
    conn.execute("INSERT INTO jobs (queue, payload) SELECT 'queue_yolov8', '{}' FROM generate_series(1, 30000)")
    conn.execute("INSERT INTO jobs (queue, payload) SELECT 'merge', '{}' FROM generate_series(1, 5)")
    conn.execute("ANALYZE jobs")
    ready = _plan(conn, ["merge"]).split("CTE ready_0")[1].split("CTE expired_0")[0]
    assert "jobs_claimable_idx" in ready and "jobs_claimable_order_idx" not in ready


def test_the_read_for_a_due_job_left_behind_reads_its_own_queue_by_index(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO jobs (queue, payload, state) "
                 "SELECT 'merge', '{}', 'done' FROM generate_series(1, 100000)")
    conn.execute("INSERT INTO jobs (queue, payload) SELECT 'queue_yolov8', '{}' FROM generate_series(1, 30000)")
    conn.execute("INSERT INTO jobs (queue, payload, run_after) "
                 "SELECT 'merge', '{}', now() + interval '1 minute' FROM generate_series(1, 5)")
    conn.execute("ANALYZE jobs")
    conn.execute("SET plan_cache_mode = force_generic_plan")  # as the claim loop's connection reads it
    conn.execute("PREPARE due_job_waiting(text[]) AS " + query("due_job_waiting").replace("%(queues)s", "$1"))
    plan = "\n".join(row[0] for row in conn.execute("EXPLAIN EXECUTE due_job_waiting('{merge}')"))
    assert "jobs_claimable_idx" in plan and "Seq Scan" not in plan and "jobs_claimable_order_idx" not in plan
    assert conn.execute("EXECUTE due_job_waiting('{merge}')").fetchone()[0] is False
    assert conn.execute("EXECUTE due_job_waiting('{merge,queue_yolov8}')").fetchone()[0] is True
    conn.execute("DEALLOCATE due_job_waiting")
    conn.execute("RESET plan_cache_mode")


def test_a_bulk_submit_refreshes_statistics_so_claims_read_the_oldest_by_index(pool: ConnectionPool,
                                                                             conn: psycopg.Connection) -> None:
    queues = [f"queue_service_{n}" for n in range(11)]
    images = [row[0] for row in conn.execute("INSERT INTO images (image_filename, image_path) SELECT n || '.jpg', "
                                             "'/' || n || '.jpg' FROM generate_series(1, 100) AS n RETURNING image_id")]
    tasks = [Task(str(uuid.uuid4()), image, f"{image}.jpg", f"/{image}.jpg", None, "2026-01-01", queue[6:], queue)
             for image in images for queue in queues]
    broker = JobTableBroker(JobQueue(pool))
    broker.publish(tasks)
    before = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass").fetchone()[0]
    broker.close()
    after = conn.execute("SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass").fetchone()[0]
    assert before != len(tasks) and after == len(tasks)  # the planner knows the backlog now
    plan = _plan(conn, queues)
    # The oldest few, read in id order by index; not every waiting task fetched and sorted.
    assert "jobs_claimable_order_idx" in plan and "Bitmap Heap Scan" not in plan.split("CTE expired")[0]


def test_complete_and_claim_in_one_round_trip(jobs: JobQueue, conn: psycopg.Connection) -> None:
    first, second = jobs.enqueue(NewJob("q", {})), jobs.enqueue(NewJob("q", {}))
    [job] = jobs.claim(["q"], "w", 1)
    assert [j.id for j in jobs.complete_and_claim([job.id], ["q"], "w", 5)] == [second]
    assert state_of(conn, first)[0] == "done"


def test_claim_across_queues_takes_the_oldest_first(jobs: JobQueue) -> None:
    ids = [jobs.enqueue(NewJob(queue, {})) for queue in ("a", "b", "a", "c", "b")]
    assert [job.id for job in jobs.claim(["b", "a"], "w", 3)] == [ids[0], ids[1], ids[2]]


def test_a_job_names_its_image_by_its_column_else_its_payload() -> None:
    assert Job(1, "merge", {"image_id": 9}, 3, 1, 5).about_image == 3
    assert Job(1, "merge", {"image_id": 9}, None, 1, 5).about_image == 9
    with pytest.raises(PermanentJobError, match="names no image"):
        _ = Job(1, "merge", {}, None, 1, 5).about_image


def test_a_claim_by_lanes_takes_no_more_of_each_queue_than_its_lane_asks(jobs: JobQueue,
                                                                          conn: psycopg.Connection) -> None:
    for queue in ("queue_yolov8", "queue_ollama", "merge", "consensus"):
        jobs.enqueue_many([NewJob(queue, {"n": n}) for n in range(5)])
    yolo, ollama, shared = jobs.complete_and_claim_lanes(
        (), [(["queue_yolov8"], 3), (["queue_ollama"], 1), (["merge", "consensus"], 4)], "w")
    assert [job.queue for job in yolo] == ["queue_yolov8"] * 3
    assert [job.queue for job in ollama] == ["queue_ollama"]
    assert len(shared) == 4 and {job.queue for job in shared} <= {"merge", "consensus"}
    assert [job.id for job in yolo] == sorted(job.id for job in yolo), "oldest first"
    running = dict(conn.execute("SELECT queue, count(*) FROM jobs WHERE state = 'running' GROUP BY queue").fetchall())
    assert running.get("queue_yolov8") == 3 and running.get("queue_ollama") == 1
    # What finished is recorded in the same round trip as the next claims.
    [again_yolo, again_ollama] = jobs.complete_and_claim_lanes(
        [job.id for job in yolo], [(["queue_yolov8"], 5), (["queue_ollama"], 0)], "w")
    assert len(again_yolo) == 2 and again_ollama == []
    assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] == 3



def test_a_claim_loops_round_trips_are_one_statement_whatever_the_lanes_ask(jobs: JobQueue,
                                                                           conn: psycopg.Connection) -> None:
    """The completion and every lane's claim are one statement, and its text does not change with what each lane
    asks for: one prepared statement per worker, one commit per round trip."""
    finished = jobs.enqueue(NewJob("q_a", {}))
    claimer = jobs.claimer()
    try:
        [[job], []] = claimer.complete_and_claim_lanes([], [(["q_a"], 1), (["q_b"], 0)], "w")
        assert job.id == finished
        waiting_a, waiting_b = jobs.enqueue(NewJob("q_a", {})), jobs.enqueue(NewJob("q_b", {}))
        [in_a], [in_b] = claimer.complete_and_claim_lanes([finished], [(["q_a"], 3), (["q_b"], 1)], "w")
        assert claimer._conn is not None
        statements = claimer._conn.execute("SELECT DISTINCT statement FROM pg_prepared_statements").fetchall()
    finally:
        claimer.close()
    assert len(statements) == 1, statements  # (prepared twice: psycopg types an empty list of ids apart)
    assert (in_a.id, in_b.id) == (waiting_a, waiting_b)
    writers = conn.execute("SELECT state::text, xmin::text FROM jobs WHERE id = ANY(%s) ORDER BY id",
                           ([finished, waiting_a, waiting_b],)).fetchall()
    assert [state for state, _ in writers] == ["done", "running", "running"]
    assert len({xmin for _, xmin in writers}) == 1, "written by one transaction"


def test_a_job_completed_in_a_round_trip_is_not_taken_again_for_its_expired_lease(
        jobs: JobQueue, conn: psycopg.Connection) -> None:
    job_id = jobs.enqueue(NewJob("q", {}))
    now = datetime.now(UTC) + timedelta(seconds=1)
    jobs.claim(["q"], "slow-worker", 1, now=now)
    # The slow worker finishes after its lease ran out, and claims again in the same round trip.
    later = now + timedelta(seconds=31)
    assert jobs.complete_and_claim([job_id], ["q"], "slow-worker", 5, now=later) == []
    assert state_of(conn, job_id) == ("done", 1, None)


def test_a_claim_loops_generic_plan_takes_its_jobs_by_primary_key_beside_a_backlog(database: Database,
                                                                                   conn: psycopg.Connection) -> None:
    """Each lane's limit is a parameter (one text per worker, whatever its lanes ask), which the generic plan costs
    at a tenth of the table: the claimed jobs must still be taken by their ids, not by reading the table."""
    conn.execute("INSERT INTO jobs (queue, payload, state) "
                 "SELECT 'merge', '{}', 'done' FROM generate_series(1, 100000)")
    conn.execute("INSERT INTO jobs (queue, payload) SELECT 'queue_yolov8', '{}' FROM generate_series(1, 30000)")
    conn.execute("INSERT INTO jobs (queue, payload) SELECT 'merge', '{}' FROM generate_series(1, 5)")
    conn.execute("ANALYZE jobs")
    with database.pool(min_size=1, max_size=1, name="one") as one:
        claimer = JobQueue(one).claimer()
        try:
            lanes = [(["queue_yolov8"], 2), (["merge", "consensus"], 3), (["queue_blip"], 1)]
            assert [len(jobs) for jobs in claimer.complete_and_claim_lanes([], lanes, "w")] == [2, 3, 0]
            assert claimer._conn is not None
            [name] = claimer._conn.execute("SELECT name FROM pg_prepared_statements").fetchone()
            plan = "\n".join(row[0] for row in claimer._conn.execute(
                f"EXPLAIN EXECUTE {name}('{{}}', 'w', '30 s', '{{queue_yolov8,queue_blip}}', '{{2,1}}', 3)"))
        finally:
            claimer.close()
    assert "Seq Scan" not in plan
    assert "Index Scan using jobs_pkey" in plan.split("CTE claimed")[1]
    # The lanes of one queue, whichever queue: the range of their own queue, not every queue's jobs in id order.
    ready = plan.split("Subquery Scan on ready")[1].split("Subquery Scan on expired")[0]
    assert "jobs_claimable_idx" in ready and "jobs_claimable_order_idx" not in ready


def test_a_queue_whose_name_holds_placeholder_characters_is_claimed_as_named(jobs: JobQueue) -> None:
    odd_name = "odd%(done)s%(queues)s%s$1"
    wanted = [jobs.enqueue(NewJob(odd_name, {"n": n})) for n in range(2)]
    jobs.enqueue(NewJob("other", {}))
    claimer = jobs.claimer()
    try:
        [odd, other] = claimer.complete_and_claim_lanes([], [([odd_name], 1), (["other"], 0)], "w")
        [alone] = claimer.complete_and_claim_lanes([], [([odd_name], 5)], "w")  # a lane of its own, written in
    finally:
        claimer.close()
    assert [job.id for job in odd] == wanted[:1] and other == [] and [job.id for job in alone] == wanted[1:]


def test_a_claim_of_many_one_queue_lanes_is_set_up_as_two_claims_whatever_its_lanes(jobs: JobQueue) -> None:
    """A service worker's eleven lanes: the executor sets up every claim of a statement at each execution, asking or
    not, so the lanes of one queue are two claims (ready, expired) read once per asking lane, not two per lane."""
    queues = [f"queue_service_{n}" for n in range(11)]
    jobs.enqueue_many([NewJob(queue, {}) for queue in queues])
    claimer = jobs.claimer()
    try:
        lanes = [([queue], 1 if queue == queues[4] else 0) for queue in queues]
        taken = claimer.complete_and_claim_lanes([], lanes, "w")
        assert [len(lane) for lane in taken] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        assert claimer._conn is not None
        [name] = claimer._conn.execute("SELECT name FROM pg_prepared_statements").fetchone()
        arguments = ", ".join(["'{}'", "'w'", "'30 s'", f"'{{{queues[4]}}}'", "'{1}'"])
        plan = "\n".join(row[0] for row in claimer._conn.execute(f"EXPLAIN EXECUTE {name}({arguments})"))
    finally:
        claimer.close()
    assert plan.count("LockRows") == 2, plan


def test_queues_whose_names_hold_an_arrays_syntax_are_claimed_as_named(jobs: JobQueue) -> None:
    names = ['a "quoted", {braced} name', "back\\slash\\", "NULL", "", " spaced "]
    wanted = {name: jobs.enqueue(NewJob(name, {})) for name in names}
    jobs.enqueue(NewJob("other", {}))
    claimer = jobs.claimer()
    try:
        taken = claimer.complete_and_claim_lanes([], [*[([name], 1) for name in names], (["other"], 0)], "w")
    finally:
        claimer.close()
    assert [[job.id for job in lane] for lane in taken] == [*[[wanted[name]] for name in names], []]
