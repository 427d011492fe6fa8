"""Schema migrations: the numbered files in sql/, applied in order, each once, each in its own transaction."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources.abc import Traversable

import psycopg

from windmill.db.queries import query
from windmill.packaged import packaged_dir

log = logging.getLogger(__name__)
SCHEMA = "windmill"  # as sql/ names it: the migrations and sql/queries/migrations.sql write it out
_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
# Any constant: concurrent `init-db` runs take turns instead of racing on CREATE TABLE.
_MIGRATION_LOCK = 0x57494E44
# A migration's statement waits this long for a table lock, then the migration is tried again LOCK_RETRY_S later.
LOCK_TIMEOUT_S = 5.0
LOCK_RETRY_S = 1.0


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations(directory: Traversable | None = None) -> list[Migration]:
    """The migrations of sql/, or of another tree's sql/ directory (a benchmark's baseline), in order."""
    found = []
    for entry in (directory or packaged_dir("sql")).iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError("two migrations in sql/ share a number")
    return found


def applied_versions(conn: psycopg.Connection) -> set[int]:
    exists = conn.execute(query("migration_table_exists")).fetchone()
    if not exists or not exists[0]:
        return set()
    return {row[0] for row in conn.execute(query("applied_migrations"))}


def migrate(conn: psycopg.Connection, migrations: Sequence[Migration] | None = None) -> list[Migration]:
    """Apply every migration not yet recorded (of sql/, or those given); return those applied now. Never drops
    anything."""
    conn.autocommit = True
    applied_now = []
    with conn.transaction():
        conn.execute(query("migration_lock"), {"key": _MIGRATION_LOCK})
        conn.execute(query("create_migration_schema"))
        conn.execute(query("create_migration_table"))
    done = applied_versions(conn)
    for migration in available_migrations() if migrations is None else migrations:
        if migration.version in done:
            continue
        while True:
            try:
                applied = _apply(conn, migration)
                break
            except psycopg.errors.LockNotAvailable:
                _say_who_holds_the_lock(conn, migration)
                time.sleep(LOCK_RETRY_S)
        if applied:
            log.info("applied migration %04d_%s", migration.version, migration.name, extra={"action": "migrated"})
            applied_now.append(migration)
    return applied_now


def _apply(conn: psycopg.Connection, migration: Migration) -> bool:
    """Apply one migration in its own transaction; False when another process applied it meanwhile."""
    with conn.transaction():
        conn.execute(query("migration_lock"), {"key": _MIGRATION_LOCK})
        # Another process may have applied it while we waited for the lock.
        if migration.version in applied_versions(conn):
            return False
        conn.execute(query("migration_search_path"))
        conn.execute(query("migration_lock_timeout"), {"timeout": f"{int(LOCK_TIMEOUT_S * 1000)}ms"})
        conn.execute(migration.sql)  # no parameters: psycopg sends it as is
        conn.execute(query("record_migration"), {"version": migration.version, "name": migration.name})
    return True


def _say_who_holds_the_lock(conn: psycopg.Connection, migration: Migration) -> None:
    named = lock_holders(conn)
    log.warning("migration %04d_%s waited %g s for a lock on a table others hold, and gave up so as not to hold up "
                "the workers queued behind it; trying again in %g s. The oldest holders: %s", migration.version,
                migration.name, LOCK_TIMEOUT_S, LOCK_RETRY_S, named, extra={"action": "migration_waits"})


def lock_holders(conn: psycopg.Connection) -> str:
    """The oldest sessions holding a lock on Windmill's tables, as an operator finds them: pid, application, state."""
    holders = conn.execute(query("lock_holders")).fetchall()
    return "; ".join(_holder(*holder) for holder in holders) or "a session that has ended since"


def _holder(pid: int, application: str, state: str | None, for_s: float | None) -> str:
    if state is None or for_s is None:  # another login's session, whose state this login may not read
        return f"pid {pid} ({application}, another login's session: its state is not shown to this login)"
    return f"pid {pid} ({application}, {state}, in a transaction for {for_s:.0f} s)"
