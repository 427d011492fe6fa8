"""Job-queue benchmark: no-op jobs claimed and completed per second by 2 worker processes, and the wake-up
latency of an idle worker from a job's commit to its handler's start. Prints min/median/max of 3 runs. With a
history, the job table first holds that many done jobs left by the retention (twice as many finished over two
hours, the older half pruned): the table production has, not an empty one."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from datetime import timedelta

from windmill.db.connect import Database
from windmill.db.queries import fetch_value, query
from windmill.jobs import JobQueue
from windmill.roles.noop import NOOP_QUEUE
from windmill.roles.registry import Role
from windmill.upkeep import prune_jobs
from windmill.worker.runtime import Worker, WorkerHooks, WorkerOptions


def throughput_run(database: Database, database_url: str, jobs: int, workers: int, batch_size: int) -> float:
    """Queue `jobs` no-op jobs, start `workers` processes, return jobs/s from first claim to last completion."""
    with database.connect() as conn:
        conn.execute(query("bench_remove_queue"), {"queue": NOOP_QUEUE})
        conn.execute(query("bench_queue_jobs"), {"queue": NOOP_QUEUE, "count": jobs})
        conn.execute(query("bench_vacuum_jobs"))
    env = {**os.environ, "WINDMILL_DATABASE_URL": database_url, "LOG_LEVEL": "WARNING"}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "windmill", "worker", "--role", "noop", "--concurrency", "2",
             "--batch-size", str(batch_size)],
            env={**env, "WORKER_ID": f"bench-noop-{n}"}, stdout=subprocess.DEVNULL,
        )
        for n in range(workers)
    ]
    # Both probes follow partial indexes, so watching costs the database next to nothing.
    noop = {"queue": NOOP_QUEUE}
    try:
        with database.connect() as conn:
            oldest = fetch_value(conn, "bench_first_waiting_job", noop)
            while fetch_value(conn, "bench_first_waiting_job", noop) == oldest:
                time.sleep(0.001)
            started = time.perf_counter()
            while fetch_value(conn, "bench_queue_unfinished", noop):
                time.sleep(0.02)
            return jobs / (time.perf_counter() - started)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        with database.connect() as conn:
            conn.execute(query("bench_remove_queue"), {"queue": NOOP_QUEUE})


def wakeup_run(database: Database, samples: int) -> list[float]:
    """Milliseconds from an enqueue's commit to the handler's start, for an idle in-process worker."""
    started: list[float] = []
    handler_started = threading.Event()

    def handle(job: object) -> None:
        started.append(time.perf_counter())
        handler_started.set()

    queue_name = "bench-wakeup"
    role = Role(name="bench-wakeup", queues=(queue_name,), handle=handle)
    with database.pool(max_size=4, name="bench") as pool:
        queue = JobQueue(pool)
        worker = Worker(queue, role, worker_id=f"bench-wakeup-{os.getpid()}", listen_conninfo=database.conninfo,
                        options=WorkerOptions(poll_interval_s=1.0), hooks=WorkerHooks())
        thread = threading.Thread(target=worker.run)
        thread.start()
        latencies = []
        try:
            while not worker.listening.is_set():
                time.sleep(0.01)
            with database.connect() as conn:
                for _ in range(samples):
                    time.sleep(0.02)  # idle: the worker waits on its LISTEN connection
                    handler_started.clear()
                    # Timed from before the INSERT is sent: the figure includes its round trip (an upper
                    # bound; the handler may start before the client has even seen the commit's reply).
                    committed = time.perf_counter()
                    conn.execute(query("bench_enqueue_empty_job"), {"queue": queue_name})
                    if not handler_started.wait(5):
                        raise RuntimeError("the worker never started the job")
                    latencies.append((started[-1] - committed) * 1000)
        finally:
            worker.request_stop()
            thread.join()
            with database.connect() as conn:
                conn.execute(query("bench_remove_queue"), {"queue": queue_name})
    return latencies


def summary(values: list[float], unit: str) -> str:
    return f"min {min(values):,.1f} / median {statistics.median(values):,.1f} / max {max(values):,.1f} {unit}"


def seed_done_history(database: Database, kept: int) -> tuple[int, int]:
    """Leave `kept` done jobs in the table the way production does: 2 × kept finished over two hours, those older
    than the 1 h retention pruned, then vacuumed. Returns (kept, pruned)."""
    with database.connect() as conn:
        conn.execute(query("bench_queue_history"), {"jobs": 2 * kept})
        pruned = prune_jobs(conn, timedelta(hours=1))
        conn.execute(query("bench_vacuum_jobs"))
        left = fetch_value(conn, "bench_done_jobs")
    return left, pruned


def run(database: Database, database_url: str, *, jobs: int = 100_000, workers: int = 2, batch_size: int = 500,
        samples: int = 200, runs: int = 3, history: int = 0, conditions: str = "") -> None:
    if history:
        kept, pruned = seed_done_history(database, history)
        print(f"Job table history: {kept:,} done jobs kept by the 1 h retention, {pruned:,} pruned before the runs")
    if conditions:
        print(f"Database: {conditions}")
    print(f"Job queue throughput: {jobs:,} no-op jobs, {workers} worker processes, batches of {batch_size}")
    rates = []
    for n in range(runs):
        rates.append(throughput_run(database, database_url, jobs, workers, batch_size))
        print(f"  run {n + 1}: {rates[-1]:,.0f} jobs/s", flush=True)
    print(f"  → {summary(rates, 'jobs/s')}")
    print(f"Wake-up latency, idle worker, commit → handler start ({samples} samples per run):")
    medians = []
    for n in range(runs):
        latencies = wakeup_run(database, samples)
        medians.append(statistics.median(latencies))
        print(f"  run {n + 1}: {summary(latencies, 'ms')}", flush=True)
    print(f"  → median of runs: {summary(medians, 'ms')}")
