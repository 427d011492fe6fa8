"""The database a benchmark runs on: migrated, held open for the whole run, with a URL its subprocesses can use."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from windmill.catalog import Catalog
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.schema import open_migrated
from windmill.settings import Settings


@contextmanager
def bench_database(settings: Settings, catalog: Catalog) -> Iterator[tuple[Database, str]]:
    """The migrated database and a URL for bench subprocesses (the embedded cluster stays up until the block ends)."""
    with open_migrated(settings, catalog, application_name="windmill-bench") as database:
        yield database, settings.database_url or conninfo_to_url(database.conninfo)
