"""`cron install|uninstall|status` against a real pg_cron: a private cluster started with
shared_preload_libraries=pg_cron, the job scheduled from another database than pg_cron's own, run by pg_cron
within a minute; and the clear error where pg_cron is missing.

pg_cron is a test requirement (tests/run.sh installs postgresql-<major>-cron): without it these tests fail, they
do not skip.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import wait_until
from tests.test_monitoring import add_image, add_result
from windmill.catalog import Catalog
from windmill.cron import (
    BACKFILL_COMMAND,
    JOB_NAME,
    CronSetup,
    cron_status,
    install_cron,
    unavailable_reason,
    uninstall_cron,
)
from windmill.db.connect import Database
from windmill.db.embedded import DATABASE, EmbeddedPostgres, find_server_binaries
from windmill.db.schema import init_database
from windmill.errors import WindmillError

WINDMILL_DATABASE = "windmill_cron_test"  # not pg_cron's database: the job runs across databases


def pg_cron_library() -> Path:
    """Where the server looks for pg_cron.so; fails the test run with the fix when it is not there."""
    bin_dir = find_server_binaries()
    libdir = subprocess.run([str(bin_dir / "pg_config"), "--pkglibdir"], capture_output=True, text=True,
                            check=False).stdout.strip() if (bin_dir / "pg_config").exists() else ""
    library = Path(libdir or bin_dir.parent / "lib") / "pg_cron.so"
    if not library.exists():
        major = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True,
                               check=False).stdout.split()[-1].split(".")[0]
        pytest.fail(f"pg_cron is not installed for PostgreSQL {major} ({library} is missing): install it with "
                    f"`apt-get install postgresql-{major}-cron` (tests/run.sh does)")
    return library


@pytest.fixture(scope="module")
def cron_server(catalog: Catalog) -> Iterator[str]:
    """A private cluster with pg_cron loaded, keeping its jobs in the `windmill` database; yields the conninfo of
    a migrated Windmill database next to it."""
    pg_cron_library()
    with tempfile.TemporaryDirectory(prefix="windmill-cron-") as home:
        cluster = EmbeddedPostgres(Path(home), fast=True, settings={
            "shared_preload_libraries": "pg_cron",
            "cron.database_name": DATABASE,
            "cron.host": "127.0.0.1",  # pg_cron reaches the job's database over TCP, as the cluster listens
        })
        conninfo = cluster.acquire()
        try:
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{WINDMILL_DATABASE}"')
            windmill_conninfo = make_conninfo(conninfo, dbname=WINDMILL_DATABASE)
            with Database(windmill_conninfo).connect() as conn:
                init_database(conn, catalog)
            yield windmill_conninfo
        finally:
            cluster.discard()


@pytest.fixture
def cron_conn(cron_server: str) -> Iterator[psycopg.Connection]:
    with Database(cron_server).connect() as conn:
        conn.execute("TRUNCATE images, results, merged_boxes, consensus, postprocessing, jobs RESTART IDENTITY CASCADE")
        yield conn


def cron_jobs(cron_server: str) -> list[tuple[str, str, str, str]]:
    with psycopg.connect(make_conninfo(cron_server, dbname=DATABASE)) as conn:
        return conn.execute("SELECT jobname, schedule, command, database FROM cron.job ORDER BY jobid").fetchall()


def test_install_schedules_the_backfill_of_this_database_and_pg_cron_runs_it(
        cron_server: str, cron_conn: psycopg.Connection) -> None:
    message = install_cron(cron_conn, schedule="*/5 * * * *")
    assert f"database {WINDMILL_DATABASE}" in message and "'*/5 * * * *'" in message
    assert cron_jobs(cron_server) == [(JOB_NAME, "*/5 * * * *", BACKFILL_COMMAND, WINDMILL_DATABASE)]
    install_cron(cron_conn)  # a second install updates the job in place
    assert cron_jobs(cron_server) == [(JOB_NAME, "* * * * *", BACKFILL_COMMAND, WINDMILL_DATABASE)]

    # A lost consensus job; pg_cron's next minute repairs it.
    image = add_image(cron_conn, "a.jpg")
    add_result(cron_conn, image, "nsfw2")
    cron_conn.execute("DELETE FROM jobs")
    wait_until(lambda: cron_conn.execute("SELECT count(*) FROM jobs WHERE queue = 'consensus'").fetchone()[0],
               timeout=75, interval=0.5, message="pg_cron to run the backfill")
    status = cron_status(cron_conn)
    assert status.available and status.cron_database == DATABASE and status.version
    assert status.job is not None and status.job["database"] == WINDMILL_DATABASE
    wait_until(lambda: cron_status(cron_conn).runs and cron_status(cron_conn).runs[0]["status"] == "succeeded",
               timeout=10, message="the run to be recorded as succeeded")

    assert "Removed pg_cron job" in uninstall_cron(cron_conn)
    assert cron_jobs(cron_server) == []
    assert "No pg_cron job" in uninstall_cron(cron_conn)
    assert cron_status(cron_conn).job is None


def test_a_bad_schedule_is_one_sentence(cron_conn: psycopg.Connection) -> None:
    with pytest.raises(WindmillError, match=r"^pg_cron refused the schedule 'every minute': invalid schedule"):
        install_cron(cron_conn, schedule="every minute")


def test_the_job_name_is_not_taken_over_by_another_database(cron_server: str, cron_conn: psycopg.Connection,
                                                            catalog: Catalog) -> None:
    install_cron(cron_conn)
    try:
        # pg_cron's own database can hold a Windmill schema too: its install sees the job of the other one.
        with Database(make_conninfo(cron_server, dbname=DATABASE)).connect() as cron_db:
            init_database(cron_db, catalog)
            with pytest.raises(WindmillError, match=f"already runs the backfill of database {WINDMILL_DATABASE}"):
                install_cron(cron_db)
            assert "No pg_cron job" in uninstall_cron(cron_db)
    finally:
        uninstall_cron(cron_conn)
    with Database(make_conninfo(cron_server, dbname=DATABASE)).connect() as cron_db:
        assert "database windmill " in install_cron(cron_db) + " "
        assert cron_jobs(cron_server) == [(JOB_NAME, "* * * * *", BACKFILL_COMMAND, DATABASE)]
        uninstall_cron(cron_db)


def test_without_pg_cron_loaded_install_says_to_use_the_scheduler(conn: psycopg.Connection) -> None:
    """The session's server has no shared_preload_libraries=pg_cron."""
    with pytest.raises(WindmillError) as raised:
        install_cron(conn)
    message = str(raised.value)
    assert message.startswith("pg_cron is installed but not loaded (add it to shared_preload_libraries")
    assert message.endswith("`windmill-cli worker --role scheduler` runs the same backfill periodically instead")
    assert len(message.split(". ")) == 1, "one sentence"
    assert cron_status(conn).reason == message
    with pytest.raises(WindmillError, match="not loaded"):
        uninstall_cron(conn)


def test_a_server_without_pg_cron_says_so() -> None:
    missing = CronSetup(installed=False, cron_database=None, database="windmill", username="windmill")
    assert unavailable_reason(missing) == ("pg_cron is not installed on this PostgreSQL server; "
                                           "`windmill-cli worker --role scheduler` runs the same backfill "
                                           "periodically instead")
    loaded = CronSetup(installed=True, cron_database="postgres", database="windmill", username="windmill")
    assert unavailable_reason(loaded) is None


def test_cron_status_works_for_a_login_that_may_not_read_pg_crons_settings(
        cron_server: str, cron_conn: psycopg.Connection) -> None:
    # cron.database_name is a superuser's setting: `cron status` refused windmill_worker and windmill_owner alike
    # (and told them to run it as the owner).
    with psycopg.connect(cron_server, autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'cron_status_reader'").fetchone() is None:
            admin.execute("CREATE ROLE cron_status_reader LOGIN")
        admin.execute(f'GRANT CONNECT ON DATABASE "{WINDMILL_DATABASE}", "{DATABASE}", postgres TO cron_status_reader')
    install_cron(cron_conn)  # the extension created in pg_cron's database, and a job
    uninstall_cron(cron_conn)
    reader = make_conninfo(cron_server, user="cron_status_reader")
    with psycopg.connect(make_conninfo(reader, dbname=DATABASE), autocommit=True) as before_the_grant:
        refused = cron_status(before_the_grant)
    assert refused.reason == ("login cron_status_reader may not read pg_cron's jobs in database windmill: "
                              "deploy/pg_cron.sql grants windmill_worker USAGE on schema cron there")
    with psycopg.connect(make_conninfo(cron_server, dbname=DATABASE), autocommit=True) as admin:
        admin.execute("GRANT USAGE ON SCHEMA cron TO cron_status_reader")  # as deploy/pg_cron.sql does the worker
    with psycopg.connect(make_conninfo(reader, dbname=DATABASE), autocommit=True) as in_pg_crons_database:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            in_pg_crons_database.execute("SELECT current_setting('cron.database_name', true)")
        status = cron_status(in_pg_crons_database)  # the extension is here: this is where pg_cron keeps its jobs
    assert status.available and status.cron_database == DATABASE and status.version
    # Elsewhere, pg_cron's default database (postgres) is looked at; this server keeps its jobs in another one.
    with psycopg.connect(reader, autocommit=True) as elsewhere:
        status = cron_status(elsewhere)
    assert not status.available and status.reason == (
        "pg_cron's extension is neither in this database nor in postgres, pg_cron's default; where it keeps its jobs "
        "(cron.database_name) only a superuser or a member of pg_read_all_settings may read")
