"""The PostgreSQL job queue: enqueue, claim with SKIP LOCKED under a lease, complete, fail, renew, retry."""

from __future__ import annotations

import builtins
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from windmill.backoff import backoff_delay
from windmill.db.jsonb import use_orjson
from windmill.db.pipelined import pipelined_transaction
from windmill.db.queries import fetch_value, query
from windmill.jobs.handoff import Handoff, deal_claims
from windmill.jobs.model import Job, JobState

log = logging.getLogger(__name__)
NOTIFY_CHANNEL = "windmill_jobs"  # the wake-all channel (sql/0096; the query notify_jobs); queues have their own
DEFAULT_LEASE = timedelta(seconds=30)
DEFAULT_MAX_ATTEMPTS = 5
MAX_RETRY_DELAY_S = 300.0
REPLAN_AFTER_S = 5.0  # how old a claimer's plans may get (Claimer)
RETRY_JITTER = 0.2  # spread of a retry's delay: failures of one burst do not come back in lockstep


@functools.lru_cache(maxsize=512)
def round_trip_query(lanes: tuple[tuple[str, ...], ...], now: datetime | None = None) -> str:
    """The claim loop's statement (`claim_round_trip`) for lanes of these queues: the completion of the jobs in its
    `done` parameter and a claim per lane; parameters in round_trip_parameters' order.

    One text per worker, whatever its lanes ask: a service worker has eleven lanes, and in a run of the service stage
    (300 images, two workers) their round trips asked for 443 different sets of lanes, 45 % of them one lane only,
    so a text per set would be hundreds of statements to parse, plan and keep prepared. The lanes of one queue
    (claim_one_queue_lanes) are read from two arrays, the asking lanes' queues and limits, by one plan that reads
    the index once per lane asking: a lane that asks nothing costs nothing. Written in as a block of its own per
    lane, with its limit 0 when it asked nothing, each of the eleven lanes cost the executor's set-up of its two
    claims at every round trip (9 % of PostgreSQL's CPU samples in the service stage, perf). A worker with one lane
    of one queue only (a merger) keeps that lane's block (claim_lane_one_queue): alone, it costs the server less
    than the arrays' plan (about 8 µs of 120 per round trip).

    A lane of several queues keeps a block of its own with its queues written in as literals, its limit a parameter:
    with them as parameters, PostgreSQL's generic plan, blind to the queues, costed `run_after <= $now` as a third of
    the table and walked every other queue's waiting jobs in id order. The clock (None: the database's) is written
    in too. A limit does not change a plan: the claim reads its queue's index in order and stops
    (tests/test_job_queue.py shows the generic plans)."""
    return compose_round_trip(lanes, now, query)


def compose_round_trip(lanes: tuple[tuple[str, ...], ...], now: datetime | None,
                       named: Callable[[str], str]) -> str:
    """round_trip_query from the named queries `named` gives (a benchmark reads another tree's).

    The text comes with PostgreSQL's own placeholders ($1 …, in round_trip_parameters' order), for a RawCursor:
    psycopg converts a `%(name)s` query with a regular expression and caches the result only for texts up to 4 KiB,
    and eleven lanes made about 12 KiB, converted again at every round trip (a quarter of a job-table service
    worker's time)."""
    if not lanes:
        raise ValueError("a claim needs at least one lane")
    seen: set[str] = set()
    for queues in lanes:
        if not queues or seen.intersection(queues):
            raise ValueError("every lane needs queues of its own")  # a job's queue tells its lane
        seen.update(queues)
    singles, own_blocks = _layout(lanes)
    fixed = ("done", "worker", "lease", *(("lane_queues", "lane_limits") if singles else ()))  # $1, $2, ...
    blocks, candidates = [], []
    if singles:
        blocks.append(_placeholders(named("claim_one_queue_lanes"), fixed))
        candidates.append(_with_literals(_placeholders(named("claim_one_queue_lane_ids"), fixed), {"now": now}))
    for index, queues in enumerate(lanes[lane] for lane in own_blocks):
        block = named("claim_lane_one_queue" if len(queues) == 1 else "claim_lane_of_queues")
        block = _placeholders(block.replace("%(lane)s", str(index)).replace(
            "%(limit)s", f"${len(fixed) + index + 1}"), fixed)
        # Literals last: a queue's name is data, whatever placeholder it may look like.
        blocks.append(_with_literals(block, {"now": now, "queue": queues[0], "queues": list(queues)}))
        candidates.append(named("claim_lane_ids").replace("%(lane)s", str(index)))
    text = _with_literals(_placeholders(named("claim_round_trip"), fixed), {"now": now})
    return text.replace("%(claimable)s", "\n    UNION ".join(candidates)).replace("%(lanes)s", ",\n".join(blocks))


def _placeholders(text: str, fixed: Sequence[str]) -> str:
    for position, name in enumerate(fixed, start=1):
        text = text.replace(f"%({name})s", f"${position}")
    return text


def round_trip_parameters(lanes: tuple[tuple[str, ...], ...], done: Sequence[int], limits: Sequence[int],
                          worker_id: str, lease: timedelta) -> list[Any]:
    """The parameters of a round_trip_query for these lanes (their queues) and limits (0: the lane asks nothing),
    in its placeholders' order."""
    singles, blocks = _layout(lanes)
    parameters: list[Any] = [list(done), worker_id, lease]
    if singles:
        asking = [index for index in singles if limits[index] > 0]
        parameters += [_array_literal([lanes[index][0] for index in asking]),
                       _array_literal([limits[index] for index in asking])]
    return parameters + [limits[index] for index in blocks]


@functools.lru_cache(maxsize=512)
def _layout(lanes: tuple[tuple[str, ...], ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Which lanes are read from the arrays, and which have a block of their own, by their index."""
    singles = tuple(index for index, queues in enumerate(lanes) if len(queues) == 1)
    if len(singles) < 2:  # one lane's own block costs less than the arrays (round_trip_query)
        singles = ()
    return singles, tuple(index for index in range(len(lanes)) if index not in singles)


def _array_literal(values: Sequence[object]) -> str:
    """PostgreSQL's text form of an array of these values, each quoted (the statement casts it): psycopg dumps a
    list by finding its elements' type first, at every round trip, which cost a worker's claim loop more than
    the whole text it now writes."""
    quoted = (str(value).replace("\\", "\\\\").replace('"', '\\"') for value in values)
    return "{" + ",".join(f'"{value}"' for value in quoted) + "}"


def _with_literals(text: str, literals: dict[str, Any]) -> str:
    """`%(name)s` of `literals` replaced by the value as an SQL literal, in one pass: what one puts in is never read
    as a placeholder again."""
    return _PLACEHOLDER.sub(lambda found: sql.Literal(literals[found[1]]).as_string() if found[1] in literals
                            else found[0], text)


_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class NewJob:
    """A job to enqueue. A dedupe_key makes it a no-op while an identical job is still waiting."""

    queue: str
    payload: dict[str, Any]
    image_id: int | None = None
    dedupe_key: str | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


def enqueue_on(conn: psycopg.Connection, job: NewJob, *, run_after: datetime | None = None) -> int | None:
    """Queue a job on this connection, inside the caller's transaction (atomic with the caller's writes)."""
    row = conn.execute(
        query("enqueue_job"),
        {
            "queue": job.queue,
            "image_id": job.image_id,
            "payload": Jsonb(job.payload),
            "dedupe_key": job.dedupe_key,
            "max_attempts": job.max_attempts,
            "run_after": run_after,
        },
    ).fetchone()
    return row[0] if row else None


def enqueue_many_on(conn: psycopg.Connection, jobs: Sequence[NewJob]) -> int:
    """Queue a batch in one statement on this connection (inside the caller's transaction), ids in the order
    given; returns how many were newly queued (duplicates of waiting jobs are skipped)."""
    if not jobs:
        return 0
    return conn.execute(
        query("enqueue_jobs"),
        {
            "queues": [job.queue for job in jobs],
            "image_ids": [job.image_id for job in jobs],
            "payloads": [Jsonb(job.payload) for job in jobs],
            "dedupe_keys": [job.dedupe_key for job in jobs],
            "max_attempts": [job.max_attempts for job in jobs],
        },
    ).rowcount


class JobQueue:
    """All job-table operations a worker or producer needs. `now` parameters exist for tests: None = the
    database clock."""

    def __init__(self, pool: ConnectionPool, *, lease: timedelta = DEFAULT_LEASE, retry_base_s: float = 1.0) -> None:
        self.pool = pool
        self.lease = lease
        self.retry_base_s = retry_base_s  # first retry delay; doubles per attempt

    def enqueue(self, job: NewJob, *, run_after: datetime | None = None) -> int | None:
        """Queue one job; returns its id, or None when an identical job was already waiting."""
        with self.pool.connection() as conn:
            return enqueue_on(conn, job, run_after=run_after)

    def enqueue_many(self, jobs: Sequence[NewJob]) -> int:
        """Queue a batch in one statement, ids in the order given; returns how many were newly queued."""
        if not jobs:
            return 0
        with self.pool.connection() as conn:
            return enqueue_many_on(conn, jobs)

    def refresh_statistics(self) -> None:
        """ANALYZE the job table. A claim across several queues plans from the statistics: while they describe
        the table before a bulk enqueue, it sorts every waiting task (milliseconds each, growing with the
        backlog) instead of reading the oldest few by index. Autovacuum's analyze comes a minute or more later."""
        with self.pool.connection() as conn:
            conn.execute(query("analyze_jobs"))

    def claim(self, queues: Sequence[str], worker_id: str, limit: int, *, now: datetime | None = None) -> list[Job]:
        """Lease up to `limit` jobs of the given queues, oldest first."""
        return self.complete_and_claim((), queues, worker_id, limit, now=now)

    def complete_and_claim(self, done: Iterable[int], queues: Sequence[str], worker_id: str, limit: int, *,
                           now: datetime | None = None) -> list[Job]:
        """Mark `done` jobs done and lease up to `limit` new ones in one statement."""
        return self.complete_and_claim_lanes(done, [(queues, limit)], worker_id, now=now)[0]

    def complete_and_claim_lanes(self, done: Iterable[int], lanes: Sequence[tuple[Sequence[str], int]],
                                 worker_id: str, *, now: datetime | None = None) -> list[list[Job]]:
        """Mark `done` jobs done and lease, for each lane (its queues, the most it may take), up to that many new
        ones, all in one statement (claim_round_trip). The jobs by lane, in order.
        On any pooled connection, planned at each call; a worker's claim loop uses its own (claimer())."""
        with self.pool.connection() as conn:
            return claim_round_trip(conn, done, lanes, worker_id, self.lease, now, prepare=False)

    def claimer(self, *, replan_after_s: float = REPLAN_AFTER_S, only_claims: bool = True) -> Claimer:
        """A claim loop's own connection for its round trips (close it when the loop ends); `only_claims=False`
        for one that also writes (Claimer.write_and_hand_off)."""
        return Claimer(self, replan_after_s=replan_after_s, only_claims=only_claims)

    def complete(self, ids: Iterable[int], worker_id: str, *, now: datetime | None = None) -> int:
        ids = list(ids)
        if not ids:
            return 0
        with self.pool.connection() as conn:
            return conn.execute(query("complete_jobs"), {"ids": ids, "worker": worker_id, "now": now}).rowcount

    def fail(
        self,
        job: Job,
        worker_id: str,
        error: str,
        *,
        permanent: bool = False,
        counted: bool = True,
        now: datetime | None = None,
    ) -> JobState | None:
        """Record a failed attempt; returns the new state (failed or dead), None if the lease was lost. An attempt
        not `counted` (the database was away) gives its attempt back and the job is claimable after the backoff."""
        with self.pool.connection() as conn:
            row = conn.execute(
                query("fail_job"),
                {
                    "id": job.id,
                    "worker": worker_id,
                    "error": error[:2000],
                    "permanent": permanent,
                    "counted": counted,
                    "backoff": timedelta(seconds=backoff_delay(job.attempts, first_s=self.retry_base_s,
                                                                  cap_s=MAX_RETRY_DELAY_S, jitter=RETRY_JITTER)),
                    "now": now,
                },
            ).fetchone()
        return JobState(row[0]) if row else None

    def renew_leases(self, ids: Iterable[int], worker_id: str, *, now: datetime | None = None) -> set[int]:
        """Extend the leases of running jobs; returns the ids still held by this worker."""
        ids = list(ids)
        if not ids:
            return set()
        with self.pool.connection() as conn:
            rows = conn.execute(
                query("renew_leases"), {"ids": ids, "worker": worker_id, "lease": self.lease, "now": now}
            ).fetchall()
        return {row[0] for row in rows}

    def retry_dead(self, *, queue: str | None = None, ids: Sequence[int] | None = None) -> list[int]:
        """Queue dead jobs again with fresh attempts; returns their ids."""
        with self.pool.connection() as conn:
            rows = conn.execute(query("retry_dead_jobs"), {"queue": queue, "ids": list(ids) if ids else None})
            retried = [row[0] for row in rows.fetchall()]
            if retried:
                conn.execute(query("notify_jobs"))
        return retried

    def states(self, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """The state and queue of each of these jobs that exists."""
        with self.pool.connection() as conn:
            rows = conn.execute(query("job_states"), {"ids": list(ids)}).fetchall()
        return {job_id: (state, queue) for job_id, state, queue in rows}

    def list(self, *, state: JobState | None = None, queue: str | None = None, limit: int = 50
             ) -> builtins.list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(query("list_jobs"), {"state": state and str(state), "queue": queue, "limit": limit})
            return cursor.fetchall()

    def depths(self) -> builtins.list[dict[str, Any]]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(query("queue_depths"))
            return cursor.fetchall()


def claim_round_trip(conn: psycopg.Connection, done: Iterable[int], lanes: Sequence[tuple[Sequence[str], int]],
                     worker_id: str, lease: timedelta, now: datetime | None, *, prepare: bool) -> list[list[Job]]:
    """Complete `done` and claim for each lane in one statement (round_trip_query). `prepare`: as a prepared
    statement (a Claimer's connection), or planned at each execution. The jobs by lane, in order."""
    done = list(done)
    if not lanes:
        if done:
            conn.execute(query("complete_jobs"), {"ids": done, "worker": worker_id, "now": now}, prepare=prepare)
        return []
    shape = tuple(tuple(queues) for queues, _ in lanes)
    cursor = _execute_round_trip(conn, done, shape, [limit for _, limit in lanes], worker_id, lease, now,
                                 prepare=prepare)
    return _jobs_by_lane(shape, cursor.fetchall())


def _execute_round_trip(conn: psycopg.Connection, done: Sequence[int], shape: tuple[tuple[str, ...], ...],
                        limits: Sequence[int], worker_id: str, lease: timedelta, now: datetime | None, *,
                        prepare: bool) -> psycopg.RawCursor[dict[str, Any]]:
    """The round trip executed, its rows not fetched (in a pipeline they come at its end)."""
    cursor = psycopg.RawCursor(conn, row_factory=dict_row)
    cursor.execute(round_trip_query(shape, now), round_trip_parameters(shape, done, limits, worker_id, lease),
                   prepare=prepare)
    return cursor


def _jobs_by_lane(shape: tuple[tuple[str, ...], ...], rows: Sequence[dict[str, Any]]) -> list[list[Job]]:
    lane_of = {queue: index for index, queues in enumerate(shape) for queue in queues}
    claimed: list[list[Job]] = [[] for _ in shape]
    for row in rows:
        claimed[lane_of[row["queue"]]].append(Job.from_row(row))
    return claimed


class Claimer:
    """The connection one claim loop keeps for its round trips, its own (not the pool's: workers of one process
    share a pool, and each would hold a place of it). Its completions and claims are prepared once and run their
    generic plans from the first execution (the session asks for them, so it runs nothing else): a claim needs no
    values to be planned well (a lane of several queues has them written in, a lane of one queue reads its queue's
    range of jobs_claimable_idx whichever it is: round_trip_query), nor does the completion (the primary key, for
    any ids). Left to choose, PostgreSQL made five custom plans of each statement on each pooled connection
    first, and kept the completion's, whose array of ids it cannot see, custom for good.

    A generic plan keeps the table's size at the time it was made: one made while the job table was nearly empty
    reads it whole (a sequential scan), and kept it after 100,000 tasks were queued, 30 ms a claim, until an
    ANALYZE invalidated it. So the plans are dropped every `replan_after_s` (DISCARD PLANS; the statements stay
    prepared) and made again from the table as it is then, as each custom plan was. One thread at a time. A
    connection that failed is closed; the next round trip opens a fresh one."""

    def __init__(self, jobs: JobQueue, *, replan_after_s: float = REPLAN_AFTER_S, only_claims: bool = True) -> None:
        self.jobs = jobs
        self.replan_after_s = replan_after_s
        # A connection that runs other writes too (write_and_hand_off) keeps the server's plan choice for them.
        self.only_claims = only_claims
        self._conn: psycopg.Connection | None = None
        self._planned_at = 0.0

    def complete_and_claim_lanes(self, done: Iterable[int], lanes: Sequence[tuple[Sequence[str], int]],
                                 worker_id: str, *, now: datetime | None = None) -> list[list[Job]]:
        """JobQueue.complete_and_claim_lanes on this claimer's connection."""
        try:
            return claim_round_trip(self._connection(), done, lanes, worker_id, self.jobs.lease, now, prepare=True)
        except psycopg.OperationalError:
            self.close()
            raise

    def due_job_waiting(self, queues: Sequence[str]) -> bool:
        """Whether a job of `queues` is due and still queued, read without claiming: a job whose row another
        transaction holds counts (an enqueue's FOR SHARE, another worker's claim not committed yet)."""
        try:
            return bool(fetch_value(self._connection(), "due_job_waiting", {"queues": list(queues)}))
        except psycopg.OperationalError:
            self.close()
            raise

    def write_and_hand_off(self, write: Callable[[psycopg.Connection], psycopg.Cursor[Any]],
                           handoffs: Sequence[Handoff]) -> list[Any]:
        """Run `write` (it executes its statement on the connection given and returns the cursor, rows not yet
        fetched), complete the handoffs' jobs and claim what they want of their lanes, in one transaction and one
        round trip (a pipeline); then deal the jobs claimed to the handoffs (windmill.jobs.handoff). Returns the
        write's rows. The handoffs are one worker's, with the same lanes. On an error the handoffs stay untaken:
        nothing was committed, or, for an OperationalError, perhaps all of it (the jobs it claimed then wait for
        their lease to expire, as a dead worker's do)."""
        if not handoffs:
            raise ValueError("a hand-off needs handoffs")
        shape, worker_id = handoffs[0].lanes, handoffs[0].worker_id
        if any(handoff.lanes != shape or handoff.worker_id != worker_id for handoff in handoffs):
            raise ValueError("the handoffs of one write must be one worker's")
        limits = [sum(handoff.wants for handoff in handoffs if handoff.lane == lane) for lane in range(len(shape))]
        try:
            conn = self._connection()
            with pipelined_transaction(conn):  # one round trip
                written = write(conn)
                # The claim on its generic plan (the class doc says why), the write's triggers as the server chooses.
                conn.execute(query("generic_plans_for_this_transaction"))
                claims = _execute_round_trip(conn, [handoff.job_id for handoff in handoffs], shape, limits,
                                             worker_id, self.jobs.lease, None, prepare=True)
                conn.execute(query("default_plans_for_this_transaction"))
            rows, claimed = written.fetchall(), _jobs_by_lane(shape, claims.fetchall())
        except psycopg.OperationalError:
            self.close()
            raise
        deal_claims(handoffs, claimed)
        return rows

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:  # closed: a failed hand-off that could not roll back
            conninfo = self.jobs.pool.conninfo  # the pool's may be a function that gives it
            self._conn = psycopg.connect(conninfo() if callable(conninfo) else conninfo, autocommit=True)
            use_orjson(self._conn)
            if self.only_claims:
                self._conn.execute(query("generic_plans_for_this_session"))
            self._planned_at = time.monotonic()
        elif time.monotonic() - self._planned_at >= self.replan_after_s:
            self._conn.execute(query("discard_plans"))
            self._planned_at = time.monotonic()
        return self._conn

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class HandOffWriter:
    """A role's final writes, each with its job's Handoff when it has one: those run one at a time on a connection
    of their own (Claimer.write_and_hand_off), the others on the pool. For roles whose threads write now and then
    (a caption score, a postprocess job's rows): a service worker's answers, which come together, are
    written in groups instead (windmill.roles.answers)."""

    def __init__(self, jobs: JobQueue) -> None:
        self.jobs = jobs
        self._claimer = jobs.claimer(only_claims=False)
        self._lock = threading.Lock()

    def write(self, write: Callable[[psycopg.Connection], psycopg.Cursor[Any]], handoff: Handoff | None
              ) -> list[Any]:
        """Run `write` (it executes one statement on the connection given and returns its cursor, rows not yet
        fetched); with a handoff, in one transaction with the job's completion and its lane's next claim. Returns
        the statement's rows."""
        if handoff is None:
            with self.jobs.pool.connection() as conn:
                return write(conn).fetchall()
        with self._lock:
            return self._claimer.write_and_hand_off(write, [handoff])

    def close(self) -> None:
        with self._lock:
            self._claimer.close()
