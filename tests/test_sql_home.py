"""Every SQL statement lives in sql/ (a migration or a named query of sql/queries/*.sql): no module of the package
holds one in a string, so a reader finds each statement in one place and no statement is built by string surgery."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from windmill.db.queries import query

PACKAGE = Path(__file__).resolve().parent.parent / "windmill"

# The opening of a statement, as SQL is written (not as prose: "Delete done jobs…" or "select the…" are not).
_STATEMENT = re.compile(
    r"""^\s*(
        SELECT\s+(\*|\w+\s*\(|[\w.]+\s*(,|\bFROM\b|\bAS\b)|1\b|EXISTS\b|DISTINCT\b|%s)
      | WITH\s+(RECURSIVE\s+)?\w+\s+AS\s*\(
      | INSERT\s+INTO\s | UPDATE\s+\w+\s+SET\s | DELETE\s+FROM\s | MERGE\s+INTO\s
      | (CREATE|DROP|ALTER)\s+(OR\s+REPLACE\s+|TEMP\w*\s+|UNLOGGED\s+|UNIQUE\s+)*
            (TABLE|SCHEMA|DATABASE|INDEX|FUNCTION|PROCEDURE|TRIGGER|EXTENSION|VIEW|MATERIALIZED|ROLE|TYPE|SEQUENCE)\b
      | TRUNCATE\s | VACUUM\b | ANALYZE\s+\w+\s*(,|$) | LOCK\s+TABLE\s | CALL\s+\w
      | (UN)?LISTEN\s+\S+\s*$ | NOTIFY\s+\S+\s*(,.*)?$
      | SET\s+(LOCAL\s+|SESSION\s+)?(TRANSACTION\b|[\w.]+\s*(TO|=)) | COPY\s+\w | EXPLAIN\s | REFRESH\s+MATERIALIZED\s
    )""",
    re.IGNORECASE | re.VERBOSE,
)

# Modules allowed to hold statements, each with the reason it cannot take them from sql/.
ALLOWED: dict[str, str] = {}


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes: prose, not SQL."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def sql_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string constant or f-string of the source that opens an SQL statement."""
    tree = ast.parse(source)
    prose = _docstrings(tree)
    # The constant parts of an f-string are read with the whole f-string.
    prose |= {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            # A formatted value stands for a word of the statement (a name, a number).
            text = "".join(part.value if isinstance(part, ast.Constant) else "x" for part in node.values)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            text = node.value
        else:
            continue
        if isinstance(text, str) and _STATEMENT.match(text):
            found.append((node.lineno, text.strip().splitlines()[0]))
    return found


@pytest.mark.parametrize("text", [
    "SELECT 1", "select count(*) FROM jobs", "SELECT id, queue FROM jobs", "SELECT pg_notify(%s, '')",
    "WITH ready AS (SELECT 1) SELECT 1", "INSERT INTO jobs (queue) VALUES (%s)", "UPDATE jobs SET state = 'x'",
    "DELETE FROM jobs WHERE id = %s", "CREATE TABLE IF NOT EXISTS x (a int)", "CREATE SCHEMA IF NOT EXISTS x",
    "DROP TRIGGER IF EXISTS t ON x", "VACUUM ANALYZE jobs", "ANALYZE jobs", "LISTEN windmill_jobs",
    "SET LOCAL search_path TO windmill", "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "CALL x.pass()",
    "SELECT EXISTS (SELECT 1 FROM jobs)",
])
def test_the_scan_knows_a_statement(text: str) -> None:
    assert sql_literals(f"x = {text!r}\n"), text


@pytest.mark.parametrize("text", [
    "Delete done jobs older than the retention.", "Create or upgrade the schema (idempotent).", "select the images",
    "Show dead-lettered tasks", "analyze", "lock", "listen connection lost (%s)", "with --png: also draw",
    "Update the services table", "set the --page option",
])
def test_the_scan_lets_prose_be(text: str) -> None:
    assert not sql_literals(f"x = {text!r}\n"), text


def test_a_docstring_is_prose() -> None:
    assert not sql_literals('def f():\n    """SELECT the rows we need."""\n')


def test_an_f_string_statement_is_found() -> None:
    assert sql_literals('x = f"LISTEN {channel}"\n')


def test_no_module_of_the_package_holds_an_sql_statement() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE.parent).as_posix()
        if module in ALLOWED:
            continue
        found += [f"{module}:{line}: {text}" for line, text in sql_literals(path.read_text(encoding="utf-8"))]
    assert not found, "SQL belongs in sql/queries/*.sql (a named query), not in Python:\n" + "\n".join(found)


def test_every_allowed_module_still_needs_its_exception() -> None:
    for module in ALLOWED:
        assert sql_literals((PACKAGE.parent / module).read_text(encoding="utf-8")), f"{module} holds no SQL now"


def test_the_several_queues_claim_is_the_one_queue_claim_but_for_its_queue_test() -> None:
    """Two named blocks because each plans on its own index; they must not drift apart."""
    one, several = query("claim_lane_one_queue"), query("claim_lane_of_queues")
    assert "queue = %(queue)s" in one and "%(queues)s" not in one
    # One queue is read as a range of one value, in (queue, id) order; several in id order.
    ready = one.replace("queue >= %(queue)s AND queue <= %(queue)s", "queue = %(queue)s").replace(
        "ORDER BY queue, id", "ORDER BY id", 1)
    assert several == ready.replace("queue = %(queue)s", "queue = ANY(%(queues)s)")


def test_the_several_queues_claim_is_the_claim_of_one_queue_lanes_but_for_its_queue() -> None:
    """The lanes of one queue read from arrays claim as a lane of several queues does, but for the queue."""
    one, several = query("claim_one_queue_lane_ids"), query("claim_lane_of_queues")
    assert "lane.queue" in one and "%(queues)s" not in one
    # One queue is read as a range of one value, in (queue, id) order; several in id order.
    claims = [part.split(") AS ")[0].strip() for part in one.split("CROSS JOIN LATERAL (")[1:]]
    as_several = [claim.replace("queue >= lane.queue AND queue <= lane.queue", "queue = lane.queue").replace(
        "ORDER BY queue, id", "ORDER BY id").replace("queue = lane.queue", "queue = ANY(%(queues)s)").replace(
        "LIMIT lane.wanted", "LIMIT %(limit)s") for claim in claims]
    assert len(as_several) == 2
    assert several == (f"ready_%(lane)s AS (\n    {as_several[0]}\n), expired_%(lane)s AS (\n    {as_several[1]}\n)")
