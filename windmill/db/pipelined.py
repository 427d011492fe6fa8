"""A transaction sent as one pipeline: its BEGIN and COMMIT are statements of the pipeline, so the server is waited
for only where a result is needed and once at the end.

psycopg's own transaction block (`conn.transaction()`) waits for the server at BEGIN and at COMMIT: without a pipeline
each of them is a round trip of its own, and in pipeline mode psycopg syncs after each. A merge (a read, then a
write) was four round trips; as one pipeline it is two: BEGIN and the read go together, the write and COMMIT together.
Each round trip is a wait and a wake-up for both the worker and its backend.

Results fetched inside the block wait for the server then (a Flush, not a Sync: the transaction stays open); results
not fetched inside arrive with the COMMIT and are read from their cursors after the block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.pq import TransactionStatus

from windmill.db.queries import query


@contextmanager
def pipelined_transaction(conn: psycopg.Connection) -> Iterator[None]:
    """One transaction, sent as a pipeline, on an autocommit connection outside any transaction. A statement that
    fails aborts it: what follows is skipped, the error is raised, and the transaction is rolled back here (the
    pipeline skipped the COMMIT, so the connection would otherwise stay in a failed block). Inside a caller's
    transaction (or on a connection that opens its own), a savepoint of it, as `conn.transaction()` gives."""
    if not conn.autocommit or conn.info.transaction_status != TransactionStatus.IDLE:
        with conn.transaction():
            yield
        return
    try:
        with conn.pipeline():
            conn.execute(query("begin_pipelined"))
            yield
            conn.execute(query("commit_pipelined"))
    except BaseException:
        _roll_back(conn)
        raise


def _roll_back(conn: psycopg.Connection) -> None:
    if conn.closed or conn.info.transaction_status == TransactionStatus.IDLE:
        return
    try:
        conn.rollback()
    except psycopg.Error:
        # A connection that cannot roll back is broken: its owner (a pool, a claimer) replaces it.
        conn.close()
