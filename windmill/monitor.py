"""Status queries for operators: answers per service, queue depths, oldest jobs, live workers."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from windmill.db.queries import query


def _rows(conn: psycopg.Connection, name: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(query(name))
        return cursor.fetchall()


def collect_status(conn: psycopg.Connection) -> dict[str, Any]:
    return {
        "totals": _rows(conn, "totals")[0],
        "results": _rows(conn, "results_by_service"),
        "queues": _rows(conn, "queue_depths"),
        "workers": _rows(conn, "live_workers"),
    }


def format_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A plain aligned text table (no dependency: output must stay readable in logs and pipes)."""
    if not rows:
        return "  (none)"
    columns = columns or list(rows[0])
    cells = [[("" if row.get(c) is None else str(row.get(c))) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def format_status(status: dict[str, Any]) -> str:
    totals = status["totals"]
    parts = [
        "Totals: " + ", ".join(f"{key} {value}" for key, value in totals.items()),
        "Results per service and status:",
        format_table(status["results"]),
        "Job queues (not done):",
        format_table(status["queues"]),
        "Live workers:",
        format_table(status["workers"]),
    ]
    return "\n".join(parts)
