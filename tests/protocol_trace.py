"""Round trips counted from libpq's own trace of a connection: each Query, Sync or Flush message the client sends is
one exchange the server answers, so the count needs no wrapper of our code."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import pq


def traced_requests(conn: psycopg.Connection, trace: Path, merge: Callable[[], object]) -> list[str]:
    """The requests the client sent while `merge` ran: per round trip, the statement (simple query) or the
    extended-protocol statement text parsed or bound (a prepared one is named, not re-sent)."""
    with trace.open("w") as sink:
        conn.pgconn.trace(sink.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            merge()
        finally:
            conn.pgconn.untrace()
    messages: list[list[str]] = []  # [direction, message type, text]; a statement's own newlines continue the text
    for line in trace.read_text().splitlines():
        head = re.match(r"([FB])\t\d+\t(\w+)\t?(.*)", line)
        if head:
            messages.append(list(head.groups()))
        elif messages:
            messages[-1][2] += " " + line
    requests, pending = [], []
    for direction, message, text in messages:
        if direction != "F":
            continue
        if message == "Query":
            requests.append(text.strip())
        elif message == "Parse":
            pending.append(text.strip())
        elif message == "Bind" and text.split()[1] != '""':  # a named statement: prepared, its text not re-sent
            pending.append("(prepared) " + text.strip())
        elif message in ("Sync", "Flush") and pending:  # a Flush asks for the results so far: a wait too (psycopg
            # sends one after the pipeline's last Sync as well, with nothing new to answer)
            requests.append(" ".join(pending))
            pending = []
    return requests
