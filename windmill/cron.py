"""Scheduling the periodic pass (the backfill and the job retention) inside PostgreSQL with pg_cron
(`windmill-cli cron install|uninstall|status`).

pg_cron keeps its jobs in one database of the server (`cron.database_name`) and can run them in any other
(`cron.schedule_in_database`, pg_cron ≥ 1.4): when Windmill's database is not that one, the job is managed
through a second connection to it, with the same credentials. Without pg_cron, `windmill-cli worker --role
scheduler` runs the same backfill on the same period.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from windmill.db.queries import query
from windmill.errors import WindmillError, first_line
from windmill.upkeep import DEFAULT_PAGE, DEFAULT_RETENTION

log = logging.getLogger(__name__)

JOB_NAME = "windmill-backfill"
DEFAULT_SCHEDULE = "* * * * *"
# The periodic pass with its defaults; cron_command() adds the arguments a deployment changed.
BACKFILL_COMMAND = query("cron_pass")
_INSTEAD = "`windmill-cli worker --role scheduler` runs the same backfill periodically instead"
PG_CRON_DEFAULT_DATABASE = "postgres"  # cron.database_name's default


@dataclass(frozen=True)
class CronSetup:
    """What the server says about pg_cron, as seen from Windmill's database."""

    installed: bool
    cron_database: str | None  # None: pg_cron is not loaded (not in shared_preload_libraries)
    database: str
    username: str
    assumed: bool = False  # cron_database could not be read (a superuser's setting): where pg_cron would be


@dataclass(frozen=True)
class CronStatus:
    available: bool
    reason: str | None = None  # why pg_cron cannot be used, when it cannot
    cron_database: str | None = None
    version: str | None = None
    job: dict[str, Any] | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)


def cron_setup(conn: psycopg.Connection) -> CronSetup:
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(query("pg_cron_setup")).fetchone()
    assert row is not None
    if not row.pop("may_read_settings"):
        # cron.database_name is readable by superusers and pg_read_all_settings members only, and pg_cron's
        # launcher is hidden from others in pg_stat_activity: the worker login (`cron status`) looks for the
        # extension here, else in pg_cron's default database.
        with conn.cursor(row_factory=dict_row) as cursor:
            found = cursor.execute(query("pg_cron_setup_unprivileged")).fetchone()
        assert found is not None
        here = found.pop("here")
        return CronSetup(**found, cron_database=found["database"] if here else PG_CRON_DEFAULT_DATABASE,
                         assumed=True)
    return CronSetup(**row)


def unavailable_reason(setup: CronSetup) -> str | None:
    """One sentence saying why pg_cron cannot run the backfill here, or None when it can."""
    if not setup.installed:
        return f"pg_cron is not installed on this PostgreSQL server; {_INSTEAD}"
    if setup.cron_database is None:
        return ("pg_cron is installed but not loaded (add it to shared_preload_libraries and restart PostgreSQL); "
                f"{_INSTEAD}")
    return None


def cron_command(*, page: int = DEFAULT_PAGE, retention_s: float = DEFAULT_RETENTION.total_seconds()) -> str:
    """What pg_cron runs: the periodic pass, with the page size and retention of the settings (pg_cron has no
    environment to read them from)."""
    if page == DEFAULT_PAGE and retention_s == DEFAULT_RETENTION.total_seconds():
        return BACKFILL_COMMAND
    command = sql.SQL(query("cron_pass_with_settings")).format(
        page=sql.Literal(int(page)), retention=sql.Literal(f"{float(retention_s):g} seconds"))
    return command.as_string(None)


def install_cron(conn: psycopg.Connection, *, schedule: str = DEFAULT_SCHEDULE, command: str = BACKFILL_COMMAND
                 ) -> str:
    """Create the pg_cron extension if needed and schedule (or reschedule) the periodic pass of this database.

    Idempotent: pg_cron upserts a job by name and user, so a second install updates the schedule in place.
    Returns a sentence saying what is scheduled.
    """
    setup = _usable_setup(conn)
    with _cron_connection(conn, setup) as cron:
        version = _ensure_extension(cron, setup)
        other = _job(cron, setup.database)
        if other is not None and other["database"] != setup.database:
            raise WindmillError(
                f"the pg_cron job {JOB_NAME} of user {setup.username} already runs the backfill of database "
                f"{other['database']}; uninstall it there first (`windmill-cli cron uninstall` against that database)")
        scheduled = {"job_name": JOB_NAME, "schedule": schedule, "command": command, "database": setup.database}
        try:
            if other is not None and other["username"] != setup.username:
                # deploy/pg_cron.sql's job (windmill_worker's), seen by a superuser: rescheduled, not doubled.
                cron.execute(query("cron_alter"), {**scheduled, "jobid": other["jobid"]})
                row: tuple[Any, ...] | None = (other["jobid"],)
            else:
                row = cron.execute(query("cron_schedule"), scheduled).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            raise WindmillError(
                f"user {setup.username} may not schedule pg_cron jobs in other databases (ask an administrator "
                f"to GRANT EXECUTE ON FUNCTION cron.schedule_in_database to it in database {setup.cron_database}); "
                f"{_INSTEAD}") from None
        except psycopg.Error as error:
            raise WindmillError(f"pg_cron refused the schedule {schedule!r}: {first_line(error)}") from None
    assert row is not None
    log.info("pg_cron job %s (%s) runs the backfill of %s", JOB_NAME, schedule, setup.database,
             extra={"action": "cron_installed"})
    owner = f" of user {other['username']}" if other is not None and other["username"] != setup.username else ""
    return (f"pg_cron {version} runs `{command}` in database {setup.database} on schedule "
            f"'{schedule}' (job {JOB_NAME}{owner}, id {row[0]}).")


def uninstall_cron(conn: psycopg.Connection) -> str:
    """Remove the backfill job of this database; the extension stays (other jobs may use it)."""
    setup = _usable_setup(conn)
    with _cron_connection(conn, setup) as cron:
        if _extension_version(cron) is None:
            return "pg_cron has no windmill-backfill job here (the extension is not created)."
        job = _job(cron, setup.database)
        if job is None or job["database"] != setup.database:
            return f"No pg_cron job {JOB_NAME} runs the backfill of database {setup.database}."
        cron.execute(query("cron_unschedule"), {"jobid": job["jobid"]})
    log.info("pg_cron job %s removed", JOB_NAME, extra={"action": "cron_uninstalled"})
    return f"Removed pg_cron job {JOB_NAME} (id {job['jobid']}) of database {setup.database}."


def cron_status(conn: psycopg.Connection, *, runs: int = 5) -> CronStatus:
    """Whether pg_cron can be used, and the backfill job with its latest runs when it is scheduled."""
    setup = cron_setup(conn)
    reason = unavailable_reason(setup)
    if reason is not None:
        return CronStatus(available=False, reason=reason)
    with _cron_connection(conn, setup) as cron:
        version = _extension_version(cron)
        if version is None and setup.assumed:
            return CronStatus(available=False, reason=(
                f"pg_cron's extension is neither in this database nor in {setup.cron_database}, pg_cron's default; "
                f"where it keeps its jobs (cron.database_name) only a superuser or a member of "
                f"pg_read_all_settings may read"))
        try:
            job = _job(cron, setup.database) if version is not None else None
        except psycopg.errors.InsufficientPrivilege:
            return CronStatus(available=False, cron_database=setup.cron_database, version=version, reason=(
                f"login {setup.username} may not read pg_cron's jobs in database {setup.cron_database}: "
                f"deploy/pg_cron.sql grants windmill_worker USAGE on schema cron there"))
        if job is not None and job["database"] != setup.database:
            job = None
        history: list[dict[str, Any]] = []
        if job is not None:
            with cron.cursor(row_factory=dict_row) as cursor:
                history = cursor.execute(query("cron_runs"), {"jobid": job["jobid"], "limit": runs}).fetchall()
    return CronStatus(available=True, cron_database=setup.cron_database, version=version, job=job, runs=history)


def _usable_setup(conn: psycopg.Connection) -> CronSetup:
    setup = cron_setup(conn)
    reason = unavailable_reason(setup)
    if reason is not None:
        raise WindmillError(reason)
    return setup


@contextmanager
def _cron_connection(conn: psycopg.Connection, setup: CronSetup) -> Iterator[psycopg.Connection]:
    """A connection to the database pg_cron keeps its jobs in: this one, or a second one with the same login."""
    if setup.cron_database == setup.database:
        yield conn
        return
    conninfo = make_conninfo(conn.info.dsn, dbname=setup.cron_database, password=conn.info.password or None)
    try:
        other = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as error:
        raise WindmillError(f"cannot connect to database {setup.cron_database}, where pg_cron keeps its jobs: "
                            f"{first_line(error)}") from None
    with other:
        yield other


def _extension_version(cron: psycopg.Connection) -> str | None:
    row = cron.execute(query("pg_cron_version")).fetchone()
    return None if row is None else str(row[0])


def _ensure_extension(cron: psycopg.Connection, setup: CronSetup) -> str:
    version = _extension_version(cron)
    if version is not None:
        return version
    try:
        cron.execute(query("create_pg_cron"))
    except psycopg.errors.InsufficientPrivilege:
        raise WindmillError(
            f"user {setup.username} may not create the pg_cron extension (ask an administrator to run "
            f"CREATE EXTENSION pg_cron in database {setup.cron_database}); {_INSTEAD}") from None
    version = _extension_version(cron)
    assert version is not None
    log.info("created the pg_cron extension in %s", setup.cron_database, extra={"action": "cron_extension_created"})
    return version


def _job(cron: psycopg.Connection, database: str) -> dict[str, Any] | None:
    """The job that runs `database`'s pass, whoever scheduled it (as far as this login may see), else this login's
    job of that name for another database."""
    with cron.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(query("cron_job"), {"job_name": JOB_NAME, "database": database}).fetchone()
