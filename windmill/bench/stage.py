"""Service-stage benchmarks, each against private queues and bench-only images that are removed afterwards:

* `submit`: tasks/s that `windmill-cli submit` puts into RabbitMQ (confirms on) or the job table for N images ×
  the 11 primary services, and the producer's peak memory (it streams images, so memory must stay flat);
* `service`: images/s through all 11 primary services, end to end: the stand-in farm at zero latency in its own
  process, service workers as separate processes, results committed in PostgreSQL.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pika
from pika.adapters.blocking_connection import BlockingConnection

from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.db.queries import fetch_row, fetch_value, query
from windmill.simfarm.server import SAMPLES_DIR
from windmill.worker.layout import RoleSpec

BENCH_GROUP = "windmill-bench"


@dataclass(frozen=True)
class BenchEnvironment:
    """What bench subprocesses share: a catalog with private queue names (and the stand-in's ports)."""

    catalog_path: Path
    env: dict[str, str]
    queue_names: list[str]


@contextmanager
def bench_environment(catalog: Catalog, database_url: str, amqp_url: str | None, *, port_offset: int = 0
                      ) -> Iterator[BenchEnvironment]:
    prefix = f"bench_{uuid.uuid4().hex[:6]}_queue_"
    with tempfile.TemporaryDirectory(prefix="windmill-bench-") as folder:
        services = {
            service.name: {"host": service.host, "port": service.port + port_offset, "endpoint": service.endpoint,
                           "queue_prefix": prefix, "category": service.category,
                           "service_type": ",".join(service.service_type), "description": service.description,
                           "enable_triggers": service.enable_triggers,
                           "enable_caption_scoring": service.enable_caption_scoring,
                           "enable_consensus_triggers": service.enable_consensus_triggers,
                           "timeout_s": service.timeout_s, "request_mode": service.request_mode,
                           "prefetch": service.prefetch}
            for service in catalog.services
        }
        path = Path(folder) / "service_config.json"
        path.write_text(json.dumps({"services": services}))
        env = {key: value for key, value in os.environ.items() if not key.startswith(("WINDMILL_", "DB_", "QUEUE_"))}
        env.update({"WINDMILL_DATABASE_URL": database_url, "WINDMILL_SERVICE_CONFIG": str(path), "LOG_LEVEL": "WARNING",
                    "WINDMILL_HOME": os.environ.get("WINDMILL_HOME", str(Path(folder) / "home"))})
        if amqp_url:
            env["WINDMILL_AMQP_URL"] = amqp_url
        queues = [prefix + name for name in services]
        try:
            yield BenchEnvironment(path, env, queues)
        finally:
            if amqp_url:
                _delete_queues(amqp_url, queues)


def _delete_queues(amqp_url: str, queues: list[str]) -> None:
    connection = BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for queue in queues:
        channel.queue_delete(queue)
        channel.queue_delete(queue + ".dlq")
    connection.close()


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "windmill", *args]


def start_workers(layout: Iterable[RoleSpec], env: Mapping[str, str], broker: str) -> list[subprocess.Popen[bytes]]:
    """One worker process per spec of `layout`, fed by `broker`, each with a worker id of its own."""
    processes = []
    for n, spec in enumerate(layout):
        args = ["worker", *spec.worker_arguments(), "--concurrency", str(spec.concurrency), "--broker", broker]
        processes.append(subprocess.Popen(cli_argv(*args), env={**env, "WORKER_ID": f"bench-{spec.role}-{n}"},
                                          stdout=subprocess.DEVNULL))
    return processes


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker (they drain), then wait for each."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=60)


def kill_left_over(processes: list[subprocess.Popen[bytes]]) -> None:
    """After a failed run: SIGKILL whatever is still running."""
    for process in processes:
        if process.poll() is None:
            process.kill()


def remove_bench_rows(database: Database) -> None:
    """Bench images, their answers and every job they caused (cascades), and the bench queues' jobs."""
    with database.connect() as conn:
        conn.execute(query("bench_remove_group"), {"group": BENCH_GROUP})
        conn.execute(query("bench_remove_bench_queues"))


# -- submit -------------------------------------------------------------------------------------------------


def submit_run(database: Database, bench: BenchEnvironment, broker: str) -> tuple[float, float]:
    """(tasks/s, peak MiB) of one `windmill-cli submit` of the bench images to every primary service."""
    with database.connect() as conn:
        conn.execute(query("bench_remove_bench_queues"))
        images = fetch_value(conn, "bench_group_size", {"group": BENCH_GROUP})
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(cli_argv("submit", "--group", BENCH_GROUP, "--services", "primary", "--broker", broker, "--force"),
                   env=bench.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:
        print("  (peak memory not measurable: an earlier child used more)")
    if broker == "rabbitmq":
        _delete_queues(bench.env["WINDMILL_AMQP_URL"], bench.queue_names)
        with database.connect() as conn:  # their messages are gone: free the pairs for the next run
            conn.execute(query("bench_forget_tasks_in_flight"), {"group": BENCH_GROUP})
    return images * 11 / elapsed, peak_kib / 1024


def seed_images(database: Database, count: int) -> None:
    with database.connect() as conn:
        conn.execute(query("bench_remove_group"), {"group": BENCH_GROUP})
        conn.execute(query("bench_add_images"), {"run": uuid.uuid4().hex, "group": BENCH_GROUP, "count": count})


def run_submit(database: Database, database_url: str, catalog: Catalog, amqp_url: str | None, *, images: int,
               runs: int) -> None:
    seed_images(database, images)
    try:
        for broker in (["rabbitmq"] if amqp_url else []) + ["postgres"]:
            with bench_environment(catalog, database_url, amqp_url) as bench:
                rates, peaks = [], []
                for _ in range(runs):
                    rate, peak = submit_run(database, bench, broker)
                    rates.append(rate)
                    peaks.append(peak)
                print(f"submit → {broker}: {images:,} images × 11 services, {runs} run(s): tasks/s "
                      f"{_summary(rates)}; peak memory {max(peaks):.0f} MiB (whole process)", flush=True)
    finally:
        remove_bench_rows(database)


# -- service stage --------------------------------------------------------------------------------------------


def copy_samples(folder: Path, images: int) -> None:
    samples = sorted(SAMPLES_DIR.glob("*.jpg"))
    for n in range(images):
        source = samples[n % len(samples)]
        shutil.copyfile(source, folder / f"{n:06d}_{source.name}")
        shutil.copyfile(source.with_suffix(".boxes.json"), folder / f"{n:06d}_{source.stem}.boxes.json")


def service_run(database: Database, bench: BenchEnvironment, broker: str, folder: Path, *, workers: int,
                concurrency: int) -> tuple[float, float]:
    """(images/s, CPU seconds per image of the workers) for one end-to-end run of the service stage. The rate is
    the steady state: images over the time from the first answer's commit to the last one's (process start-up
    and the submit command's own start are not the service stage)."""
    remove_bench_rows(database)
    subprocess.run(cli_argv("images", "add", str(folder), "--group", BENCH_GROUP), env=bench.env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with database.connect() as conn:
        images = fetch_value(conn, "bench_group_size", {"group": BENCH_GROUP})
    processes = [subprocess.Popen(cli_argv("worker", "--role", "service", "--service", "primary", "--concurrency",
                                       str(concurrency), "--broker", broker),
                                  env={**bench.env, "WORKER_ID": f"bench-service-{n}"},
                                  stdout=subprocess.DEVNULL) for n in range(workers)]
    cpu_before = _children_cpu()
    try:
        time.sleep(1.0)  # workers connect and declare their queues
        subprocess.run(cli_argv("submit", "--group", BENCH_GROUP, "--services", "primary", "--broker", broker),
                       env=bench.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        expected = images * 11
        with database.connect() as conn:
            group = {"group": BENCH_GROUP}
            while (row := fetch_row(conn, "bench_answer_progress", group))[0] < expected:
                if any(process.poll() is not None for process in processes):
                    raise RuntimeError("a service worker died during the benchmark")
                time.sleep(0.25)  # the rate comes from commit times; polling less leaves PostgreSQL to the stage
        elapsed = float(row[1])
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
    return images / elapsed, (_children_cpu() - cpu_before) / images


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_service_stage(database: Database, database_url: str, catalog: Catalog, amqp_url: str | None, *,
                      images: int, runs: int, workers: int, concurrency: int) -> None:
    offset = 20_000 + os.getpid() % 1000 * 10
    farm = subprocess.Popen(cli_argv("farm", "serve", "--services", "primary", "--port-offset", str(offset)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with tempfile.TemporaryDirectory(prefix="windmill-bench-images-") as folder:
            copy_samples(Path(folder), images)
            time.sleep(2.0)  # the stand-in binds its ports
            for broker in (["rabbitmq"] if amqp_url else []) + ["postgres"]:
                with bench_environment(catalog, database_url, amqp_url, port_offset=offset) as bench:
                    rates, cpu = [], []
                    for _ in range(runs):
                        rate, cpu_per_image = service_run(database, bench, broker, Path(folder), workers=workers,
                                                          concurrency=concurrency)
                        rates.append(rate)
                        cpu.append(cpu_per_image)
                    print(f"service stage via {broker}: {images} images × 11 services, {workers} worker processes × "
                          f"{concurrency} threads: images/s {_summary(rates)}; worker CPU s/image "
                          f"{statistics.median(cpu):.3f}", flush=True)
    finally:
        farm.terminate()
        farm.wait(timeout=30)
        remove_bench_rows(database)


def _summary(values: list[float]) -> str:
    return f"min {min(values):,.0f} / median {statistics.median(values):,.0f} / max {max(values):,.0f}"
