"""Job retention: done jobs older than the retention are deleted in batches (the periodic pass, `jobs prune`); dead
jobs stay until pruned explicitly, and then their work is the backfill's again."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from tests.test_monitoring import add_image, add_job, add_result
from windmill.cron import BACKFILL_COMMAND, cron_command
from windmill.errors import ConfigError
from windmill.settings import settings_from_mapping
from windmill.upkeep import prune_jobs, run_backfill, scheduled_pass

HOUR = 3600


def states(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT state::text, count(*) FROM jobs GROUP BY 1").fetchall())


@pytest.fixture
def history(conn: psycopg.Connection) -> None:
    """Jobs of every state, two hours old, and done jobs of a moment ago."""
    for state in ("done", "done", "done", "dead", "queued", "failed"):
        add_job(conn, "merge", state, seconds_ago=2 * HOUR)
    add_job(conn, "merge", "running", owner="w", lease_s=30, seconds_ago=2 * HOUR)
    for _ in range(2):
        add_job(conn, "merge", "done", seconds_ago=60)


def test_prune_deletes_only_done_jobs_older_than_the_retention(conn: psycopg.Connection, history: None) -> None:
    assert prune_jobs(conn, timedelta(hours=1)) == 3
    assert states(conn) == {"queued": 1, "running": 1, "done": 2, "failed": 1, "dead": 1}
    assert prune_jobs(conn, timedelta(hours=1)) == 0


def test_dead_jobs_go_only_when_asked(conn: psycopg.Connection, history: None) -> None:
    assert prune_jobs(conn, timedelta(hours=1), dead=True) == 4
    assert "dead" not in states(conn)
    assert prune_jobs(conn, timedelta(0)) == 2  # the recent done jobs, with a retention of zero


def test_prune_works_in_batches(conn: psycopg.Connection) -> None:
    for _ in range(5):
        add_job(conn, "merge", "done", seconds_ago=2 * HOUR)
    assert [conn.execute("SELECT prune_jobs_batch(interval '1 hour', false, 2)").fetchone()[0]
            for _ in range(4)] == [2, 2, 1, 0]
    for _ in range(5):
        add_job(conn, "merge", "done", seconds_ago=2 * HOUR)
    # Each batch is its own transaction; p_max_batches bounds one call (what a periodic pass does).
    assert conn.execute("CALL prune_jobs(interval '1 hour', false, 2, 2)").fetchone() == (4,)
    assert prune_jobs(conn, timedelta(hours=1), batch=2) == 1


def test_the_periodic_pass_runs_a_backfill_page_then_the_retention(conn: psycopg.Connection, history: None) -> None:
    image = add_image(conn, "a.jpg")
    add_result(conn, image, "nsfw2")
    conn.execute("DELETE FROM jobs WHERE image_id = %s", (image,))  # the consensus job is lost
    outcome = scheduled_pass(conn, retention=timedelta(hours=1))
    assert (outcome.queued, outcome.pruned) == ({"consensus": 1}, 3)
    assert scheduled_pass(conn, retention=timedelta(seconds=30)).pruned == 2


def test_a_pruned_dead_job_hands_its_work_back_to_the_backfill(conn: psycopg.Connection) -> None:
    image = add_image(conn, "a.jpg")
    add_result(conn, image, "nsfw2")
    conn.execute("UPDATE jobs SET state = 'dead', updated_at = now() - interval '2 hours'")
    assert run_backfill(conn) == {}, "the newest job of the work gave up: the operator's call"
    assert prune_jobs(conn, timedelta(hours=1), dead=True) == 1
    assert run_backfill(conn) == {"consensus": 1}


def test_prune_refuses_a_negative_age(conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_older_than must be zero or more"):
        prune_jobs(conn, timedelta(seconds=-1))


def test_jobs_prune_on_the_command_line(run, conn: psycopg.Connection, history: None) -> None:
    result = run("jobs", "prune")
    assert (result.exit_code, result.output) == (0, "Pruned 3 done job(s) older than 3600 s.\n")
    result = run("jobs", "prune", "--dead", "--older-than", "0")
    assert (result.exit_code, result.output) == (0, "Pruned 3 done or dead job(s) older than 0 s.\n")
    assert states(conn) == {"queued": 1, "running": 1, "failed": 1}
    result = run("jobs", "prune", "--older-than", "-5")
    assert result.exit_code == 2 and "-5" in result.output  # click's one-line usage error


@pytest.mark.parametrize(("environ", "page", "retention"), [
    ({}, 1000, 3600.0),
    ({"WINDMILL_BACKFILL_PAGE": "250", "WINDMILL_JOB_RETENTION_S": "600"}, 250, 600.0),
])
def test_page_and_retention_come_from_the_environment(environ: dict[str, str], page: int, retention: float) -> None:
    settings = settings_from_mapping(environ)
    assert (settings.backfill_page, settings.job_retention_s) == (page, retention)


@pytest.mark.parametrize(("name", "value"), [("WINDMILL_BACKFILL_PAGE", "0"), ("WINDMILL_BACKFILL_PAGE", "many"),
                                             ("WINDMILL_JOB_RETENTION_S", "-1"), ("WINDMILL_JOB_RETENTION_S", "soon")])
def test_a_bad_page_or_retention_is_one_sentence_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be"):
        settings_from_mapping({name: value})


def test_the_pg_cron_command_carries_the_settings_pg_cron_cannot_read(conn: psycopg.Connection,
                                                                       history: None) -> None:
    assert cron_command() == BACKFILL_COMMAND == "CALL windmill.scheduled_pass()"
    command = cron_command(page=5, retention_s=90 * 60)
    assert command == "CALL windmill.scheduled_pass(p_page => 5, p_retention => interval '5400 seconds')"
    assert conn.execute(command).fetchone() == ({}, 3)  # what pg_cron runs: the recent done jobs stay
