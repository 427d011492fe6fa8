"""Named SQL queries from sql/queries/*.sql: one block per query, headed `-- name: <query_name>`."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import psycopg

from windmill.packaged import packaged_dir

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$")


def parse_queries(text: str) -> dict[str, str]:
    """Split a file into named queries. Comment lines are dropped: psycopg would parse
    placeholders inside them too."""
    queries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        header = _HEADER.match(line.strip())
        if header:
            current = queries.setdefault(header.group(1), [])
        elif current is not None and not line.strip().startswith("--"):
            current.append(line)
    return {name: "\n".join(lines).strip().rstrip(";") for name, lines in queries.items()}


@cache
def query(name: str) -> str:
    """The SQL text of a named query from any file under sql/queries/."""
    return _all_queries()[name]


def fetch_row(conn: psycopg.Connection[Any], name: str, params: Any = None) -> Any:
    """The first row of a named query, for the queries that always return one (an aggregate, a RETURNING)."""
    return first_row(conn.execute(query(name), params), name)


def first_row(cursor: psycopg.Cursor[Any], name: str) -> Any:
    """The first row of the named query executed on `cursor` (in a pipeline, read once its results came)."""
    row = cursor.fetchone()
    if row is None:
        raise LookupError(f"query {name!r} returned no row")
    return row


def fetch_value(conn: psycopg.Connection[Any], name: str, params: Any = None) -> Any:
    """The first column of the first row of a named query, for the queries that always return one row."""
    return fetch_row(conn, name, params)[0]


@cache
def _all_queries() -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in sorted(packaged_dir("sql").joinpath("queries").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, text in parse_queries(entry.read_text(encoding="utf-8")).items():
                if name in found:
                    raise ValueError(f"query {name!r} is defined twice under sql/queries")
                found[name] = text
    return found
