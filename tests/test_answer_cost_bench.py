"""`python -m windmill.bench.answer_cost --group N`: its group side answers every task once through the service
worker's group commit, on both paths (run on the test database, its figures not looked at)."""

from __future__ import annotations

import psycopg
import pytest

from windmill.bench.answer_cost import Side, answer_run, seed, side_queries
from windmill.bench.cpu import postgres_processes
from windmill.catalog import Catalog
from windmill.db.connect import Database


@pytest.mark.parametrize("path", ["rabbitmq", "jobtable"])
def test_the_group_side_answers_every_task_once(database: Database, conn: psycopg.Connection, catalog: Catalog,
                                                path: str) -> None:
    postmaster = postgres_processes(conn).root
    if postmaster is None:
        pytest.skip("the test server does not run on this machine")
    side = Side("group8", database, side_queries(None), group=8)
    tasks = seed(side, catalog.select("primary"), 4, path)
    run = answer_run(side, tasks, path, postmaster, catalog, writers=8)
    assert run.answers == len(tasks) == 44
    answers, tasks_answered, transactions = conn.execute(
        "SELECT count(*), count(DISTINCT task_id), count(DISTINCT xmin::text) FROM results").fetchone()
    assert answers == tasks_answered == len(tasks)
    assert transactions <= answers
    assert conn.execute("SELECT count(*) FROM service_tasks_in_flight").fetchone()[0] == 0
    if path == "jobtable":
        assert conn.execute("SELECT count(*) FROM jobs WHERE queue LIKE 'queue_%' AND state <> 'done'"
                            ).fetchone()[0] == 0
