"""Migrations: applied in order once, recorded, idempotent, never dropping data; the SQL enum matches Python."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PYTHON, wait_until
from windmill.catalog import Catalog
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.migrations import available_migrations, migrate
from windmill.db.schema import init_database
from windmill.jobs import JobState


def test_migrations_apply_once_and_a_second_run_changes_nothing(empty_database: str, catalog: Catalog) -> None:
    with Database(empty_database).connect() as conn:
        first = init_database(conn, catalog)
        conn.execute("INSERT INTO images (image_filename, image_path) VALUES ('a.jpg', '/a.jpg')")
        second = init_database(conn, catalog)
        recorded = [row[0] for row in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    assert [m.version for m in first] == [m.version for m in available_migrations()]
    assert second == []
    assert recorded == [m.version for m in available_migrations()]
    assert images == 1


# The body of a function or procedure runs when it is called, not when the migration applies (the job retention
# deletes old done jobs); DO blocks run at once and are checked like any statement.
_ROUTINE_BODY = re.compile(r"(create\s+(?:or\s+replace\s+)?(?:function|procedure)\b.*?\$\$).*?(\$\$)", re.S)


def run_when_applied(sql: str) -> str:
    """A migration's statements as they run when it is applied: lower case, no comments, no routine bodies."""
    code = "\n".join(line for line in sql.lower().splitlines() if not line.strip().startswith("--"))
    return _ROUTINE_BODY.sub(r"\1\2", code)


@pytest.mark.parametrize("destructive", ["drop table", "drop column", "drop schema", "truncate", "delete from",
                                         "drop view", "drop index"])
def test_migrations_never_drop_data(destructive: str) -> None:
    for migration in available_migrations():
        assert destructive not in run_when_applied(migration.sql), migration.name


def test_only_routine_bodies_are_left_out_of_that_check() -> None:
    assert "delete from" in run_when_applied("DO $$ BEGIN DELETE FROM jobs; END $$;")
    assert "delete from" in run_when_applied("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;\n"
                                              "DELETE FROM jobs;")
    assert "delete from" not in run_when_applied("CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS $$\n"
                                                  "DELETE FROM jobs $$;")


def test_concurrent_init_db_runs_take_turns(empty_database: str, catalog: Catalog) -> None:
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(Database(empty_database).conninfo) as conn:
                migrate(conn)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Database(empty_database).connect() as conn:
        assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(available_migrations())


def test_job_state_enum_matches_sql(conn: psycopg.Connection) -> None:
    labels = [row[0] for row in conn.execute("SELECT unnest(enum_range(NULL::job_state))::text")]
    assert labels == [state.value for state in JobState]


def test_services_table_mirrors_the_catalog(conn: psycopg.Connection, catalog: Catalog) -> None:
    rows = dict(conn.execute("SELECT name, is_detector FROM services").fetchall())
    assert rows == {service.name: service.is_detector for service in catalog.services}
    voters = {row[0] for row in conn.execute("SELECT name FROM services WHERE consensus_enabled")}
    assert voters == {s.name for s in catalog.services if s.category != "postprocessing"}


def test_migrations_are_read_from_another_tree_when_given_one(tmp_path: Path) -> None:
    """A benchmark's baseline side migrates from another tree's sql/ (windmill/bench/answer_cost.py)."""
    (tmp_path / "0002_second.sql").write_text("SELECT 2;")
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "queries").mkdir()
    (tmp_path / "notes.txt").write_text("not a migration")
    assert [(m.version, m.name, m.sql) for m in available_migrations(tmp_path)] == [
        (1, "first", "SELECT 1;"), (2, "second", "SELECT 2;")]


def test_an_older_windmill_refuses_a_database_a_newer_one_migrated(empty_database: str, catalog: Catalog,
                                                                    worker_env: dict[str, str]) -> None:
    # Workers of the previous version failed every postprocess job of the new payload (sql/0115), and a rolled-back
    # `init-db` said the schema was up to date.
    with Database(empty_database).connect() as conn:
        init_database(conn, catalog)
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9998, 'from_the_future'), "
                     "(9999, 'further_still')")
    env = {**worker_env, "WINDMILL_DATABASE_URL": conninfo_to_url(Database(empty_database).conninfo)}
    for command in (["init-db"], ["worker", "--role", "merger"], ["status"]):
        done = subprocess.run([PYTHON, "-m", "windmill", *command], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert ("a newer Windmill migrated this database (migration 9999 and 1 more, which this one does not "
                "have); upgrade Windmill here") in done.stderr, (command, done.stderr)
        assert "Traceback" not in done.stderr


def test_a_migration_waiting_for_a_lock_gives_way_to_the_workers_and_names_who_holds_it(
        empty_database: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # An analyst's forgotten transaction held a lock: init-db said nothing for minutes, and every worker that
    # wanted the table queued behind its waiting DDL statement.
    import logging
    import threading

    import windmill.db.migrations as migrations

    monkeypatch.setattr(migrations, "LOCK_TIMEOUT_S", 0.3)
    monkeypatch.setattr(migrations, "LOCK_RETRY_S", 0.1)
    everything = available_migrations()
    # The latest migration that needs the view to itself (sql/0123), and the ones before it.
    waiting = max(index for index, migration in enumerate(everything)
                  if "CREATE OR REPLACE VIEW recent_failures" in migration.sql)
    last = everything[waiting]
    database = Database(empty_database)
    with database.connect() as conn:
        migrate(conn, everything[:waiting])
    caplog.set_level(logging.WARNING, logger="windmill.db.migrations")
    with psycopg.connect(database.conninfo, application_name="an-analysts-psql") as holder:
        holder.execute("SELECT count(*) FROM windmill.recent_failures")  # and the transaction left open
        def migrate_the_rest() -> None:
            with database.connect() as conn:
                migrate(conn)

        migrating = threading.Thread(target=migrate_the_rest)
        migrating.start()
        wait_until(lambda: "an-analysts-psql" in caplog.text, timeout=20, message="the warning naming the holder")
        with psycopg.connect(database.conninfo, options="-c statement_timeout=5s") as worker:
            worker.execute("SELECT count(*) FROM windmill.recent_failures")  # not queued for good behind init-db
        holder.rollback()
        migrating.join(timeout=30)
    assert not migrating.is_alive()
    assert f"migration {last.version:04d}_{last.name} waited 0.3 s for a lock" in caplog.text
    with database.connect() as conn:
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone() == (everything[-1].version,)
