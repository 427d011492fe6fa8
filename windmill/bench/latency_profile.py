"""`bench pipeline --latency-profile NAME|FILE [--scale-latency SERVICE=FACTOR]`: the whole pipeline against the
stand-in with a latency profile (each service's time per request and capacity, windmill/simfarm/latency.py),
answers computed per request (--no-cache).

The workers are laid out as an operator would for those services: each service's `max_concurrency` is its
capacity (what its server works on at once; a smaller catalog limit, such as pose's 1, stays), one answer-stage
worker with a lane per service, and each worker's --concurrency the sum of its lanes. Images arrive one at a time
at a steady rate, by default 1.25 × the bound of the primary services (so the slowest service always has work and
its queue grows, as a collection being fed faster than its slowest service is), with --scale-latency left out of
that default: slowing one service down does not slow the feed.

Printed: images/s (first submit → last product) beside the bound the profile implies — per service, capacity ÷
(calls per image × mean latency), postprocessing and caption-scoring calls per image counted from what was stored;
the bound is the smallest — and the time from each image's submit to its first merged boxes (p50, p95) beside
twice the slowest detector's mean latency.
"""

from __future__ import annotations

import json
import math
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from windmill.bench.pipeline import percentile, wait_until_idle
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
from windmill.broker import JobTableBroker
from windmill.broker.rabbitmq import RabbitMQBroker
from windmill.catalog import Catalog, load_catalog
from windmill.db.connect import Database
from windmill.db.queries import fetch_value, query
from windmill.errors import WindmillError
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.simfarm.contract import PROFILES
from windmill.simfarm.latency import LatencyProfile, bundled_profiles, parse_profile
from windmill.worker.layout import ANSWER_STAGE, PRODUCT_STAGE, RoleSpec

FEED_OVER_BOUND = 1.25  # the default feed: a quarter faster than the slowest primary service can serve
@dataclass(frozen=True)
class LatencyBench:
    """What `--latency-profile`, `--scale-latency` and `--rate` asked for."""

    profile: str  # a bundled profile's name or a file
    scale: Mapping[str, float] = field(default_factory=dict)
    rate: float | None = None  # images/s fed; None: FEED_OVER_BOUND × the unscaled primary bound


def latency_setup(profile: str | None, scales: Iterable[str], rate: float | None) -> LatencyBench | None:
    """The command line's options → a LatencyBench (None without a profile), checked before anything starts."""
    if profile is None:
        if scales or rate:
            raise WindmillError("--scale-latency and --rate need --latency-profile")
        return None
    setup = LatencyBench(profile, parse_scales(scales), rate)
    profile_document(setup.profile, setup.scale)  # a bad profile or service is refused now, in one sentence
    return setup


def parse_scales(values: Iterable[str]) -> dict[str, float]:
    """`SERVICE=FACTOR` options → factors by service; a bad one is a WindmillError in one sentence."""
    scales = {}
    for value in values:
        service, _, factor = value.partition("=")
        try:
            scales[service.strip()] = float(factor)
        except ValueError:
            raise WindmillError(f"--scale-latency {value!r}: expected SERVICE=FACTOR, such as ollama=10") from None
        if not scales[service.strip()] > 0 or not math.isfinite(scales[service.strip()]):
            raise WindmillError(f"--scale-latency {value!r}: the factor must be a positive number")
    return scales


def profile_document(name_or_path: str, scale: Mapping[str, float]) -> tuple[dict, LatencyProfile]:
    """The profile's JSON with the scaled services' mean latency multiplied, and the profile it parses to."""
    path = bundled_profiles().get(name_or_path) or Path(name_or_path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as problem:
        raise WindmillError(f"cannot read latency profile {name_or_path!r}: {problem}") from None
    services = document.get("services", {}) if isinstance(document, dict) else {}
    for service, factor in scale.items():
        if service not in services:
            raise WindmillError(f"--scale-latency {service}: the profile {name_or_path!r} has no such service "
                                f"(it times {', '.join(services)})")
        services[service] = {**services[service], "mean_ms": services[service]["mean_ms"] * factor}
    return document, parse_profile(document, name=path.stem, source=str(path), known_services=PROFILES)


def service_bounds(profile: LatencyProfile, calls_per_image: Mapping[str, float],
                   mean_s: Mapping[str, float] | None = None) -> dict[str, float]:
    """Images/s each service allows: capacity ÷ (calls per image × mean latency: the profile's, or `mean_s` where
    given); services with no capacity, no time or no calls bound nothing."""
    bounds = {}
    for service, calls in calls_per_image.items():
        timing = profile.timing(service)
        if timing is not None and timing.capacity and timing.mean_ms > 0 and calls > 0:
            seconds = (mean_s or {}).get(service, timing.mean_ms / 1000)
            bounds[service] = timing.capacity / (calls * seconds)
    return bounds


def operator_catalog(path: Path, profile: LatencyProfile) -> None:
    """Each service's max_concurrency set to its capacity in the profile (a smaller limit already there stays)."""
    document = json.loads(path.read_text())
    for name, entry in document["services"].items():
        timing = profile.timing(name)
        if timing is not None and timing.capacity:
            entry["max_concurrency"] = min(timing.capacity, entry.get("max_concurrency") or timing.capacity)
    path.write_text(json.dumps(document))


def operator_layout(catalog: Catalog) -> tuple[RoleSpec, ...]:
    """One answer-stage worker and the product stage, each worker's threads the sum of its services' limits (a
    lane each, windmill.worker.lanes); roles calling no service keep their threads."""
    def threads(spec: RoleSpec) -> int:
        if spec.role == "caption_score":
            names = ["caption_score"]
        elif spec.service:
            names = [service.name for service in catalog.select(spec.service)] if spec.role == "service" \
                else spec.service.split(",")
        else:
            return spec.concurrency
        return sum(catalog[name].max_concurrency or spec.concurrency for name in names)

    return tuple(RoleSpec(spec.role, spec.service, threads(spec)) for spec in (ANSWER_STAGE, *PRODUCT_STAGE))


def feed_rate(setup: LatencyBench, catalog: Catalog) -> float:
    """Images/s to feed: as asked, or FEED_OVER_BOUND × what the unscaled primary services allow."""
    if setup.rate:
        return setup.rate
    _, unscaled = profile_document(setup.profile, {})
    bounds = service_bounds(unscaled, {service.name: 1.0 for service in catalog.in_category("primary")})
    if not bounds:
        raise WindmillError(f"the profile {setup.profile!r} gives no primary service a capacity: pass --rate")
    return FEED_OVER_BOUND * min(bounds.values())


@dataclass(frozen=True)
class FedRun:
    submitted_at: list[datetime]  # by image, in id order
    elapsed_s: float  # first submit → last product
    first_boxes_ms: list[float]  # sorted
    calls_per_image: dict[str, float]
    call_s: dict[str, float]  # each service's mean call time this run


def run(database: Database, database_url: str, catalog: Catalog, setup: LatencyBench, *, images: int, runs: int,
        amqp_url: str | None) -> None:
    """`runs` runs per broker the service tasks can travel by: RabbitMQ (when configured) and the job table."""
    document, profile = profile_document(setup.profile, setup.scale)
    with tempfile.TemporaryDirectory(prefix="windmill-bench-profile-") as folder:
        path = Path(folder) / "latency_profile.json"
        path.write_text(json.dumps(document))
        with running_stand_in(lambda offset: stand_in_argv(path, offset)) as (_, offset):
            pictures = Path(folder) / "images"
            pictures.mkdir()
            copy_samples(pictures, images)
            for broker in (["rabbitmq"] if amqp_url else []) + ["postgres"]:
                with bench_environment(catalog, database_url, amqp_url, port_offset=offset) as bench:
                    operator_catalog(bench.catalog_path, profile)
                    laid_out = load_catalog(bench.catalog_path)
                    rate = feed_rate(setup, laid_out)
                    for _ in range(runs):
                        fed = _run_once(database, laid_out, bench, broker, pictures, images, rate)
                        report(setup, profile, laid_out, broker, rate, fed)


def _run_once(database: Database, catalog: Catalog, bench: BenchEnvironment, broker: str, folder: Path,
              images: int, rate: float) -> FedRun:
    with database.connect() as conn:
        conn.execute(query("bench_latency_watch"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        remove_bench_rows(database)
        subprocess.run(cli_argv("images", "add", str(folder), "--group", BENCH_GROUP), env=bench.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes = start_workers(operator_layout(catalog), bench.env, broker)
        _wait_for_workers(database, processes)
        submitted = feed(database, bench, broker, images, rate)
        wait_until_idle(database, processes, images * len(catalog.in_category("primary")))
        stop_workers(processes)
        return measure(database, catalog, submitted)
    finally:
        kill_left_over(processes)
        with database.connect() as conn:
            conn.execute(query("bench_latency_unwatch"))
        remove_bench_rows(database)


def feed(database: Database, bench: BenchEnvironment, broker: str, images: int, rate: float) -> list[datetime]:
    """Submit the bench images to every primary service one at a time, `rate` a second; each one's submit time
    (the database's clock, as the boxes' commit times are)."""
    services = load_catalog(bench.catalog_path).in_category("primary")
    submitted = []
    with database.connect() as reader, database.connect() as lookup, database.pool(max_size=2) as pool:
        rabbitmq = RabbitMQBroker(bench.env["WINDMILL_AMQP_URL"]) if broker == "rabbitmq" else None
        target = rabbitmq or JobTableBroker(JobQueue(pool))
        started = time.perf_counter()
        try:
            for n in range(1, images + 1):
                time.sleep(max(0.0, started + (n - 1) / rate - time.perf_counter()))
                submitted.append(fetch_value(lookup, "bench_latency_clock"))
                submit(reader, lookup, target, services, group=BENCH_GROUP, limit=n)  # only the n-th is new
        finally:
            if rabbitmq is not None:
                rabbitmq.close()
    return submitted


def measure(database: Database, catalog: Catalog, submitted: list[datetime]) -> FedRun:
    with database.connect() as conn:
        group = {"group": BENCH_GROUP}
        ids = [row[0] for row in conn.execute(query("group_images"), group)]
        boxes: dict[int, datetime] = dict(conn.execute(query("bench_latency_first_boxes")).fetchall())
        last: datetime = fetch_value(conn, "bench_latency_last_product", group)
        later: dict[str, int] = dict(conn.execute(query("bench_latency_later_calls"), group).fetchall())
        call_s = {service: float(seconds) for service, seconds in conn.execute(query("bench_latency_call_times"),
                                                                                 group)}
    images = len(submitted)
    first_boxes = sorted((boxes[image] - at).total_seconds() * 1000 for image, at in zip(sorted(ids), submitted,
                                                                                        strict=True) if image in boxes)
    calls = {service.name: 1.0 for service in catalog.in_category("primary")}
    calls.update({service: count / images for service, count in later.items()})
    return FedRun(submitted, (last - submitted[0]).total_seconds(), first_boxes, calls, call_s)


def report(setup: LatencyBench, profile: LatencyProfile, catalog: Catalog, broker: str, rate: float,
           run: FedRun) -> None:
    images = len(run.submitted_at)
    bounds = service_bounds(profile, run.calls_per_image)
    slowest, bound = min(bounds.items(), key=lambda item: item[1])
    rate_achieved = images / run.elapsed_s
    scaled = ", ".join(f"{service} ×{factor:g}" for service, factor in setup.scale.items()) or "none"
    print(f"pipeline via {broker} against latency profile {profile.name} (latency scaled: {scaled}), answers "
          f"computed per request: {images} images fed at {rate:.3f}/s, one answer-stage worker, each service's "
          f"max_concurrency its capacity")
    print(f"  throughput           {rate_achieved:.3f} images/s ({run.elapsed_s:.1f} s from the first submit to the "
          f"last product) = {100 * rate_achieved / bound:.0f} % of the bound {bound:.3f} images/s ({slowest}); "
          f"target ≥ 90 %")
    drawn = service_bounds(profile, run.calls_per_image, run.call_s)[slowest]
    print(f"  with this run's draws {100 * rate_achieved / drawn:.0f} % of {drawn:.3f} images/s ({slowest}'s calls "
          f"took {run.call_s.get(slowest, 0):.3f} s on average; the profile's mean is "
          f"{_mean_ms(profile, slowest) / 1000:.3f} s)")
    print("  bounds (images/s)    " + ", ".join(f"{service} {value:.2f} ({run.calls_per_image[service]:.2f} calls)"
                                              for service, value in sorted(bounds.items(), key=lambda item: item[1])))
    detectors = [service.name for service in catalog.services if "spatial" in service.service_type
                 and profile.timing(service.name) is not None]
    slowest_detector = max(detectors, key=lambda name: _mean_ms(profile, name))
    target_ms = 2 * _mean_ms(profile, slowest_detector)
    if run.first_boxes_ms:
        p50, p95 = percentile(run.first_boxes_ms, 50), percentile(run.first_boxes_ms, 95)
        print(f"  first boxes          p50 {p50:.0f} ms, p95 {p95:.0f} ms from submit ({len(run.first_boxes_ms)} "
              f"images); target p50 ≤ {target_ms:.0f} ms (2 × {slowest_detector})", flush=True)
    else:
        print("  first boxes          none stored", flush=True)


def _mean_ms(profile: LatencyProfile, service: str) -> float:
    timing = profile.timing(service)
    return timing.mean_ms if timing is not None else 0.0


def _wait_for_workers(database: Database, processes: list[subprocess.Popen[bytes]]) -> None:
    """Until every worker process has announced itself, then a moment more: its listener or consumer connects and
    it goes idle (submitting while they start would time their start-up, not the pipeline)."""
    pids = [process.pid for process in processes]
    with database.connect() as conn:
        while fetch_value(conn, "bench_latency_workers_up", {"pids": pids}) < len(pids):
            if any(process.poll() is not None for process in processes):
                raise WindmillError("a worker process of the benchmark exited at start")
            time.sleep(0.2)
    time.sleep(2.0)


def stand_in_argv(profile_path: Path, offset: int) -> list[str]:
    """The stand-in with the (scaled) profile, every answer computed per request."""
    return cli_argv("farm", "serve", "--port-offset", str(offset), "--latency-profile", str(profile_path),
                    "--no-cache")
