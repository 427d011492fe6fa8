"""A backlog is counted in bounded time (sql/0116): each queue exact up to 1,000 waiting jobs, dead jobs or ledger
entries, estimated past that from one sample of the table, and flagged; small queues stay exact."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

BIG = 80_000  # past the cap, and tables of more pages than the sample draws (about 500)


def rows(conn: psycopg.Connection, sql: str, key: str) -> dict[str, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        return {row[key]: row for row in cursor.execute(sql).fetchall()}


@pytest.fixture
def backlog(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO images (image_filename, image_path) "
                 "SELECT 'i' || g || '.jpg', '/data/i' || g || '.jpg' FROM generate_series(1, %s) g", (BIG,))
    conn.execute("INSERT INTO jobs (queue, image_id, payload) SELECT 'queue_blip', image_id, '{}' FROM images")
    conn.execute("INSERT INTO jobs (queue, payload) SELECT 'queue_clip', '{}' FROM generate_series(1, 50)")
    conn.execute("INSERT INTO jobs (queue, payload, state, last_error) "
                 "SELECT 'queue_clip', '{}', 'failed', 'boom' FROM generate_series(1, 2)")
    conn.execute("INSERT INTO jobs (queue, payload, state) VALUES ('queue_clip', '{}', 'dead')")
    conn.execute("INSERT INTO jobs (queue, payload, state) SELECT 'queue_ocr', '{}', 'dead' "
                 "FROM generate_series(1, 1500)")
    conn.execute("INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id) "
                 "SELECT image_id, 'blip', 'queue_blip', gen_random_uuid() FROM images")
    conn.execute("INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id) "
                 "SELECT image_id, 'clip', 'queue_clip', gen_random_uuid() FROM images WHERE image_id <= 10")
    # Not analyzed: a bulk submit outruns the statistics, and the estimate must not lean on them.


def near(value: int, expected: int) -> bool:
    return 0.8 * expected <= value <= 1.2 * expected


def test_queue_depths_estimate_a_queue_past_the_cap_and_count_a_small_one_exactly(
        conn: psycopg.Connection, backlog: None) -> None:
    depths = rows(conn, "SELECT * FROM queue_depths", "queue")
    blip, clip, ocr = depths["queue_blip"], depths["queue_clip"], depths["queue_ocr"]
    assert blip["estimated"] and near(blip["queued"], BIG), blip
    assert blip["oldest_age_s"] is not None and blip["dead"] == 0
    states = ("queued", "scheduled", "retrying", "running", "expired_leases", "dead")
    assert [clip[state] for state in states] == [50, 0, 2, 0, 0, 1] and not clip["estimated"]
    # 1,500 rows on a few dozen pages: a sample of whole pages estimates them coarsely, never below the cap.
    assert ocr["estimated"] and 1000 < ocr["dead"] <= 2250 and ocr["queued"] == 0, ocr


def test_service_progress_and_the_ledger_counts_are_bounded_the_same_way(conn: psycopg.Connection,
                                                                         backlog: None) -> None:
    progress = rows(conn, "SELECT * FROM service_progress", "service")
    assert progress["blip"]["estimated"] and near(progress["blip"]["queued"], BIG)
    assert (progress["clip"]["queued"], progress["clip"]["estimated"]) == (52, False)
    ledger = rows(conn, "SELECT * FROM tasks_in_flight_counts()", "service")
    assert ledger["blip"]["estimated"] and near(ledger["blip"]["in_flight"], BIG), ledger["blip"]
    assert (ledger["clip"]["in_flight"], ledger["clip"]["estimated"]) == (10, False)
    assert ledger["blip"]["oldest_age_s"] is not None


def test_a_small_queue_behind_a_big_backlog_is_counted_from_its_own_index_range(conn: psycopg.Connection,
                                                                                backlog: None) -> None:
    """Five merge jobs queued behind 80,000 service tasks: each look-up reads the merge queue's own range, never
    the whole claimable index from its start (as an order by id alone or a generic plan of the loose scan did)."""
    conn.execute("INSERT INTO jobs (queue, payload) SELECT 'merge', '{}' FROM generate_series(1, 5)")
    # Analyzed, as autovacuum leaves a table soon after a bulk load: with statistics a moment's load has outrun
    # (or another test's, of an emptied table) the planner may read more until then.
    conn.execute("ANALYZE jobs")
    with conn.transaction():
        for _ in range(4):  # past the five custom plans a session's cached statement gets before a generic one
            merge = rows(conn, "SELECT * FROM queue_depths", "queue")["merge"]
        entries_read = conn.execute("SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index "
                                    "WHERE indrelid = 'jobs'::regclass").fetchone()[0]
    assert (merge["queued"], merge["estimated"]) == (5, False)
    # Four passes over 5 queues, each at most the cap's 1,001 entries per look-up, and a loose scan's probes.
    assert entries_read < 4 * 5 * 3 * 1001, entries_read


def index_entries_read(conn: psycopg.Connection, table: str) -> int:
    """Index entries this transaction's scans of `table` returned so far."""
    return conn.execute("SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) FROM pg_index "
                        "WHERE indrelid = %s::regclass", (table,)).fetchone()[0]


def test_dead_jobs_are_counted_through_their_queues_index_whatever_the_statistics_say(
        conn: psycopg.Connection) -> None:
    """Statistics taken before the jobs died describe no dead job: the planner then held jobs_dead_by_time_idx (every
    dead job, by time) as good as jobs_dead_idx (by queue), and each probe and count read every dead job."""
    conn.execute("INSERT INTO jobs (queue, payload) SELECT 'queue_clip', '{}' FROM generate_series(1, 50)")
    conn.execute("ANALYZE jobs")
    conn.execute("INSERT INTO jobs (queue, payload, state) SELECT 'queue_ocr', '{}', 'dead' "
                 "FROM generate_series(1, 30000)")
    conn.execute("INSERT INTO jobs (queue, payload, state) VALUES ('queue_clip', '{}', 'dead')")
    with conn.transaction():
        depths = rows(conn, "SELECT * FROM queue_depths", "queue")
        entries_read = index_entries_read(conn, "jobs")
    assert (depths["queue_clip"]["queued"], depths["queue_clip"]["dead"]) == (50, 1)
    assert depths["queue_ocr"]["estimated"] and depths["queue_ocr"]["dead"] > 1000
    # Two queues, each at most the cap's 1,001 entries per look-up, and the loose scans' probes.
    assert entries_read < 4 * 1001 + 100, entries_read


def test_the_ledger_is_counted_through_its_queue_index_whatever_the_statistics_say(
        conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO images (image_filename, image_path) "
                 "SELECT 'i' || g || '.jpg', '/data/i' || g || '.jpg' FROM generate_series(1, 30000) g")
    conn.execute("INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id) "
                 "SELECT image_id, 'clip', 'queue_clip', gen_random_uuid() FROM images WHERE image_id <= 10")
    conn.execute("ANALYZE service_tasks_in_flight")
    conn.execute("INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id) "
                 "SELECT image_id, 'blip', 'queue_blip', gen_random_uuid() FROM images")
    with conn.transaction():
        ledger = rows(conn, "SELECT * FROM tasks_in_flight_counts()", "service")
        entries_read = index_entries_read(conn, "service_tasks_in_flight")
    assert (ledger["clip"]["in_flight"], ledger["clip"]["estimated"]) == (10, False)
    assert ledger["blip"]["estimated"] and near(ledger["blip"]["in_flight"], 30000)
    assert entries_read < 2 * 1001 + 100, entries_read
