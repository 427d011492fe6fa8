"""Reading one snapshot: a REPEATABLE READ, READ ONLY transaction, so rows written meanwhile do not mix in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.pq import TransactionStatus

from windmill.db.queries import query


@contextmanager
def read_only_snapshot(conn: psycopg.Connection) -> Iterator[None]:
    """A transaction that reads one snapshot; inside a caller's transaction, the caller's snapshot rules."""
    starts_transaction = conn.info.transaction_status == TransactionStatus.IDLE
    with conn.transaction():
        if starts_transaction:
            conn.execute(query("read_only_snapshot"))
        yield
