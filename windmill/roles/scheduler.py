"""The scheduler role (`worker --role scheduler`): runs the periodic pass (a backfill page, then the job retention)
every WINDMILL_BACKFILL_INTERVAL_S seconds where pg_cron is not available.

The period lives in the job table itself: one tick job on the `scheduler` queue, which queues its successor one
interval ahead before it runs the pass; each scheduler also queues a tick once an interval when none waits or runs,
so a chain broken (a tick given up, or deleted) starts again. Any number of schedulers may run (on several
machines, for availability): the dedupe key keeps one tick waiting at a time and SKIP LOCKED lets one scheduler claim
it, so the pass never runs twice per period. A failing tick is not retried (one attempt): its successor is already
queued; one whose scheduler died runs once more (sql/0126). The tick itself (queue, key, attempts) is defined in
SQL: scheduler_tick_job.

Where tasks travel by RabbitMQ, each tick also resends the tasks no message may stand for
(windmill.broker.ledger.resend_lost): those RabbitMQ lost (ledger entries older than WINDMILL_LOST_TASK_AFTER_S whose
queue holds no message ready) and, at once, those a submit entered and died before RabbitMQ confirmed (its session
gone). The pass itself is SQL (pg_cron runs it too); this part needs RabbitMQ, so it lives here.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

import psycopg

from windmill.broker.ledger import resend_lost
from windmill.broker.rabbitmq import RabbitMQBroker, RabbitMQError
from windmill.db.queries import query
from windmill.jobs import Job
from windmill.jobs.queues import SCHEDULER_QUEUE
from windmill.roles.registry import Role, RoleContext, register_role
from windmill.upkeep import scheduled_pass

log = logging.getLogger(__name__)


def schedule_first_tick(conn: psycopg.Connection) -> int | None:
    """Queue a tick to run now, unless one is already waiting or running; returns its id or None."""
    row = conn.execute(query("schedule_first_tick")).fetchone()
    return None if row is None else row[0]


def schedule_next_tick(conn: psycopg.Connection, interval: timedelta) -> int | None:
    row = conn.execute(query("schedule_next_tick"), {"interval": interval}).fetchone()
    return None if row is None else row[0]


@register_role("scheduler", "queues the periodic backfill that repairs missing or stale "
               "products (WINDMILL_BACKFILL_INTERVAL_S)")
def scheduler_role(context: RoleContext) -> Role:
    interval = timedelta(seconds=context.settings.backfill_interval_s)
    retention = timedelta(seconds=context.settings.job_retention_s)
    lost_after = timedelta(seconds=context.settings.lost_task_after_s)
    amqp_url = context.settings.amqp_url if context.settings.uses_rabbitmq else None
    broker = RabbitMQBroker(amqp_url, connection_attempts=2) if amqp_url else None
    queues = [service.queue_name for service in context.catalog.services]
    with context.pool.connection() as conn:
        schedule_first_tick(conn)

    def resend(conn: psycopg.Connection) -> None:
        if broker is None:
            return
        try:
            outcome = resend_lost(conn, broker, queues, older_than=lost_after)
        except RabbitMQError as error:  # the next tick tries again; the pass itself is done
            log.warning("could not look for lost RabbitMQ tasks: %s", error, extra={"action": "resend_failed"})
            return
        for queue, count in outcome.resent.items():
            log.warning("%s held none of its %d tasks in flight older than %s: RabbitMQ lost them; resent",
                        queue, count, lost_after, extra={"action": "lost_tasks_resent"})
        for queue, count in outcome.unconfirmed.items():
            log.warning("%s: %d tasks entered by a submit that ended before RabbitMQ confirmed them; resent",
                        queue, count, extra={"action": "unconfirmed_tasks_resent"})

    def handle(job: Job) -> None:
        with context.pool.connection() as conn:  # autocommit: each statement (and each pass batch) commits
            # Successor first: a pass that fails or a scheduler that dies mid-run does not end the chain.
            schedule_next_tick(conn, interval)
            outcome = scheduled_pass(conn, page=context.settings.backfill_page, retention=retention)
            resend(conn)
        if outcome.queued:
            log.info("backfill queued %s", ", ".join(f"{count} {queue}" for queue, count in outcome.queued.items()),
                     extra={"action": "backfill_queued"})
        else:
            log.debug("backfill found nothing to repair", extra={"action": "backfill_clean"})
        if outcome.pruned:
            log.info("pruned %d done jobs", outcome.pruned, extra={"action": "jobs_pruned"})

    stopping = threading.Event()

    def keep_the_clock() -> None:
        """Queue a tick whenever none waits or runs, once an interval: a tick given up (its last attempt's lease
        expired twice, sql/0126: its schedulers killed before each queued the next) or deleted by hand ended the
        chain, and the pass stopped for good while schedulers kept running. Normally a tick waits: nothing is done."""
        while not stopping.wait(interval.total_seconds()):
            try:
                with context.pool.connection() as conn:
                    queued = schedule_first_tick(conn)
            except psycopg.Error as error:  # the database away: the next round tries again
                log.debug("could not look for the scheduler's tick: %s", error, extra={"action": "tick_check_failed"})
                continue
            if queued is not None:
                log.warning("no scheduler tick was waiting or running: queued one (job %d)", queued,
                            extra={"action": "tick_requeued"})

    threading.Thread(target=keep_the_clock, name="scheduler-clock", daemon=True).start()

    def close() -> None:
        stopping.set()
        if broker is not None:
            broker.close()

    return Role(name="scheduler", queues=(SCHEDULER_QUEUE,), handle=handle, close=close)
