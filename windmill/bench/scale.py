"""`bench scale` (issue 13 item 7): what the per-request and periodic costs become when the collection grows. On a
throwaway cluster with production durability it builds a synthetic history of N images in SQL (bench backfill's
seed: an answer per primary service, two boxes with their postprocessing, caption scores, a consensus, done jobs
finished over two hours, then the retention prunes the older half), then measures, each several times:
`status`, one backfill run, a claim and complete of 1,000 jobs, one image's completeness, a `submit` of 10,000
new images into the job table, and table + index bytes per image. Run at 100K and 1M: every constant-cost
operation should stay within 1.5× (DESIGN rule 8)."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from datetime import timedelta

import psycopg

from windmill.bench.backfill import seed_history
from windmill.bench.throwaway import Throwaway
from windmill.broker import JobTableBroker
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.db.queries import fetch_row, fetch_value, query
from windmill.jobs import JobQueue
from windmill.monitor import collect_status, image_status, recount_answers
from windmill.producer import submit
from windmill.upkeep import prune_jobs, run_backfill

SUBMITTED_IMAGES = 10_000
CLAIMED_JOBS = 1_000
CLAIM_BATCH = 100  # jobs per claim, as a worker's batch
SCALE_QUEUE = "bench-scale"
NEW_GROUP = "windmill-bench-scale-new"


def _timed_ms(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return (time.perf_counter() - started) * 1000


def _summary(values: list[float]) -> str:
    return f"median {statistics.median(values):,.1f} ms (min {min(values):,.1f}, max {max(values):,.1f}, " \
           f"{len(values)} runs)"


def claim_and_complete(jobs: JobQueue, conn: psycopg.Connection, count: int) -> float:
    """Queue `count` jobs, then claim and complete them a worker's batch at a time; the milliseconds that took."""
    conn.execute(query("bench_queue_jobs"), {"queue": SCALE_QUEUE, "count": count})
    started = time.perf_counter()
    done: list[int] = []
    handled = 0
    while True:
        claimed = jobs.complete_and_claim(done, [SCALE_QUEUE], "bench-scale", CLAIM_BATCH)
        done = [job.id for job in claimed]
        handled += len(claimed)
        if not claimed:
            break
    elapsed = (time.perf_counter() - started) * 1000
    if handled != count:
        raise RuntimeError(f"claimed {handled} jobs of {count}")
    return elapsed


def submit_new_images(throwaway: Throwaway, catalog: Catalog, count: int) -> float:
    """Register `count` new images and submit them (all primary services) into the job table; milliseconds of the
    submit alone. The tasks are removed afterwards, so each run starts from the same queue."""
    with throwaway.database.connect() as conn:
        conn.execute(query("bench_scale_new_images"), {"group": NEW_GROUP, "images": count,
                                                       "prefix": f"/bench/scale/{time.time_ns()}/"})
    with throwaway.database.pool(max_size=2, name="bench-scale") as pool, \
            throwaway.database.connect() as reader, throwaway.database.connect() as lookup:
        broker = JobTableBroker(JobQueue(pool))
        started = time.perf_counter()
        report = submit(reader, lookup, broker, catalog.select("primary"), group=NEW_GROUP)
        elapsed = (time.perf_counter() - started) * 1000
    with throwaway.database.connect() as conn:  # the next run starts from the same history
        conn.execute(query("bench_scale_remove_new_images"), {"group": NEW_GROUP})
        conn.execute(query("bench_scale_vacuum_after_submit"))
    if report.published != count * len(catalog.select("primary")):
        raise RuntimeError(f"submit published {report.published} tasks for {count} images")
    return elapsed


def status_with_backlog(conn: psycopg.Connection, images: int, runs: int, echo: Callable[[str], None]) -> None:
    """`status` while `images` images wait for every primary service in both brokers' backlogs, beside what reading
    every waiting task (as status did before sql/0116) costs on the same rows."""
    started = time.perf_counter()
    with conn.transaction():
        conn.execute(query("bench_without_triggers"))
        conn.execute(query("bench_scale_backlog_add"), {"images": images})
    conn.execute(query("bench_scale_vacuum_history"))
    every_task = query("bench_scale_backlog_every_task")
    try:
        echo(f"  status with a backlog of {images:,} images × 11 primary services waiting (jobs queued and ledger "
             f"entries, loaded in {time.perf_counter() - started:.0f} s): "
             f"{_summary([_timed_ms(lambda: collect_status(conn)) for _ in range(runs)])}; reading every waiting "
             f"task as before sql/0116: {_summary([_timed_ms(lambda: conn.execute(every_task)) for _ in range(runs)])}")
    finally:
        conn.execute(query("bench_scale_backlog_remove"))


def run(throwaway: Throwaway, catalog: Catalog, *, images: int, runs: int = 5, backlog: int = 0,
        echo: Callable[[str], None] = print) -> None:
    database = throwaway.database
    with database.connect() as conn:
        started = time.perf_counter()
        # Answered over the two days before the last hour: what `status` reads of the last minute and hour is
        # the live pipeline's rate, not the collection (a live rate costs the same at any size).
        seed_history(conn, images, answered_ago=timedelta(hours=1), spread=timedelta(days=2),
                     progress=lambda n: echo(f"  seeded {n:,} images"))
        pruned = prune_jobs(conn, timedelta(hours=1))
        recount_answers(conn)  # the seed went behind the triggers' back: the counters are built once
        conn.execute(query("bench_scale_vacuum_history"))
        echo(f"scale bench: {images:,} images of synthetic history (answers of 11 primary services over the two days "
             f"before the last hour, 2 boxes with "
             f"their postprocessing, caption scores, consensus, 7 done jobs each, {pruned:,} pruned by the 1 h "
             f"retention) built in {time.perf_counter() - started:.0f} s; {throwaway.conditions()}; "
             f"each figure over {runs} runs")

        echo(f"  status (every table of `windmill-cli status`, no RabbitMQ): "
             f"{_summary([_timed_ms(lambda: collect_status(conn)) for _ in range(runs)])}")
        echo(f"  one backfill run (a page of 1,000 images): "
             f"{_summary([_timed_ms(lambda: run_backfill(conn, page=1000)) for _ in range(runs)])}")
        chooser = random.Random(13)
        last = fetch_value(conn, "bench_last_image")
        echo(f"  one image's completeness (random images): "
             f"{_summary([_timed_ms(lambda: image_status(conn, chooser.randint(1, last))) for _ in range(runs)])}")
        with database.pool(max_size=2, name="bench-scale-jobs") as pool:
            jobs = JobQueue(pool)
            echo(f"  claim and complete {CLAIMED_JOBS:,} jobs ({CLAIM_BATCH} per claim): "
                 f"{_summary([claim_and_complete(jobs, conn, CLAIMED_JOBS) for _ in range(runs)])}")
    storage_per_image(database, echo)
    submits = [submit_new_images(throwaway, catalog, SUBMITTED_IMAGES) for _ in range(min(runs, 3))]
    echo(f"  submit {SUBMITTED_IMAGES:,} new images × 11 primary services into the job table: {_summary(submits)}")
    if backlog:  # last: the backlog's dead rows would weigh in the storage figures
        with database.connect() as conn:
            status_with_backlog(conn, min(backlog, images), runs, echo)


def storage_per_image(database: Database, echo: Callable[[str], None]) -> None:
    """Table and index bytes per image of each table the history fills, and per row (the seed's estimate is per
    answer, per merged box and per enrichment)."""
    with database.connect() as conn:
        conn.execute(query("bench_vacuum_all"))
        total = fetch_value(conn, "bench_image_count")
        echo(f"  storage per image ({total:,} images, after VACUUM; synthetic answers are small: detectors hold "
             f"two predictions, the other services none):")
        for name, table_bytes, index_bytes, rows in conn.execute(query("bench_scale_storage")).fetchall():
            per_row = f", {(table_bytes + index_bytes) / rows:,.0f} B per row" if rows else ""
            echo(f"    {name}: {(table_bytes + index_bytes) / total:,.0f} B per image "
                 f"(table {table_bytes / total:,.0f} + index {index_bytes / total:,.0f}){per_row}")
        table_bytes, index_bytes = fetch_row(conn, "bench_scale_storage_total")
        echo(f"    all tables: {(table_bytes + index_bytes) / total:,.0f} B per image "
             f"(table {table_bytes / total:,.0f} + index {index_bytes / total:,.0f})")
