"""PostgreSQL's CPU per answer (issue 13 item 6): images × the primary services answered by 4 concurrent
connections, each answer one autocommit `insert_result` (its triggers queue merge, consensus and caption scores,
free the task's ledger entry, note the counters' delta), on a cluster of the benchmark's own with production
durability. Two paths, as a service worker takes its tasks:

- rabbitmq: the tasks are in the ledger of tasks in flight (as `submit` leaves them); each connection inserts the
  answers of its share;
- jobtable: the tasks are jobs (as `submit` queues them); each connection claims one, answers it, and completes it
  in the same round trip as its next claim (as windmill.jobs does).

The connections split the tasks image by image, so answers of one image arrive together, as from a pipeline's
service workers. Nobody claims the follow-up jobs. Each run starts from empty tables, vacuumed, after a
checkpoint; its figure is the CPU the whole cluster used (the postmaster and every backend, read from /proc as
windmill/bench/cpu.py does) from the writers' start to their end, per answer, and the WAL it wrote.

With `--group N`, a second side answers on the same schema through a service worker's group commit
(windmill/roles/answers.py, at most N answers per transaction): the writers hand their answers to one writer, which
stores those that arrive while a group is being written together in the next one; the two sides alternate as with
a baseline. `--writers` sets how many threads answer on either side (4), so how many answers can come together.

With `--baseline-sql DIR` (another tree's sql/, e.g. `git archive REV sql | tar -x -C DIR`), a second database
is migrated from DIR and answered with DIR's queries: the runs alternate sides, and the summary gives each side's
median and the ratio. A first, untimed run per side and path counts the statements the answers ran, triggers'
included (pg_stat_statements.track = all), and lists the heaviest.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from windmill.bench.chaos.servers import durability
from windmill.bench.cpu import tree_cpu
from windmill.bench.processes import wait_gone
from windmill.broker.base import Task
from windmill.catalog import Catalog, Service, load_catalog
from windmill.db.catalog_sync import sync_services
from windmill.db.connect import Database
from windmill.db.embedded import EmbeddedPostgres
from windmill.db.jsonb import use_orjson
from windmill.db.migrations import available_migrations, migrate
from windmill.db.queries import fetch_value, parse_queries, query
from windmill.jobs.queue import DEFAULT_LEASE, compose_round_trip, round_trip_parameters
from windmill.roles.answers import Answer, AnswerWriter

WRITERS = 4
PATHS = ("rabbitmq", "jobtable")
WORKER = "bench-answer-cost"
# A detector's answer of two boxes: the size of a small real answer, well under TOAST's threshold.
ANSWER = {"predictions": [{"label": "dog", "emoji": "🐕", "confidence": 0.91,
                           "bbox": {"x": 12, "y": 40, "width": 210, "height": 180}},
                          {"label": "person", "emoji": "🧑", "confidence": 0.84,
                           "bbox": {"x": 300, "y": 22, "width": 120, "height": 310}}]}
SERVER_SETTINGS = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "none",
                   "pg_stat_statements.max": "1000"}
# What each side answers with: its own text of the statements a service worker sends.
SIDE_QUERIES = ("insert_result", "complete_jobs", "enqueue_service_tasks")
# How a tree claims: one statement (claim_round_trip and its blocks), or, before it, a completion and a claim
# pipelined (claim_jobs_of_queues).
ROUND_TRIP_QUERIES = ("claim_round_trip", "claim_lane_one_queue", "claim_lane_of_queues", "claim_lane_ids")
PIPELINED_CLAIM = "claim_jobs_of_queues"


@dataclass(frozen=True)
class Side:
    """One schema and its statements: this tree's (head), or another tree's sql/ (the baseline)."""

    label: str
    database: Database
    queries: dict[str, str]
    group: int | None = None  # answers through the group commit, at most this many per transaction


@dataclass(frozen=True)
class Run:
    answers: int
    cpu_s: float
    wal_bytes: int
    elapsed_s: float

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s * 1000 / self.answers

    @property
    def wal(self) -> float:
        return self.wal_bytes / self.answers


def side_queries(sql_dir: Path | None) -> dict[str, str]:
    if sql_dir is None:
        return {name: query(name) for name in (*SIDE_QUERIES, *ROUND_TRIP_QUERIES)}
    found: dict[str, str] = {}
    for path in sorted((sql_dir / "queries").glob("*.sql")):
        found.update(parse_queries(path.read_text(encoding="utf-8")))
    claims = ROUND_TRIP_QUERIES if ROUND_TRIP_QUERIES[0] in found else (PIPELINED_CLAIM,)
    return {name: found[name] for name in (*SIDE_QUERIES, *claims)}


def prepare_side(admin: psycopg.Connection, conninfo: str, label: str, catalog: Catalog,
                 sql_dir: Path | None) -> Side:
    """A fresh database named after the side, migrated from its sql/, its services synced from the catalog."""
    name = f"answer_cost_{label}"
    admin.execute(sql.SQL(query("bench_baseline_drop_database")).format(database=sql.Identifier(name)))
    admin.execute(sql.SQL(query("bench_baseline_create_database")).format(database=sql.Identifier(name)))
    database = Database(psycopg.conninfo.make_conninfo(conninfo, dbname=name), application_name="windmill-bench")
    with database.connect() as conn:
        migrate(conn, None if sql_dir is None else available_migrations(sql_dir))
        sync_services(conn, catalog)
        conn.execute(query("bench_statements_extension"))
    return Side(label, database, side_queries(sql_dir))


def seed(side: Side, services: Sequence[Service], images: int, path: str) -> list[Task]:
    """Empty tables, then the images and their tasks as `submit` leaves them for this path; image by image."""
    with side.database.connect() as conn:
        conn.execute(query("bench_answer_cost_empty"))
        ids = [row[0] for row in conn.execute(query("bench_answer_cost_images"), {"count": images})]
        tasks = [Task.for_image({"image_id": image_id, "image_filename": f"a{image_id}.jpg",
                                 "image_path": f"/bench/answer_cost/{image_id}.jpg", "image_url": None}, service)
                 for image_id in sorted(ids) for service in services]
        columns = {"image_ids": [t.image_id for t in tasks], "services": [t.service_name for t in tasks],
                   "queues": [t.queue_name for t in tasks]}
        if path == "rabbitmq":
            conn.execute(query("bench_answer_cost_ledger"), {**columns, "task_ids": [t.task_id for t in tasks]})
        else:
            conn.execute(side.queries["enqueue_service_tasks"], {
                **columns, "payloads": [Jsonb(t.to_message()) for t in tasks],
                "dedupe_keys": [f"{t.service_name}:{t.image_id}" for t in tasks],
                "max_attempts": [5] * len(tasks)})
        conn.execute(query("bench_answer_cost_vacuum"))
        conn.execute(query("bench_checkpoint"))  # every run starts from the same WAL state (full-page writes)
        backend = conn.info.backend_pid
    wait_gone(backend)  # gone before the run's first reading of /proc (see answer_run)
    return tasks


# How a writer stores one answer: on its own connection, one autocommit insert_result, or through the group commit.
AnswerTask = Callable[[psycopg.Connection, Task], None]


def _answer_alone(side: Side) -> AnswerTask:
    def answer(conn: psycopg.Connection, task: Task) -> None:
        conn.execute(side.queries["insert_result"], {
            "image_id": task.image_id, "service": task.service_name, "task_id": task.task_id, "data": Jsonb(ANSWER),
            "status": "success", "error_message": None, "processing_time": 0.01, "worker_id": WORKER})

    return answer


def _answer_in_groups(writer: AnswerWriter) -> AnswerTask:
    def answer(_conn: psycopg.Connection, task: Task) -> None:
        writer.write(Answer(image_id=task.image_id, service=task.service_name, task_id=task.task_id, data=ANSWER,
                            status="success", worker_id=WORKER, processing_time=0.01))

    return answer


def _insert_share(conn: psycopg.Connection, side: Side, share: Sequence[Task], queues: list[str],
                  answer: AnswerTask) -> None:
    for task in share:
        answer(conn, task)


def _claim_answer_complete(conn: psycopg.Connection, side: Side, share: Sequence[Task], queues: list[str],
                           answer: AnswerTask) -> None:
    """A service worker's thread on the job table: complete the last job and claim the next in one round trip."""
    done: list[int] = []
    lease = DEFAULT_LEASE
    one_statement = ROUND_TRIP_QUERIES[0] in side.queries
    round_trip = compose_round_trip((tuple(queues),), None, side.queries.__getitem__) if one_statement else ""
    while True:
        if one_statement:
            with psycopg.RawCursor(conn, row_factory=dict_row) as raw:
                parameters = round_trip_parameters((tuple(queues),), done, [1], WORKER, lease)
                claimed = raw.execute(round_trip, parameters).fetchall()
        else:
            with conn.pipeline():
                if done:
                    conn.execute(side.queries["complete_jobs"], {"ids": done, "worker": WORKER, "now": None})
                cursor = conn.cursor(row_factory=dict_row)
                cursor.execute(side.queries[PIPELINED_CLAIM], {"worker": WORKER, "limit": 1, "lease": lease,
                                                               "now": None, "queues": queues})
                claimed = cursor.fetchall()
        if not claimed:
            return
        done = []
        for job in claimed:
            answer(conn, Task.from_message(job["payload"]))
            done.append(job["id"])


@contextmanager
def answering(side: Side, catalog: Catalog, track: str) -> Iterator[AnswerTask]:
    """How the side's writers store an answer; a group commit's pool is connected before the run's first reading
    of /proc and kept until after its last, as the writers' own connections are (see answer_run)."""
    if side.group is None:
        yield _answer_alone(side)
        return

    def configure(conn: psycopg.Connection) -> None:
        use_orjson(conn)
        conn.execute(query("bench_answer_cost_track"), {"track": track})

    # One connection: the group commit writes one group at a time.
    with ConnectionPool(side.database.conninfo, min_size=1, max_size=1, kwargs={"autocommit": True},
                        configure=configure, name="bench-answer-groups", open=True) as pool:
        pool.wait()
        yield _answer_in_groups(AnswerWriter(pool, catalog, cap=side.group))


def answer_run(side: Side, tasks: Sequence[Task], path: str, postmaster: int, catalog: Catalog, *,
               track: str = "none", writers: int = WRITERS) -> Run:
    """The writers answer every task; the cluster's CPU and the WAL from their start to the last commit.

    The writers connect before the first reading and keep their connections until the last: a backend that exits
    while /proc is read could be reaped between the postmaster's reading and the list of its children, and its CPU
    counted in neither."""
    with answering(side, catalog, track) as answer:
        return _answer_run(side, tasks, path, postmaster, answer, track, writers)


def _answer_run(side: Side, tasks: Sequence[Task], path: str, postmaster: int, answer: AnswerTask, track: str,
                writers: int) -> Run:
    work: Callable[[psycopg.Connection, Side, Sequence[Task], list[str], AnswerTask], None] = (
        _insert_share if path == "rabbitmq" else _claim_answer_complete)
    queues = sorted({task.queue_name for task in tasks})
    connected, finished = threading.Barrier(writers + 1), threading.Barrier(writers + 1)
    go, measured = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def write(share: Sequence[Task]) -> None:
        try:
            with side.database.connect() as conn:
                conn.execute(query("bench_answer_cost_track"), {"track": track})
                connected.wait()
                go.wait()
                work(conn, side, share, queues, answer)
                finished.wait()
                measured.wait()
        except BaseException as error:  # reported below
            errors.append(error)
            connected.abort()
            finished.abort()

    # Task n to writer n % writers: they answer one image's services at once, as a pipeline's workers do.
    threads = [threading.Thread(target=write, args=(tasks[n::writers],)) for n in range(writers)]
    with side.database.connect() as conn:
        for thread in threads:
            thread.start()
        try:
            if track != "none":
                conn.execute(query("bench_statements_reset"))
            wal_before = fetch_value(conn, "bench_answer_cost_wal")
            connected.wait()
            cpu_before = tree_cpu(postmaster)
            started = time.perf_counter()
            go.set()
            finished.wait()
            elapsed = time.perf_counter() - started
            cpu = tree_cpu(postmaster) - cpu_before
            wal = fetch_value(conn, "bench_answer_cost_wal") - wal_before
        except threading.BrokenBarrierError:
            pass  # a writer failed: raised below
        finally:
            go.set()
            measured.set()
            for thread in threads:
                thread.join()
    if errors:
        raise RuntimeError(f"a writer failed: {errors[0]}")
    return Run(len(tasks), cpu, wal, elapsed)


def statement_profile(side: Side, answers: int, echo: Callable[[str], None], top: int) -> None:
    """What the counting run ran per answer: every statement (triggers' included), then the heaviest by time."""
    with side.database.connect() as conn:
        conn.execute(query("bench_answer_cost_track"), {"track": "none"})
        rows = conn.execute(query("bench_answer_cost_statements")).fetchall()
    nested = sum(calls for toplevel, calls, *_ in rows if not toplevel)
    sent = sum(calls for toplevel, calls, *_ in rows if toplevel)
    echo(f"    statements per answer: {(sent + nested) / answers:.1f} ({sent / answers:.1f} sent, "
         f"{nested / answers:.1f} run by triggers and functions)")
    for toplevel, calls, total_ms, _rows, text in rows[:top]:
        echo(f"    {'top' if toplevel else '   '} {calls / answers:5.2f}/answer {total_ms * 1000 / answers:7.1f} µs"
             f"/answer  {text}")


@contextmanager
def bench_cluster(home: Path | None) -> Iterator[tuple[str, int, dict[str, str]]]:
    """A cluster of the benchmark's own (production durability, pg_stat_statements loaded): conninfo, postmaster,
    durability settings. Discarded afterwards."""
    with tempfile.TemporaryDirectory(prefix="windmill-answer-cost-") as work:
        cluster = EmbeddedPostgres(home or Path(work) / "home", fast=False, settings=SERVER_SETTINGS)
        conninfo = cluster.acquire()
        try:
            data_dir = cluster.status().data_dir
            postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
            with psycopg.connect(conninfo, autocommit=True) as conn:
                settings = durability(conn)
            yield conninfo, postmaster, settings
        finally:
            cluster.discard()


def run(*, images: int, runs: int, baseline_sql: Path | None, home: Path | None, top: int,
        group: int | None = None, writers: int = WRITERS,
        echo: Callable[[str], None] = print) -> dict[tuple[str, str], list[Run]]:
    catalog = load_catalog()
    services = catalog.select("primary")
    with bench_cluster(home) as (conninfo, postmaster, settings), \
            psycopg.connect(conninfo, autocommit=True) as admin:
        sides = [prepare_side(admin, conninfo, "head", catalog, None)]
        if baseline_sql is not None:
            sides.append(prepare_side(admin, conninfo, "baseline", catalog, baseline_sql))
        if group is not None:  # the same schema and database, its answers in groups
            sides.append(replace(sides[0], label=f"group{group}", group=group))
        answers = images * len(services)
        echo(f"PostgreSQL per answer: {images} images × {len(services)} primary services = {answers} answers, "
             f"{writers} writers, one answer per transaction"
             + (f" (group{group}: up to {group} per transaction, through the group commit)" if group else "")
             + "; nobody claims the follow-up jobs; "
             f"production durability ({', '.join(f'{k}={v}' for k, v in settings.items())}); "
             f"sides: {', '.join(side.label for side in sides)}"
             + (f" (baseline sql: {baseline_sql})" if baseline_sql else ""))
        for side in sides:
            for path in PATHS:
                tasks = seed(side, services, images, path)
                counted = answer_run(side, tasks, path, postmaster, catalog, track="all", writers=writers)
                echo(f"  {side.label} {path}: counting run (untimed, pg_stat_statements.track = all), "
                     f"{counted.cpu_ms:.3f} ms CPU per answer with the counting")
                statement_profile(side, counted.answers, echo, top)
        results: dict[tuple[str, str], list[Run]] = {(side.label, path): [] for side in sides for path in PATHS}
        for n in range(runs):
            order = sides if n % 2 == 0 else sides[::-1]  # neither side always first on a drifting machine
            for path in PATHS:
                for side in order:
                    result = answer_run(side, seed(side, services, images, path), path, postmaster, catalog,
                                        writers=writers)
                    results[(side.label, path)].append(result)
                    echo(f"  run {n + 1} {side.label} {path}: {result.cpu_ms:.3f} ms CPU per answer, "
                         f"{result.wal:,.0f} B WAL per answer, {result.answers / result.elapsed_s:,.0f} answers/s")
    for path in PATHS:
        for side in sides:
            cpu = [r.cpu_ms for r in results[(side.label, path)]]
            echo(f"  → {side.label} {path}: CPU per answer min {min(cpu):.3f} / median {statistics.median(cpu):.3f}"
                 f" / max {max(cpu):.3f} ms; WAL median "
                 f"{statistics.median(r.wal for r in results[(side.label, path)]):,.0f} B")
        for other in sides[1:]:
            # The group side against the head's one answer per transaction; the head against a baseline.
            upper, lower = (other.label, "head") if other.group else ("head", other.label)
            head, base = (statistics.median(r.cpu_ms for r in results[(label, path)]) for label in (upper, lower))
            ratios = [u.cpu_ms / b.cpu_ms for u, b in zip(results[(upper, path)], results[(lower, path)], strict=True)]
            echo(f"  → {path}: {upper} ÷ {lower} {head / base:.2f} (per interleaved pair: "
                 f"{', '.join(f'{r:.2f}' for r in ratios)})")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side and path, interleaved")
    parser.add_argument("--baseline-sql", type=Path, default=None,
                        help="another tree's sql/ directory: its migrations and queries are the baseline side")
    parser.add_argument("--home", type=Path, default=None,
                        help="the cluster's home (default: a temporary directory); discarded at the end")
    parser.add_argument("--top", type=int, default=12, help="heaviest statements listed per side and path")
    parser.add_argument("--group", type=int, default=None, metavar="N",
                        help="a side whose answers go through the group commit, at most N per transaction")
    parser.add_argument("--writers", type=int, default=WRITERS, help="threads answering on each side")
    args = parser.parse_args(argv)
    run(images=args.images, runs=args.runs, baseline_sql=args.baseline_sql, home=args.home, top=args.top,
        group=args.group, writers=args.writers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
