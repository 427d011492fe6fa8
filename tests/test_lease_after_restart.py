"""A lease that ran out while PostgreSQL was down is not its worker's death (sql/0135): the worker could not renew it
while the server was away. The server's start renews every lease once: one granted before the start lapses no
earlier than one lease after it (the claiming worker's; the periodic pass's sweep waits a minute), time for its
worker to reconnect and renew it; then it lapses as any other. A lease granted since the start lapses when it
expires, as before. The restarts here are real: the postmaster SIGKILLed and started again (crash recovery), on a
cluster of the test's own."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psycopg

from windmill.bench.chaos.servers import crash_postgres, start_postgres
from windmill.db.connect import Database
from windmill.db.embedded import EmbeddedPostgres
from windmill.jobs import JobQueue, NewJob
from windmill.jobs.queue import DEFAULT_LEASE

SHORT_LEASE = timedelta(seconds=1)  # the holder's: run out in real time within the test


@contextmanager
def job_queue(conninfo: str, lease: timedelta = DEFAULT_LEASE) -> Iterator[JobQueue]:
    with Database(conninfo).pool(max_size=2, name="lease-tests") as pool:
        yield JobQueue(pool, lease=lease)


def restart(cluster: EmbeddedPostgres, conninfo: str) -> datetime:
    """Crash the server and start it again; its start time."""
    crash_postgres(cluster)
    start_postgres(cluster, conninfo)
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


def holder_of(conninfo: str, job_id: int) -> tuple[str, str | None, int]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT state::text, lease_owner, attempts FROM windmill.jobs WHERE id = %s",
                            (job_id,)).fetchone()


def test_a_lease_that_ran_out_while_the_server_was_down_is_left_to_its_worker_for_a_lease_after_the_start(
        away_cluster: tuple[EmbeddedPostgres, str]) -> None:
    cluster, conninfo = away_cluster
    with job_queue(conninfo, SHORT_LEASE) as alive:
        job_id = alive.enqueue(NewJob("q", {}))
        [job] = alive.claim(["q"], "alive", 1)
    started = restart(cluster, conninfo)
    with job_queue(conninfo) as other, job_queue(conninfo, SHORT_LEASE) as alive:
        expired = datetime.now(UTC) + SHORT_LEASE * 5
        assert expired < started + DEFAULT_LEASE
        assert other.claim(["q"], "other", 1, now=expired) == [], "taken from a worker that could not renew it"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute("SELECT pg_sleep(%s)", (SHORT_LEASE.total_seconds() * 1.5,))  # expired by the server's clock
            conn.execute("SELECT * FROM windmill.backfill()")  # the periodic pass's sweep of expired leases
        assert holder_of(conninfo, job_id) == ("running", "alive", 1), "the sweep took it back"
        assert alive.renew_leases([job.id], "alive") == {job.id}, "its worker, reconnected, keeps it"
        # One lease after the start, an expired lease lapses as it always did (its worker died).
        [taken] = other.claim(["q"], "other", 1, now=started + DEFAULT_LEASE + SHORT_LEASE * 5)
        assert (taken.id, taken.attempts) == (job_id, 2)


def test_a_lease_granted_since_the_start_lapses_when_it_expires(away_cluster: tuple[EmbeddedPostgres, str]) -> None:
    cluster, conninfo = away_cluster
    started = restart(cluster, conninfo)
    with job_queue(conninfo, SHORT_LEASE) as died, job_queue(conninfo) as other:
        job_id = died.enqueue(NewJob("q", {}))
        died.claim(["q"], "died", 1)
        expired = datetime.now(UTC) + SHORT_LEASE * 5
        assert expired < started + DEFAULT_LEASE
        [taken] = other.claim(["q"], "other", 1, now=expired)
        assert (taken.id, taken.attempts) == (job_id, 2)
