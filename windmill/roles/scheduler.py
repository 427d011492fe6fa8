"""The scheduler role (`worker --role scheduler`): runs the backfill every WINDMILL_BACKFILL_INTERVAL_S seconds
where pg_cron is not available.

The period lives in the job table itself: one tick job on the `scheduler` queue, which queues its successor one
interval ahead before it runs the backfill. Any number of schedulers may run (on several machines, for
availability): the dedupe key keeps one tick waiting at a time and SKIP LOCKED lets one scheduler claim it, so
the backfill never runs twice per period. A tick is never retried (one attempt): if it fails or its scheduler
dies, its successor is already queued.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import psycopg

from windmill.db.queries import query
from windmill.jobs import Job
from windmill.worker.registry import Role, RoleContext, register_role

log = logging.getLogger(__name__)

SCHEDULER_QUEUE = "scheduler"
TICK_KEY = "scheduler:tick"
DEFAULT_LIMIT = 1000  # jobs per category and run; a large outage is repaired over several runs


def run_backfill(conn: psycopg.Connection, *, limit: int = DEFAULT_LIMIT) -> dict[str, int]:
    """Run windmill.backfill() once; returns the jobs it queued per queue (empty when nothing needed repair)."""
    return {queue: queued for queue, queued in conn.execute(query("run_backfill"), {"limit": limit})}


def schedule_first_tick(conn: psycopg.Connection) -> int | None:
    """Queue a tick to run now, unless one is already waiting or running; returns its id or None."""
    row = conn.execute(query("schedule_first_tick"), {"queue": SCHEDULER_QUEUE, "dedupe_key": TICK_KEY}).fetchone()
    return None if row is None else row[0]


def schedule_next_tick(conn: psycopg.Connection, interval: timedelta) -> int | None:
    row = conn.execute(query("schedule_next_tick"), {"queue": SCHEDULER_QUEUE, "dedupe_key": TICK_KEY,
                                                     "interval": interval}).fetchone()
    return None if row is None else row[0]


@register_role("scheduler")
def scheduler_role(context: RoleContext) -> Role:
    interval = timedelta(seconds=context.settings.backfill_interval_s)
    with context.pool.connection() as conn:
        schedule_first_tick(conn)

    def handle(job: Job) -> None:
        with context.pool.connection() as conn:
            # Successor first: a backfill that fails or a scheduler that dies mid-run does not end the chain.
            schedule_next_tick(conn, interval)
            queued = run_backfill(conn)
        if queued:
            log.info("backfill queued %s", ", ".join(f"{count} {queue}" for queue, count in queued.items()),
                     extra={"action": "backfill_queued"})
        else:
            log.debug("backfill found nothing to repair", extra={"action": "backfill_clean"})

    return Role(name="scheduler", queues=(SCHEDULER_QUEUE,), handle=handle)
