"""`windmill-cli bench …`: the benchmarks whose figures the README quotes (the scripts live in windmill/bench)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from windmill.broker.choice import BROKERS, RABBITMQ
from windmill.commands.context import AppContext, pass_app
from windmill.export import FORMATS as EXPORT_FORMATS


@click.group()
def bench() -> None:
    """Benchmarks that print the figures quoted in the README."""


@bench.command("queue")
@click.option("--jobs", "job_count", type=click.IntRange(1000), default=100_000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 5000), default=500, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option("--history", type=click.IntRange(0), default=0, show_default=True,
              help="First leave this many done jobs in the table, as the retention does (e.g. 1000000); runs on a "
                   "throwaway cluster of its own with production durability.")
@pass_app
def bench_queue(app: AppContext, job_count: int, workers: int, batch_size: int, runs: int, history: int) -> None:
    """No-op jobs claimed and completed per second, and NOTIFY wake-up latency."""
    from windmill.bench.database import bench_database
    from windmill.bench.queue import run as run_queue_bench
    from windmill.bench.throwaway import throwaway_database

    if history:
        with throwaway_database(app.catalog) as throwaway:
            run_queue_bench(throwaway.database, throwaway.url, jobs=job_count, workers=workers,
                            batch_size=batch_size, runs=runs, history=history, conditions=throwaway.conditions())
        return
    with bench_database(app.settings, app.catalog) as (database, url):
        run_queue_bench(database, url, jobs=job_count, workers=workers, batch_size=batch_size, runs=runs)


@bench.command("chaos")
@click.option("--images", type=click.IntRange(6), default=500, show_default=True)
@click.option("--kill-interval", type=click.FloatRange(0.5), default=4.0, show_default=True,
              help="Mean seconds between SIGKILLs of a random worker process.")
@click.option("--outage", type=click.FloatRange(0), default=90.0, show_default=True,
              help="Seconds PostgreSQL stays down after its second crash (a task's retry budget is 19 s).")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the farm's faults and of the kills.")
@click.option("--logs", "log_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the worker and farm logs in this directory (default: removed with the run).")
@click.option("--broker", type=click.Choice(BROKERS), default=RABBITMQ, show_default=True,
              help="How the service tasks travel (the RabbitMQ node is crashed either way).")
@pass_app
def bench_chaos(app: AppContext, images: int, kill_interval: float, outage: float, seed: int,
                log_dir: Path | None, broker: str) -> None:
    """The whole pipeline under faults (farm 5 % HTTP 500, 2 % timeouts, 1 % malformed, jittered latency; random
    SIGKILLs of workers; SIGKILL of RabbitMQ and twice of PostgreSQL, once for --outage seconds), then an audit of
    every answer and product; exit status 1 when a condition fails. Runs on a PostgreSQL cluster (production
    durability) and a RabbitMQ node of its own (RabbitMQ's server must be installed): nothing else is disturbed."""
    from windmill.bench.chaos import ChaosPlan
    from windmill.bench.chaos import run as run_chaos

    plan = ChaosPlan(images=images, kill_interval_s=kill_interval, seed=seed, broker=broker).with_long_outage(outage)
    report = run_chaos(app.catalog_as_configured, plan, log_dir=log_dir, echo=click.echo)
    if report.problems:
        sys.exit(1)


@bench.command("merge")
@click.option("--images", type=click.IntRange(5), default=60, show_default=True)
@click.option("--boxes", type=click.IntRange(1, 200), default=10, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10), default=3, show_default=True)
@pass_app
def bench_merge(app: AppContext, images: int, boxes: int, runs: int) -> None:
    """Latency from a detector answer's commit to its image's merged boxes' commit, idle pipeline."""
    from windmill.bench.database import bench_database
    from windmill.bench.merge_latency import run as run_merge_bench

    with bench_database(app.settings, app.catalog) as (database, url):
        run_merge_bench(database, url, images=images, boxes=boxes, runs=runs)


@bench.command("backfill")
@click.option("--images", type=click.IntRange(100), default=100_000, show_default=True)
@click.option("--page", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--runs", type=click.IntRange(1, 100), default=5, show_default=True)
@pass_app
def bench_backfill(app: AppContext, images: int, page: int, runs: int) -> None:
    """One backfill run and the job retention on a synthetic history of N images (adds them to the database)."""
    from windmill.bench.backfill import run as run_backfill_bench
    from windmill.bench.database import bench_database

    with bench_database(app.settings, app.catalog) as (database, _):
        run_backfill_bench(database, images=images, page=page, runs=runs, echo=click.echo)


@bench.command("pipeline")
@click.option("--images", type=click.IntRange(6), default=None, help="[default: 300; 30 with --latency-profile]")
@click.option("--runs", type=click.IntRange(1, 10), default=None,
              help="Runs per broker (and side)  [default: 1; 3 with --baseline]")
@click.option("--latency-profile", metavar="NAME|FILE",
              help="Against the stand-in with this latency profile (gpu, or a file): images/s beside the bound the "
                   "profile implies, and submit → first merged boxes.")
@click.option("--scale-latency", multiple=True, metavar="SERVICE=FACTOR",
              help="With --latency-profile: multiply a service's mean latency (repeatable), e.g. ollama=10.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="With --latency-profile: images fed per second (default: 1.25 × the profile's primary bound).")
@click.option("--baseline", metavar="REV", default=None,
              help="Interleave runs with the workers of another commit (a git worktree and venv under the temporary "
                   "directory) on distinct synthetic scenes; print medians and ratios.")
@pass_app
def bench_pipeline(app: AppContext, images: int | None, runs: int | None, latency_profile: str | None,
                   scale_latency: tuple[str, ...], rate: float | None, baseline: str | None) -> None:
    """The whole pipeline over N images, workers as separate processes: throughput, CPU, merge latency, waste."""
    from windmill.bench.database import bench_database
    from windmill.bench.latency_profile import latency_setup
    from windmill.bench.latency_profile import run as run_with_profile

    if baseline is not None:
        if latency_profile is not None:
            raise click.UsageError("--baseline runs at zero latency; leave out --latency-profile")
        from windmill.bench.baseline import run as run_baseline_bench

        with bench_database(app.settings, app.catalog) as (_, url):
            run_baseline_bench(url, app.catalog_as_configured, baseline=baseline, images=images or 300,
                               runs=runs or 3, amqp_url=app.settings.amqp_url, echo=click.echo)
        return
    runs = runs or 1
    from windmill.bench.pipeline import run as run_pipeline_bench

    latency = latency_setup(latency_profile, scale_latency, rate)
    with bench_database(app.settings, app.catalog) as (database, url):
        if latency is not None:
            run_with_profile(database, url, app.catalog_as_configured, latency, images=images or 30, runs=runs,
                             amqp_url=app.settings.amqp_url)
        else:
            run_pipeline_bench(database, url, app.catalog_as_configured, images=images or 300, runs=runs,
                               amqp_url=app.settings.amqp_url)


@bench.command("submit")
@click.option("--images", type=click.IntRange(100), default=100_000, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10), default=1, show_default=True)
@pass_app
def bench_submit(app: AppContext, images: int, runs: int) -> None:
    """Tasks/s and peak memory of submit into RabbitMQ (when configured) and the job table."""
    from windmill.bench.database import bench_database
    from windmill.bench.stage import run_submit

    with bench_database(app.settings, app.catalog) as (database, url):
        run_submit(database, url, app.catalog_as_configured, app.settings.amqp_url, images=images, runs=runs)


@bench.command("export")
@click.option("--images", type=click.IntRange(10), default=1_000_000, show_default=True)
@click.option("--format", "formats", multiple=True, type=click.Choice(EXPORT_FORMATS),
              help="Only these formats (repeatable; default: all four).")
@pass_app
def bench_export(app: AppContext, images: int, formats: tuple[str, ...]) -> None:
    """Peak memory and time of `export` in each format over N synthetic bench images (target: ≤ 200 MB)."""
    from windmill.bench.database import bench_database
    from windmill.bench.export_memory import run as run_export_bench

    with bench_database(app.settings, app.catalog) as (database, url):
        run_export_bench(database, url, images=images, formats=formats or EXPORT_FORMATS)


@bench.command("add")
@click.option("--files", type=click.IntRange(1000), default=1_000_000, show_default=True)
@click.option("--per-directory", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option("--baseline-tree", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Alternate the runs with another checkout's command (e.g. a git worktree of an earlier commit).")
@click.option("--watch", is_flag=True, help="Measure the start of `images watch` on the tree instead.")
@pass_app
def bench_add(app: AppContext, files: int, per_directory: int, runs: int, baseline_tree: Path | None,
              watch: bool) -> None:
    """`images add --recursive` (or the start of `images watch --recursive`) over a tree of N image files: files/s
    and peak memory, new and already known, in a throwaway cluster with production durability."""
    from windmill.bench.add_files import run as run_add_bench
    from windmill.bench.throwaway import throwaway_database

    with throwaway_database(app.catalog) as throwaway:
        run_add_bench(throwaway, files=files, per_directory=per_directory, runs=runs, baseline_tree=baseline_tree,
                      watch=watch, echo=click.echo)


@bench.command("scale")
@click.option("--images", type=click.IntRange(1000), default=100_000, show_default=True,
              help="Images of synthetic history to build first.")
@click.option("--runs", type=click.IntRange(1, 20), default=5, show_default=True)
@click.option("--backlog", type=click.IntRange(0), default=0, show_default=True,
              help="Also time status while this many of the images wait for every primary service (both brokers).")
@pass_app
def bench_scale(app: AppContext, images: int, runs: int, backlog: int) -> None:
    """status, a backfill run, 1,000 jobs claimed and completed, one image's completeness, a submit of 10,000 new
    images and bytes per image, on a synthetic history of N images in a throwaway cluster with production
    durability: compare 100K and 1M. With --backlog N, status while N images wait for every primary service."""
    from windmill.bench.scale import run as run_scale_bench
    from windmill.bench.throwaway import throwaway_database

    with throwaway_database(app.catalog) as throwaway:
        run_scale_bench(throwaway, app.catalog, images=images, runs=runs, backlog=backlog, echo=click.echo)


@bench.command("notify")
@click.option("--answers", type=click.IntRange(10), default=300, show_default=True, help="Answers per writer and run.")
@click.option("--runs", type=click.IntRange(1, 10), default=3, show_default=True)
@pass_app
def bench_notify(app: AppContext, answers: int, runs: int) -> None:
    """Commits/s of 16 concurrent answer writers without the wake-up NOTIFY, with it as now (silent into a backed-up
    queue), for every due job (sql/0096) and for every job (sql/0002), on a throwaway cluster of its own with
    production durability."""
    from windmill.bench.notify import run as run_notify_bench
    from windmill.bench.throwaway import throwaway_database

    with throwaway_database(app.catalog) as throwaway:
        run_notify_bench(throwaway, answers_per_writer=answers, runs=runs, echo=click.echo)


@bench.command("service")
@click.option("--images", type=click.IntRange(6), default=300, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True)
@pass_app
def bench_service(app: AppContext, images: int, runs: int, workers: int, concurrency: int) -> None:
    """Images/s through all 11 primary services against the stand-in at zero latency, both brokers."""
    from windmill.bench.database import bench_database
    from windmill.bench.stage import run_service_stage

    with bench_database(app.settings, app.catalog) as (database, url):
        run_service_stage(database, url, app.catalog_as_configured, app.settings.amqp_url, images=images, runs=runs,
                          workers=workers, concurrency=concurrency)


COMMANDS = (bench,)
