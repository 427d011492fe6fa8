"""Bringing a database up to date: migrations plus the services table synced from the catalog."""

from __future__ import annotations

import psycopg

from windmill.catalog import Catalog
from windmill.db.catalog_sync import sync_services
from windmill.db.migrations import Migration, applied_versions, available_migrations, migrate
from windmill.errors import WindmillError


def init_database(conn: psycopg.Connection, catalog: Catalog) -> list[Migration]:
    applied = migrate(conn)
    sync_services(conn, catalog)
    return applied


def ensure_schema(conn: psycopg.Connection, catalog: Catalog, *, may_migrate: bool) -> None:
    """Fail with a clear sentence when migrations are pending and this process may not apply them
    (a configured database is migrated by `init-db`; the embedded one is migrated on first use)."""
    pending = {m.version for m in available_migrations()} - applied_versions(conn)
    if pending and not may_migrate:
        raise WindmillError("the database schema is not up to date; run `windmill-cli init-db` first")
    if pending:
        migrate(conn)
    sync_services(conn, catalog)
