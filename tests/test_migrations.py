"""Migrations: applied in order once, recorded, idempotent, never dropping data; the SQL enum matches Python."""

from __future__ import annotations

import re

import psycopg
import pytest

from windmill.catalog import Catalog
from windmill.db.connect import Database
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


def executed_sql(sql: str) -> str:
    """A migration's SQL without comments and without the bodies of the functions it defines: those run later, on
    the rows they are given (a trigger that removes a ledger entry once its task is answered)."""
    code = "\n".join(line for line in sql.lower().splitlines() if not line.strip().startswith("--"))
    return re.sub(r"\$(\w*)\$.*?\$\1\$", "$$", code, flags=re.DOTALL)


def test_executed_sql_leaves_out_only_comments_and_function_bodies() -> None:
    sql = "-- delete from x\ncreate function f() returns trigger as $body$ delete from t; $body$;\ndelete from u;"
    assert executed_sql(sql) == "create function f() returns trigger as $$;\ndelete from u;"


@pytest.mark.parametrize("destructive", ["drop table", "drop column", "drop schema", "truncate", "delete from",
                                         "drop view", "drop index"])
def test_migrations_never_drop_data(destructive: str) -> None:
    for migration in available_migrations():
        assert destructive not in executed_sql(migration.sql), migration.name


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
