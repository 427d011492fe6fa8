"""The database a benchmark runs on: migrated, held open for the whole run, with a URL its subprocesses can use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from windmill.catalog import Catalog
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.queries import query
from windmill.db.schema import open_migrated
from windmill.settings import Settings


@contextmanager
def bench_database(settings: Settings, catalog: Catalog) -> Iterator[tuple[Database, str]]:
    """The migrated database and a URL for bench subprocesses (the embedded cluster stays up until the block ends)."""
    with open_migrated(settings, catalog, application_name="windmill-bench") as database:
        yield database, settings.database_url or conninfo_to_url(database.conninfo)


def settle_disk(conn: psycopg.Connection) -> bool:
    """Before a timed run: a CHECKPOINT, then every file system's dirty pages written out (`sync`), so that what
    earlier runs and the run's set-up wrote (copied and dropped databases, the other side's run) is not flushed in
    the middle of this one. On ext4 a WAL flush waits for that writeback: every commit of the run stalled with it,
    the cores idle for up to a second. The run's own writes still reach the disk at each commit. False when the
    login may not checkpoint (then only `sync` ran)."""
    try:
        conn.execute(query("bench_checkpoint"))
        checkpointed = True
    except psycopg.errors.InsufficientPrivilege:
        checkpointed = False
    os.sync()
    return checkpointed
