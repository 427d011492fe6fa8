"""A pipelined transaction (windmill/db/pipelined.py): one transaction whose BEGIN and COMMIT travel with its
statements. It is all or nothing like any transaction, a statement that fails leaves the connection ready for the
next one, and inside a caller's transaction it is a savepoint of it."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.protocol_trace import traced_requests
from windmill.db.pipelined import pipelined_transaction


@pytest.fixture
def scratch(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute("CREATE TEMPORARY TABLE scratch (id integer PRIMARY KEY)")
    return conn


def stored(conn: psycopg.Connection) -> list[int]:
    return [row[0] for row in conn.execute("SELECT id FROM scratch ORDER BY id")]


def test_its_statements_and_commit_go_together_and_a_result_read_inside_waits_only_for_itself(
        scratch: psycopg.Connection, tmp_path: Path) -> None:
    def transaction() -> None:
        with pipelined_transaction(scratch):
            scratch.execute("INSERT INTO scratch VALUES (1), (2)")
            assert scratch.execute("SELECT count(*) FROM scratch").fetchone() == (2,)  # its own writes, uncommitted
            scratch.execute("INSERT INTO scratch VALUES (3)")

    requests = traced_requests(scratch, tmp_path / "trace", transaction)
    assert len(requests) == 2, requests
    assert "BEGIN" in requests[0] and "count" in requests[0] and "COMMIT" in requests[1], requests
    assert stored(scratch) == [1, 2, 3]


def test_a_statement_that_fails_undoes_the_transaction_and_leaves_the_connection_ready(
        scratch: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.UniqueViolation), pipelined_transaction(scratch):
        scratch.execute("INSERT INTO scratch VALUES (1)")
        scratch.execute("INSERT INTO scratch VALUES (1)")
        scratch.execute("INSERT INTO scratch VALUES (2)")
    assert scratch.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert stored(scratch) == []
    with pipelined_transaction(scratch):
        scratch.execute("INSERT INTO scratch VALUES (4)")
    assert stored(scratch) == [4]


def test_an_error_of_the_caller_inside_undoes_it_too(scratch: psycopg.Connection) -> None:
    with pytest.raises(LookupError), pipelined_transaction(scratch):
        scratch.execute("INSERT INTO scratch VALUES (1)")
        assert scratch.execute("SELECT count(*) FROM scratch").fetchone() == (1,)
        raise LookupError("the caller changed its mind")
    assert scratch.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert stored(scratch) == []


def test_inside_a_callers_transaction_it_is_a_savepoint(scratch: psycopg.Connection) -> None:
    with scratch.transaction():
        scratch.execute("INSERT INTO scratch VALUES (1)")
        with pytest.raises(psycopg.errors.UniqueViolation), pipelined_transaction(scratch):
            scratch.execute("INSERT INTO scratch VALUES (2)")
            scratch.execute("INSERT INTO scratch VALUES (1)")
        with pipelined_transaction(scratch):
            scratch.execute("INSERT INTO scratch VALUES (3)")
    assert stored(scratch) == [1, 3]
