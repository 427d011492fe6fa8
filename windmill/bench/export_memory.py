"""`windmill-cli bench export`: peak memory (and time) of `windmill-cli export` in each format over N bench images,
each with three answers, two merged boxes with their colors rows, a caption score and a consensus. Export streams
pages of images, so its memory must not grow with N (target: ≤ 200 MB at 1,000,000 images).

The rows are written straight into the tables (as the pipeline would leave them) without the triggers' jobs, and
removed afterwards with the bench images."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import psycopg

from windmill.bench.processes import watched_run
from windmill.bench.stage import BENCH_GROUP, cli_argv, remove_bench_rows, seed_images
from windmill.db.connect import Database
from windmill.db.queries import query
from windmill.export import FORMATS

# One statement per table, each over every bench image (set-based: a million images seed in minutes).
_SEED = ("bench_export_answers", "bench_export_boxes", "bench_export_box_postprocessing", "bench_export_caption_scores",
         "bench_export_consensus")


def seed(database: Database, images: int) -> None:
    """N bench images and their rows. Without the triggers when the login may (a superuser, e.g. the embedded
    cluster's); otherwise the jobs they queue for the bench images are deleted afterwards."""
    seed_images(database, images)
    with database.connect() as conn, conn.transaction():
        try:
            with conn.transaction():
                conn.execute(query("bench_without_triggers"))
        except psycopg.errors.InsufficientPrivilege:
            pass
        for name in _SEED:
            conn.execute(query(name), {"group": BENCH_GROUP})
        conn.execute(query("bench_export_forget_jobs"), {"group": BENCH_GROUP})
        conn.execute(query("bench_export_analyze"))


def export_run(env: dict[str, str], fmt: str, out: Path) -> tuple[float, float]:
    """(seconds, peak MiB) of one `windmill-cli export` process."""
    seconds, peak_mib, returncode = watched_run(
        cli_argv("export", "--format", fmt, "--out", str(out), "--group", BENCH_GROUP), env)
    if returncode != 0:
        raise RuntimeError(f"export --format {fmt} exited with status {returncode}")
    return seconds, peak_mib


def run(database: Database, database_url: str, *, images: int, formats: tuple[str, ...] = FORMATS) -> None:
    print(f"seeding {images:,} bench images (3 answers, 2 boxes with colors, a caption score, a consensus each)…",
          flush=True)
    started = time.perf_counter()
    seed(database, images)
    print(f"  seeded in {time.perf_counter() - started:.0f} s", flush=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WINDMILL_", "DB_", "QUEUE_"))}
    env.update({"WINDMILL_DATABASE_URL": database_url, "LOG_LEVEL": "WARNING",
                "WINDMILL_HOME": os.environ.get("WINDMILL_HOME", tempfile.gettempdir())})
    try:
        with tempfile.TemporaryDirectory(prefix="windmill-bench-export-") as folder:
            for fmt in formats:
                out = Path(folder) / f"export.{fmt}"
                seconds, peak = export_run(env, fmt, out)
                size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else \
                    sum(f.stat().st_size for f in Path(folder).glob("export*") if f.is_file())
                print(f"export --format {fmt}: {images:,} images in {seconds:.0f} s ({images / seconds:,.0f} "
                      f"images/s), {size / 2**20:,.0f} MiB written; peak memory {peak:.0f} MiB (the export process's "
                      f"high-water mark)",
                      flush=True)
                for leftover in Path(folder).iterdir():
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    finally:
        remove_bench_rows(database)
