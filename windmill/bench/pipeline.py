"""The whole pipeline as a benchmark: N images through every primary service, merge, postprocessing, consensus
and caption scoring, each role in its own worker process, against the stand-in farm at zero latency. Prints
images/s, worker CPU-seconds per image, answer → merged-boxes latency, wasted postprocessing calls, and the
stale products left at the end, compared by content with a fresh recompute (there should be none).

To time merges it adds, for the run only, a table and a trigger that note when each recompute of an image's
boxes committed and which answers it read; both are dropped at the end.
"""

from __future__ import annotations

import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from windmill.bench.chaos.audit import box_difference
from windmill.bench.cpu import process_cpu
from windmill.bench.database import settle_disk
from windmill.bench.processes import peak_memory_mib
from windmill.bench.stage import (
    BENCH_GROUP,
    BenchEnvironment,
    bench_environment,
    cli_argv,
    copy_samples,
    kill_left_over,
    remove_bench_rows,
    start_workers,
    stop_workers,
)
from windmill.bench.stand_in import running_stand_in
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.db.jsonb import as_stored
from windmill.db.queries import fetch_row, fetch_value, query
from windmill.harmony import HarmonyConfig
from windmill.roles.consensus import consensus_for_image
from windmill.settings import settings_from_mapping
from windmill.worker.layout import ANSWER_STAGE, PRODUCT_STAGE

# The single-machine layout, each role in its own process, with two processes for the answer stage.
ROLES = (ANSWER_STAGE, ANSWER_STAGE, *PRODUCT_STAGE)


@dataclass(frozen=True)
class PipelineRun:
    elapsed: float
    cpu_per_image: float
    latencies_ms: list[float]
    end: dict[str, int]
    stored: int  # per-box postprocessing answers stored
    replaced: int  # ... deleted with a box that a recompute replaced
    dropped: int  # answers that found their box gone (their insert failed)
    votes_stored: int  # consensus rows written (each a vote)
    consensus_jobs: int  # consensus jobs run (votes, and those that stored nothing)
    peak_memory_mib: list[tuple[str, float]]  # each worker process's role and resident high-water mark


def run(database: Database, database_url: str, catalog: Catalog, *, images: int, runs: int = 1,
        amqp_url: str | None) -> None:
    """`runs` runs per broker the service tasks can travel by: RabbitMQ (when configured) and the job table."""
    with (running_stand_in(lambda offset: cli_argv("farm", "serve", "--port-offset", str(offset))) as (_, offset),
          tempfile.TemporaryDirectory(prefix="windmill-bench-images-") as folder):
        copy_samples(Path(folder), images)
        for broker in (["rabbitmq"] if amqp_url else []) + ["postgres"]:
            with bench_environment(catalog, database_url, amqp_url, port_offset=offset) as bench:
                for _ in range(runs):
                    _report(broker, images, _run_once(database, catalog, bench, broker, folder, images))


def _run_once(database: Database, catalog: Catalog, bench: BenchEnvironment, broker: str, folder: str,
              images: int) -> PipelineRun:
    with database.connect() as conn:
        conn.execute(query("bench_pipeline_watch"))
        first_postprocessing_id = fetch_value(conn, "bench_postprocessing_ids_used")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        remove_bench_rows(database)
        subprocess.run(cli_argv("images", "add", folder, "--group", BENCH_GROUP), env=bench.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu_before = _children_cpu()
        processes = start_workers(ROLES, bench.env, broker)
        time.sleep(2.0)  # the stand-in binds its ports, workers connect
        with database.connect() as conn:
            settle_disk(conn)
        subprocess.run(cli_argv("submit", "--group", BENCH_GROUP, "--services", "primary", "--broker", broker),
                       env=bench.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until_idle(database, processes, images * len(catalog.in_category("primary")))
        peaks = [(spec.role, peak_memory_mib(process.pid)) for spec, process in zip(ROLES, processes, strict=True)]
        stop_workers(processes)
        cpu = (_children_cpu() - cpu_before) / images
        with database.connect() as conn:
            group = {"group": BENCH_GROUP}
            elapsed = float(fetch_value(conn, "bench_pipeline_span", {**group, "since": None}))
            latencies = sorted(row[0] for row in conn.execute(query("bench_pipeline_latencies"), group))
            end = dict(zip(("missing_consensus", "stuck_jobs", "postprocessing_rows"),
                           fetch_row(conn, "bench_pipeline_end_state", group), strict=True))
            end["stale_consensus"] = _stale_consensus(conn, catalog)
            end["stale_boxes"] = _stale_boxes(conn, settings_from_mapping(bench.env).harmony)
            allocated = fetch_value(conn, "bench_postprocessing_ids_used") - first_postprocessing_id
            stored, replaced, inserted = fetch_row(conn, "bench_pipeline_waste")
            votes_stored, consensus_jobs = fetch_row(conn, "bench_pipeline_votes", group)
    finally:
        kill_left_over(processes)
        with database.connect() as conn:
            conn.execute(query("bench_pipeline_unwatch"))
        remove_bench_rows(database)
    return PipelineRun(elapsed, cpu, latencies, end, stored, replaced, max(0, allocated - inserted), votes_stored,
                       consensus_jobs, peaks)


def _report(broker: str, images: int, run: PipelineRun) -> None:
    wasted = run.replaced + run.dropped
    calls = run.stored + run.dropped
    latencies, end = run.latencies_ms, run.end
    print(f"pipeline via {broker}: {images} images, every primary service + merge + postprocessing + consensus + "
          f"caption scoring, {len(ROLES)} worker processes")
    print(f"  throughput           {images / run.elapsed:.1f} images/s ({run.elapsed:.1f} s from the first answer "
          f"to the last product)")
    print(f"  worker CPU           {run.cpu_per_image:.3f} CPU-s per image (all worker processes)")
    # Each process's high-water mark over the whole run: a worker whose memory grew with the images would show it
    # as a peak that grows with --images; bounded caches give the same peak for any longer run.
    print("  peak memory          " + ", ".join(f"{role} {mib:.0f}" for role, mib in run.peak_memory_mib)
          + " MiB (resident, each worker process)")
    if latencies:
        print(f"  answer → boxes       p50 {percentile(latencies, 50):.0f} ms, p90 {percentile(latencies, 90):.0f} ms, "
              f"p99 {percentile(latencies, 99):.0f} ms, max {latencies[-1]:.0f} ms ({len(latencies)} detector answers)")
    print(f"  wasted postprocessing {wasted} of {calls} box answers ({100 * wasted / max(calls, 1):.1f} %): "
          f"{run.replaced} deleted with a replaced box, {run.dropped} for a box already gone")
    print(f"  consensus            {run.votes_stored / images:.2f} votes stored per image, "
          f"{run.consensus_jobs / images:.2f} consensus jobs run per image")
    print(f"  at the end           stale consensus {end['stale_consensus']}, missing consensus "
          f"{end['missing_consensus']}, stale boxes {end['stale_boxes']} (both compared by content), running/dead "
          f"jobs {end['stuck_jobs']}", flush=True)


def _stale_consensus(conn: psycopg.Connection, catalog: Catalog) -> int:
    """Images whose stored consensus is not the vote over the rows they hold now. Compared by content: a
    timestamp cannot tell, since a recompute that waited for the image's lock saw rows committed after its
    transaction began."""
    service_types = {service.name: service.service_type for service in catalog.services}
    stored = conn.execute(query("bench_stored_consensus"), {"group": BENCH_GROUP}).fetchall()
    return sum(as_stored(consensus_for_image(conn, image_id, service_types)) != data for image_id, data in stored)


def _stale_boxes(conn: psycopg.Connection, harmony: HarmonyConfig) -> int:
    """Images whose boxes are not a fresh harmonization of their latest detector answers (the chaos audit's check;
    a timestamp cannot tell, for the same reason as above)."""
    images = [row[0] for row in conn.execute(query("group_images"), {"group": BENCH_GROUP})]
    return sum(box_difference(conn, image_id, harmony)[1] is not None for image_id in images)


def wait_until_idle(database: Database, processes: list[subprocess.Popen[bytes]], answers: int) -> float:
    """Until every task has its answer and no job is left (the last job's effects, new jobs, would show within
    half a second). Returns the CPU-seconds its own database backend spent on watching: the benchmark's, not the
    pipeline's, so the caller leaves it out of PostgreSQL's figure (counting the answers five times a second cost
    about 0.6 ms per image of 300)."""
    params = {"group": BENCH_GROUP, "answers": answers}
    all_answered = False  # answers are never taken back: once all are in, stop counting them
    quiet_since = None
    with database.connect() as conn:
        backend = conn.info.backend_pid
        while True:
            if any(process.poll() is not None for process in processes):
                raise RuntimeError("a worker process died during the benchmark")
            all_answered = all_answered or fetch_value(conn, "bench_all_answered", params)
            if not all_answered or fetch_value(conn, "bench_jobs_unfinished", params):
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.perf_counter()
            elif time.perf_counter() - quiet_since > 0.5:
                return process_cpu(backend)
            time.sleep(0.2)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], percent: int) -> float:
    return values[min(len(values) - 1, max(0, round(len(values) * percent / 100) - 1))]
