"""A PostgreSQL cluster of the benchmark's own, with production durability, migrated and discarded afterwards:
benchmarks that fill or reconfigure a database (`bench scale`, `bench notify`) never touch the user's."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from windmill.bench.chaos.servers import durability, durable_cluster
from windmill.catalog import Catalog
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.schema import init_database


@dataclass(frozen=True)
class Throwaway:
    database: Database
    url: str
    durability: dict[str, str]  # fsync, synchronous_commit, full_page_writes as the server reports them

    def conditions(self) -> str:
        return "production durability (" + ", ".join(f"{k}={v}" for k, v in self.durability.items()) + ")"


@contextmanager
def throwaway_database(catalog: Catalog, *, application_name: str = "windmill-bench") -> Iterator[Throwaway]:
    """A fresh durable cluster in a temporary directory, migrated, its services synced from `catalog`."""
    with tempfile.TemporaryDirectory(prefix="windmill-bench-") as work:
        os.chmod(work, 0o755)  # the server's unprivileged user keeps its data inside
        with durable_cluster(Path(work) / "home") as cluster:
            conninfo = cluster.status().conninfo
            assert conninfo is not None
            database = Database(conninfo, application_name=application_name)
            with database.connect() as conn:
                init_database(conn, catalog)
                settings = durability(conn)
            yield Throwaway(database, conninfo_to_url(conninfo), settings)
