"""Periodic upkeep of the database: the backfill (jobs that repair stale products, one page of images per run,
compared by the rows each product records) and the job retention (old done jobs deleted in small batches).
What pg_cron and the scheduler role run every period is the SQL procedure scheduled_pass (sql/0015): one home."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import psycopg

from windmill.db.queries import fetch_row, fetch_value, query

DEFAULT_LIMIT = 1000  # jobs per queue and run; a large outage is repaired over several runs
DEFAULT_PAGE = 1000  # images per run
DEFAULT_RETENTION = timedelta(hours=1)
PRUNE_BATCH = 1000  # jobs deleted per transaction


@dataclass(frozen=True)
class PassOutcome:
    queued: dict[str, int]  # jobs the backfill queued, per queue (expired leases as `expired_leases`)
    pruned: int  # done jobs deleted


def run_backfill(conn: psycopg.Connection, *, limit: int = DEFAULT_LIMIT, page: int = DEFAULT_PAGE) -> dict[str, int]:
    """Run windmill.backfill() once; returns the jobs it queued per queue (empty when nothing needed repair)."""
    return {queue: queued for queue, queued in conn.execute(query("run_backfill"), {"limit": limit, "page": page})}


def retry_failed_products(conn: psycopg.Connection, *, limit: int = DEFAULT_LIMIT) -> dict[str, int]:
    """Postprocessing and caption scores that ended in an error: up to `limit` rows removed and their jobs queued
    again (windmill.retry_failed_products(), sql/0120); the jobs queued per queue."""
    return {queue: queued for queue, queued in conn.execute(query("retry_failed_products"), {"limit": limit})}


def scheduled_pass(conn: psycopg.Connection, *, page: int = DEFAULT_PAGE,
                   retention: timedelta = DEFAULT_RETENTION) -> PassOutcome:
    """One backfill page, then the retention. Commits as it goes: `conn` must be in autocommit mode."""
    queued, pruned = fetch_row(conn, "scheduled_pass", {"page": page, "retention": retention})
    return PassOutcome(dict(queued), int(pruned))


def prune_jobs(conn: psycopg.Connection, older_than: timedelta, *, dead: bool = False,
               batch: int = PRUNE_BATCH) -> int:
    """Delete done jobs (with `dead`, dead ones too) last changed more than `older_than` ago, `batch` per
    transaction, until none is left; returns how many. `conn` must be in autocommit mode."""
    return int(fetch_value(conn, "prune_jobs", {"older_than": older_than, "dead": dead, "batch": batch}))
