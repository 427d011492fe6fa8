"""Bringing a database up to date: migrations plus the services table synced from the catalog."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import psycopg

from windmill.catalog import Catalog
from windmill.db.catalog_sync import sync_services
from windmill.db.connect import Database, open_database
from windmill.db.migrations import Migration, applied_versions, available_migrations, migrate
from windmill.db.queries import fetch_value, query
from windmill.errors import WindmillError
from windmill.settings import Settings


def init_database(conn: psycopg.Connection, catalog: Catalog) -> list[Migration]:
    refuse_a_newer_schema(applied_versions(conn))
    applied = migrate(conn)
    sync_services(conn, catalog)
    return applied


class SchemaOvertaken(WindmillError):
    """A newer Windmill migrated the database while this process was using it."""

    _said = False
    _saying = threading.Lock()

    def say(self, log: logging.Logger) -> None:
        """Log the sentence once per process: `run` holds every role, and each role's heartbeat finds the same
        migration within a few milliseconds of the others."""
        with SchemaOvertaken._saying:
            if SchemaOvertaken._said:
                return
            SchemaOvertaken._said = True
        log.error("%s", self, extra={"action": "schema_overtaken"})


def refuse_a_newer_schema(applied: set[int]) -> None:
    """Fail with a clear sentence when a newer Windmill migrated the database: this version does not know what its
    migrations changed (a job's payload, say: sql/0115), and its workers would fail or misread such rows. Said at
    once rather than by each job failing, and by `init-db` too, which said "up to date" after a rollback."""
    unknown = sorted(applied - {m.version for m in available_migrations()})
    if unknown:
        raise WindmillError(f"a newer Windmill migrated this database ({_named(unknown)}, which this one does not "
                            f"have); upgrade Windmill here to the version that ran `init-db`")


def refuse_missing_grants(conn: psycopg.Connection, newest: int) -> None:
    """Fail with a clear sentence when deploy/roles.sql has not run since `init-db` applied the newest migration and
    this login depends on its grants: it would be refused each new object, one job after another until each is dead
    (sql/0129). A login with the owner's privileges, or a deployment whose roles.sql never ran since sql/0129, is
    not asked."""
    login, depends, may_read = conn.execute(query("login_needs_roles_sql")).fetchone() or ("", False, False)
    if not depends:
        return
    if may_read:
        through = fetch_value(conn, "roles_granted_through")
        if through is None or through >= newest:
            return
    raise WindmillError(f"deploy/roles.sql has not been run since `init-db` applied migration {newest:04d}: {login} "
                        f"lacks the grants on what that upgrade added, and its work would be refused; run "
                        f"deploy/roles.sql again (as the superuser, the copy of the release that ran `init-db`), as "
                        f"after every `init-db` that upgrades (deploy/README.md)")


@cache
def newest_known_migration() -> int:
    """The highest migration this version has: a running worker asks the database for any above it."""
    return max(m.version for m in available_migrations())


def overtaken(unknown: list[int], who: str = "this worker", stopped: str = "it stopped taking work"
              ) -> SchemaOvertaken:
    """What a worker (or a stream: `who`, what it `stopped` doing) says when it finds migrations it does not have: it
    was started before `init-db` of a newer version ran (the schema was up to date then), and goes on no further."""
    return SchemaOvertaken(f"a newer Windmill migrated this database while {who} ran ({_named(unknown)}, which this "
                           f"one does not have); {stopped}: upgrade Windmill here to the version that ran `init-db`")


def refuse_if_overtaken(conn: psycopg.Connection, who: str, stopped: str) -> None:
    """For a command that writes for as long as it runs (`submit --follow`, `images watch`), before each page it
    writes: raises SchemaOvertaken when a newer Windmill migrated the database since the command checked it at start.
    Its writes would otherwise follow a contract the new workers no longer read (a job's payload, sql/0115); a worker
    asks the same at each heartbeat (windmill.worker.presence). One indexed look-up per page."""
    unknown = newer_migrations(conn)
    if unknown:
        raise overtaken(unknown, who, stopped)


def newer_migrations(conn: psycopg.Connection) -> list[int]:
    """The migrations the database has and this version does not (a newer Windmill's `init-db` ran since)."""
    return list(fetch_value(conn, "migrations_newer_than", {"newest_known": newest_known_migration()}))


def _named(unknown: list[int]) -> str:
    more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
    return f"migration {max(unknown):04d}{more}"


def ensure_schema(conn: psycopg.Connection, catalog: Catalog, *, may_migrate: bool, sync_catalog: bool = True) -> None:
    """Fail with a clear sentence when migrations are pending and this process may not apply them
    (a configured database is migrated by `init-db`; the embedded one is migrated on first use), or when a newer
    Windmill migrated the database."""
    applied = applied_versions(conn)
    refuse_a_newer_schema(applied)
    pending = {m.version for m in available_migrations()} - applied
    if pending and not may_migrate:
        raise WindmillError("the database schema is not up to date; run `windmill-cli init-db` first")
    if pending:
        migrate(conn)
    refuse_missing_grants(conn, max(applied | pending))
    if sync_catalog:  # readers that write nothing (`export`, `web`: the read-only monitor role) leave it alone
        sync_services(conn, catalog)


@contextmanager
def open_migrated(settings: Settings, catalog: Catalog, *, application_name: str = "windmill",
                  sync_catalog: bool = True, waiting: str | None = None) -> Iterator[Database]:
    """The database (the configured one, or the embedded cluster while the block runs) with its schema checked
    up to date and its services table synced: what every command and worker opens before its work. `waiting`
    (a worker's name for its log lines): wait for a server that is away rather than fail (Database.connect_when_up)."""
    with open_database(settings, application_name=application_name) as database:
        with (database.connect_when_up(waiting) if waiting else database.connect()) as conn:
            ensure_schema(conn, catalog, may_migrate=settings.uses_embedded_database, sync_catalog=sync_catalog)
        yield database
