"""Bringing a database up to date: migrations plus the services table synced from the catalog."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from windmill.catalog import Catalog
from windmill.db.catalog_sync import sync_services
from windmill.db.connect import Database, open_database
from windmill.db.migrations import Migration, applied_versions, available_migrations, migrate
from windmill.errors import WindmillError
from windmill.settings import Settings


def init_database(conn: psycopg.Connection, catalog: Catalog) -> list[Migration]:
    refuse_a_newer_schema(applied_versions(conn))
    applied = migrate(conn)
    sync_services(conn, catalog)
    return applied


def refuse_a_newer_schema(applied: set[int]) -> None:
    """Fail with a clear sentence when a newer Windmill migrated the database: this version does not know what its
    migrations changed (a job's payload, say: sql/0115), and its workers would fail or misread such rows. Said at
    once rather than by each job failing, and by `init-db` too, which said "up to date" after a rollback."""
    unknown = sorted(applied - {m.version for m in available_migrations()})
    if unknown:
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        raise WindmillError(f"a newer Windmill migrated this database (migration {unknown[-1]:04d}{more}, which "
                            f"this one does not have); upgrade Windmill here to the version that ran `init-db`")


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
    if sync_catalog:  # readers that write nothing (`export`, `web`: the read-only monitor role) leave it alone
        sync_services(conn, catalog)


@contextmanager
def open_migrated(settings: Settings, catalog: Catalog, *, application_name: str = "windmill",
                  sync_catalog: bool = True) -> Iterator[Database]:
    """The database (the configured one, or the embedded cluster while the block runs) with its schema checked
    up to date and its services table synced: what every command and worker opens before its work."""
    with open_database(settings, application_name=application_name) as database:
        with database.connect() as conn:
            ensure_schema(conn, catalog, may_migrate=settings.uses_embedded_database, sync_catalog=sync_catalog)
        yield database
