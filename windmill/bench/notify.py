"""What the wake-up NOTIFY costs answer writers (issue 13 item 5): commits per second of 16 concurrent writers, each
committing one detector answer per transaction for an image of its own (so every answer queues a new merge job
and a consensus job, as a backed-up pipeline does), under four wake-ups, interleaved run by run:

- none: the notify trigger disabled (the baseline);
- now (sql/0098, 0100): a job due now notifies its queue's channel unless the queue is backed up (a job due when
  queued has waited 50 ms unclaimed there); nobody claims here, so the merge queue stays backed up and the answers
  notify no more: what the rule saves answer writers while workers are busy;
- every due job (sql/0085 and 0096): a notification on its queue's channel for each job due now, none for a job
  due later (the consensus job); PostgreSQL folds a transaction's notifications of one channel into one;
- every job (sql/0002): a notification for every newly queued job, due later too.
The earlier wake-ups are swapped in for their runs, on the throwaway cluster only. The runs start from a backlog of one
run's jobs, analyzed.

Runs on a throwaway cluster with production durability; prints the conditions beside the figures."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable

import psycopg

from windmill.bench.throwaway import Throwaway
from windmill.db.queries import fetch_value, query

WRITERS = 16
SERVICE = "yolov8"  # a detector that votes: its answers queue a merge job (due now) and a consensus job (later)
WAKE_UPS = ("none", "now", "every due job", "every job")
FORMER = {"every due job": "bench_notify_every_due_job", "every job": "bench_notify_every_job"}  # their queries


def _set_wake_up(conn: psycopg.Connection, wake_up: str, current: Callable[[], tuple[str, str]]) -> None:
    function, trigger = current()
    with conn.transaction():
        if wake_up in FORMER:  # a former wake-up, on this throwaway cluster only
            conn.execute(query(f"{FORMER[wake_up]}_function"))
            conn.execute(query(f"{FORMER[wake_up]}_trigger"))
        else:  # the definitions the migrations left, as the server printed them
            conn.execute(function)
            conn.execute(trigger)
        conn.execute(query("bench_notify_disable" if wake_up == "none" else "bench_notify_enable"))


def _migrated_definitions(conn: psycopg.Connection) -> tuple[str, str]:
    """The notify function and trigger as the migrations left them."""
    return (fetch_value(conn, "bench_notify_function_as_migrated"),
            fetch_value(conn, "bench_notify_trigger_as_migrated"))


def writers_run(throwaway: Throwaway, images: list[int], answers_per_writer: int) -> float:
    """16 writers, one answer per transaction each; commits per second from the first start to the last commit."""
    ready = threading.Barrier(WRITERS + 1)
    errors: list[BaseException] = []

    def write(share: list[int]) -> None:
        try:
            with throwaway.database.connect() as conn:
                statement = query("insert_result")
                conn.execute(query("bench_image_count"))  # connected and warm before the start
                ready.wait()
                for image_id in share:
                    conn.execute(statement, {"image_id": image_id, "service": SERVICE, "task_id": uuid.uuid4(),
                                             "data": '{"predictions": []}', "status": "success",
                                             "error_message": None, "processing_time": 0.01,
                                             "worker_id": "bench-notify"})
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=write, args=(images[n * answers_per_writer:(n + 1) * answers_per_writer],))
               for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"a writer failed: {errors[0]}")
    return WRITERS * answers_per_writer / elapsed


def run(throwaway: Throwaway, *, answers_per_writer: int = 300, runs: int = 3,
        echo: Callable[[str], None] = print) -> dict[str, list[float]]:
    per_run = WRITERS * answers_per_writer
    with throwaway.database.connect() as conn:
        definitions = _migrated_definitions(conn)
        images = sorted(row[0] for row in conn.execute(query("bench_notify_images"),
                                                        {"images": per_run * (runs * len(WAKE_UPS) + 1)}))
        conn.execute(query("bench_vacuum_images"))
        # The queues backed up, and the planner told: on a job table it has no statistics of, a writer's session
        # planned enqueue()'s look-up for a waiting twin by jobs_claimable_idx and walked every waiting job of the
        # queue for each answer, until autovacuum's first analyze (the erratic first runs of earlier sittings).
        conn.execute(query("bench_notify_backlog"), {"images": images[:per_run]})
        conn.execute(query("bench_vacuum_jobs"))
    echo(f"NOTIFY cost: {WRITERS} writers × {answers_per_writer} answers ({SERVICE}: a merge and a consensus job "
         f"each, distinct images, one answer per transaction, nobody claims, {per_run:,} of each waiting before the "
         f"first run, analyzed), {runs} interleaved runs; "
         f"{throwaway.conditions()}")
    rates: dict[str, list[float]] = {wake_up: [] for wake_up in WAKE_UPS}
    used = per_run
    with throwaway.database.connect() as conn:
        try:
            for n in range(runs):
                for wake_up in WAKE_UPS:
                    _set_wake_up(conn, wake_up, lambda: definitions)
                    conn.execute(query("bench_checkpoint"))  # each run starts from the same WAL state
                    rate = writers_run(throwaway, images[used:used + per_run], answers_per_writer)
                    used += per_run
                    rates[wake_up].append(rate)
                    echo(f"  run {n + 1}, wake-up {wake_up}: {rate:,.0f} commits/s")
                # The machine may be shared: within a run the variants met the same conditions.
                echo(f"  run {n + 1}, each against none: " + ", ".join(
                    f"{wake_up} {rates[wake_up][-1] / rates['none'][-1]:.2f}" for wake_up in WAKE_UPS[1:]))
        finally:
            _set_wake_up(conn, "now", lambda: definitions)
    baseline = statistics.median(rates["none"])
    echo(f"  → wake-up none: median {baseline:,.0f} commits/s (baseline)")
    for wake_up in WAKE_UPS[1:]:
        median = statistics.median(rates[wake_up])
        echo(f"  → wake-up {wake_up}: median {median:,.0f} commits/s, costs {(1 - median / baseline) * 100:.1f} % "
             "of the baseline's commit rate (target ≤ 25 %)")
    return rates
