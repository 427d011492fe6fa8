"""Backfill and retention cost on a synthetic history of N images (generated in SQL, not through the farm): a
healthy collection whose every product records its current inputs, plus done jobs finished over the last two
hours. Measures one backfill run (a page of a healthy collection, then a page with lost consensus rows) and the
retention pass, so the lead can compare the figures at 100K and 1M images: a run's cost must follow the page,
not the collection."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import psycopg

from windmill.db.connect import Database
from windmill.db.queries import fetch_value, query
from windmill.upkeep import prune_jobs, run_backfill

GROUP = "windmill-bench-backfill"
DONE_JOBS_PER_IMAGE = 7
SEED_CHUNK = 50_000  # images per seeding transaction


@dataclass(frozen=True)
class History:
    first_image: int
    last_image: int


def seed_history(conn: psycopg.Connection, images: int, *, done_jobs_per_image: int = DONE_JOBS_PER_IMAGE,
                 answered_ago: timedelta = timedelta(0), spread: timedelta = timedelta(0),
                 progress: Callable[[int], None] | None = None) -> History:
    """Add `images` images with an answer per primary service, two boxes each with their postprocessing, caption
    scores, a consensus and done jobs, all consistent (the backfill finds nothing to do). The answers are
    `answered_ago` old, spread over `spread` more by image (a history answered over days, not in the last minute).
    Behind the triggers' back, as a bulk load is: needs a role allowed to set session_replication_role (a superuser,
    as the embedded database's is)."""
    prefix = f"/bench/backfill/{uuid.uuid4().hex}/"
    first = last = 0
    added = 0
    while added < images:
        chunk = min(SEED_CHUNK, images - added)
        with conn.transaction():
            conn.execute(query("bench_without_triggers"))
            ids = [row[0] for row in conn.execute(query("bench_history_images"),
                                                   {"prefix": f"{prefix}{added}-", "group": GROUP, "images": chunk})]
            bounds = {"first": min(ids), "last": max(ids), "per_image": done_jobs_per_image,
                      "answered_ago_s": int(answered_ago.total_seconds()),
                      "spread_s": max(1, int(spread.total_seconds()))}
            for name in ("bench_history_answers", "bench_history_boxes", "bench_history_postprocessing",
                         "bench_history_consensus", "bench_history_jobs"):
                conn.execute(query(name), bounds)
        first = first or bounds["first"]
        last = bounds["last"]
        added += chunk
        if progress:
            progress(added)
    conn.execute(query("bench_vacuum_history"))
    return History(first, last)


Outcome = TypeVar("Outcome")


def _timed(action: Callable[[], Outcome]) -> tuple[float, Outcome]:
    started = time.perf_counter()
    outcome = action()
    return (time.perf_counter() - started) * 1000, outcome


def run(database: Database, *, images: int = 100_000, page: int = 1000, runs: int = 5,
        echo: Callable[[str], None] = print) -> None:
    with database.connect() as conn:
        started = time.perf_counter()
        seed_history(conn, images, progress=lambda n: echo(f"  seeded {n:,} images"))
        total_images = fetch_value(conn, "bench_image_count")
        echo(f"backfill bench: {images:,} images seeded in {time.perf_counter() - started:.0f} s "
             f"({total_images:,} in the database), page {page:,}")

        healthy = []
        for _ in range(runs):
            elapsed, queued = _timed(lambda: run_backfill(conn, page=page))
            healthy.append(elapsed)
            if queued:
                echo(f"  warning: a healthy page queued {queued}")
        echo(f"  backfill run, healthy page: min {min(healthy):.1f} / median {statistics.median(healthy):.1f} / "
             f"max {max(healthy):.1f} ms over {runs} runs")

        lost = conn.execute(query("bench_lose_consensus"), {"page": page}).rowcount
        elapsed, queued = _timed(lambda: run_backfill(conn, page=page))
        echo(f"  backfill run, page with {lost} lost consensus rows: {elapsed:.1f} ms, queued {queued}")

        elapsed, pruned = _timed(lambda: prune_jobs(conn, timedelta(hours=1)))
        rate = pruned / (elapsed / 1000) if elapsed else 0.0
        echo(f"  retention: pruned {pruned:,} done jobs older than 1 h in {elapsed / 1000:.1f} s "
             f"({rate:,.0f} jobs/s)")

        sizes = conn.execute(query("bench_storage")).fetchall()
        per_image = sum(table + index for _, table, index in sizes) / max(total_images, 1)
        echo("  bytes per image (table + index): " + ", ".join(
            f"{name} {(table + index) / max(total_images, 1):,.0f}" for name, table, index in sizes)
             + f"; total {per_image:,.0f}")
