"""windmill-cli: the command line of Windmill. Thin: parses, calls windmill.*, prints."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import click
import psycopg

from windmill.catalog import SELECTION_KEYWORDS, Catalog, load_catalog
from windmill.errors import WindmillError, first_line
from windmill.settings import Settings, configure_logging, load_settings

# --------------------------------------------------------------------------------------------------
# Shared plumbing


class AppContext:
    """Settings and catalog, loaded on first use so `--help` and `list-services` need no environment."""

    def __init__(self, env_file: Path | None) -> None:
        self.env_file = env_file

    @cached_property
    def settings(self) -> Settings:
        settings = load_settings(self.env_file)
        configure_logging(settings)
        return settings

    @cached_property
    def catalog_as_configured(self) -> Catalog:
        path = self.settings.service_config
        if path is None and Path("service_config.json").is_file():
            path = Path("service_config.json")  # the seed's habit: a catalog in the working directory
        return load_catalog(path)

    @cached_property
    def catalog(self) -> Catalog:
        """The catalog as clients use it: WINDMILL_PORT_OFFSET points them at a stand-in farm."""
        return self.catalog_as_configured.with_port_offset(self.settings.port_offset)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A connection to an up-to-date schema (the embedded database is migrated on first use)."""
        from windmill.db.connect import open_database
        from windmill.db.schema import ensure_schema

        with open_database(self.settings, application_name="windmill-cli") as database, database.connect() as conn:
            ensure_schema(conn, self.catalog, may_migrate=self.settings.uses_embedded_database)
            yield conn


pass_app = click.make_pass_decorator(AppContext)


class WindmillGroup(click.Group):
    """User errors become one sentence on stderr and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except WindmillError as error:
            raise click.ClickException(str(error)) from None
        except psycopg.OperationalError as error:
            raise click.ClickException(f"database unavailable: {first_line(error)}") from None


def json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(function)


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str, ensure_ascii=False))


@click.group(cls=WindmillGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--env-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read settings from this file (default: ./.env when present).")
@click.version_option(package_name="windmill")
@click.pass_context
def main(ctx: click.Context, env_file: Path | None) -> None:
    """Windmill: every image through every Animal Farm ML service, harmonized boxes and consensus in
    PostgreSQL."""
    ctx.obj = AppContext(env_file)


# --------------------------------------------------------------------------------------------------
# Settings, catalog, schema


@main.command()
@json_option
@pass_app
def config(app: AppContext, as_json: bool) -> None:
    """Print the effective settings (passwords masked)."""
    shown = app.settings.shown()
    if as_json:
        echo_json(shown)
        return
    width = max(map(len, shown))
    for key, value in shown.items():
        click.echo(f"{key.ljust(width)}  {value}")


def print_services(catalog: Catalog, as_json: bool) -> None:
    if as_json:
        echo_json([{**{k: v for k, v in vars(s).items()}, "queue_name": s.queue_name} for s in catalog.services])
        return
    for category in ("primary", "spatial_only", "postprocessing"):
        click.echo(category.upper())
        for service in sorted(catalog.in_category(category), key=lambda s: s.name):
            kind = ",".join(service.service_type)
            click.echo(f"  {service.name:<14} {service.host}:{service.port:<6} {kind:<24} {service.description}")
    click.echo("Selections: " + "; ".join(f"{k} = {v}" for k, v in SELECTION_KEYWORDS.items())
               + "; or a comma-separated list of names")


@main.command("list-services")
@json_option
@pass_app
def list_services(app: AppContext, as_json: bool) -> None:
    """Print the service catalog by category."""
    print_services(app.catalog, as_json)


@main.command("init-db")
@pass_app
def init_db(app: AppContext) -> None:
    """Create or upgrade the schema (idempotent, never drops data) and sync the services table."""
    from windmill.db.connect import open_database
    from windmill.db.schema import init_database

    with open_database(app.settings, application_name="windmill-cli") as database, database.connect() as conn:
        applied = init_database(conn, app.catalog)
        where = database.location
    if applied:
        click.echo(f"Applied {len(applied)} migration(s) on {where}: "
                   + ", ".join(f"{m.version:04d}_{m.name}" for m in applied))
    else:
        click.echo(f"Schema on {where} is up to date.")


# --------------------------------------------------------------------------------------------------
# The embedded database


@main.group()
def db() -> None:
    """The embedded PostgreSQL cluster used when no database is configured."""


@db.command("status")
@json_option
@pass_app
def db_status(app: AppContext, as_json: bool) -> None:
    """Say whether the embedded cluster runs, where, and how to reach it with psql."""
    from windmill.db.embedded import EmbeddedPostgres

    if not app.settings.uses_embedded_database:
        click.echo("A database is configured (WINDMILL_DATABASE_URL or DB_HOST); the embedded cluster is unused.")
        return
    status = EmbeddedPostgres(app.settings.home).status()
    if as_json:
        echo_json({**vars(status), "psql": status.psql_command() if status.running else None})
        return
    click.echo(f"data directory: {status.data_dir}")
    click.echo(f"log file:       {status.log_file}")
    if status.running:
        click.echo(f"running on port {status.port}, used by {len(status.clients)} windmill process(es)")
        click.echo(f"connect with:   {status.psql_command()}")
    else:
        click.echo("not running (any windmill-cli command that needs it starts it)")


@db.command("stop")
@pass_app
def db_stop(app: AppContext) -> None:
    """Stop the embedded cluster now, even if workers still use it."""
    from windmill.db.embedded import EmbeddedPostgres

    EmbeddedPostgres(app.settings.home).stop()
    click.echo("Embedded PostgreSQL stopped.")


# --------------------------------------------------------------------------------------------------
# Images and submission


@main.group()
def images() -> None:
    """Register images (files or URLs) in the collection."""


@images.command("add")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--group", "-g", help="Group name stored with each image (submit --group selects it).")
@click.option("--recursive", "-r", is_flag=True, help="Descend into sub-directories.")
@click.option("--url-list", type=click.File("r", encoding="utf-8"), help="A file with one image URL per line.")
@pass_app
def images_add(app: AppContext, paths: tuple[Path, ...], group: str | None, recursive: bool,
               url_list: Any) -> None:
    """Add image files, directories of images, or a list of URLs. Known images are not added twice."""
    from windmill.collection import add_paths, add_urls

    if not paths and url_list is None:
        raise click.UsageError("name image files or directories, or give --url-list FILE")
    with app.connection() as conn:
        report = add_urls(conn, url_list, group=group) if url_list else add_paths(
            conn, paths, group=group, recursive=recursive)
    for what, why in report.skipped:
        click.echo(f"skipped {what}: {why}", err=True)
    click.echo(f"Added {report.added} image(s); {report.already_known} already known; "
               f"{len(report.skipped)} skipped.")
    if report.skipped and not report.added and not report.already_known:
        sys.exit(1)


@main.command()
@click.option("--services", "-s", default="all", show_default=True,
              help="all, primary, spatial_only, full_catalog, or a comma-separated list of services.")
@click.option("--limit", "-l", type=click.IntRange(min=1), help="Submit at most this many images.")
@click.option("--group", "-g", help="Only images of this group.")
@click.option("--force", is_flag=True, help="Submit pairs that already have a successful answer too.")
@click.option("--list-services", "list_only", is_flag=True, help="Print the catalog and exit.")
@click.option("--broker", type=click.Choice(["rabbitmq", "postgres"]),
              help="Where the tasks go (default: RabbitMQ when configured, else the PostgreSQL job table).")
@pass_app
def submit(app: AppContext, services: str, limit: int | None, group: str | None, force: bool,
           list_only: bool, broker: str | None) -> None:
    """Queue one task per image × service for the service workers."""
    if list_only:
        print_services(app.catalog, as_json=False)
        return
    from windmill.broker import JobTableBroker
    from windmill.broker.rabbitmq import RabbitMQBroker
    from windmill.db.connect import open_database
    from windmill.db.schema import ensure_schema
    from windmill.jobs import JobQueue
    from windmill.producer import count_images
    from windmill.producer import submit as submit_tasks

    selected = app.catalog.select(services)
    with (
        open_database(app.settings, application_name="windmill-submit") as database,
        database.connect() as read_conn,
        database.connect() as lookup_conn,
    ):
        ensure_schema(lookup_conn, app.catalog, may_migrate=app.settings.uses_embedded_database)
        total = count_images(lookup_conn, group=group, limit=limit)
        if total == 0:
            raise WindmillError("no images to submit; add some with `windmill-cli images add`")
        use_rabbitmq = (broker or ("rabbitmq" if app.settings.uses_rabbitmq else "postgres")) == "rabbitmq"
        if use_rabbitmq and app.settings.amqp_url is None:
            raise WindmillError("--broker rabbitmq needs WINDMILL_AMQP_URL (or QUEUE_HOST and QUEUE_USER)")
        with database.pool(max_size=2, name="submit") as pool:
            sink = RabbitMQBroker(app.settings.amqp_url) if use_rabbitmq else JobTableBroker(JobQueue(pool))
            try:
                with click.progressbar(length=total, label="Submitting", file=sys.stderr) as bar:
                    report = submit_tasks(read_conn, lookup_conn, sink, selected, group=group, limit=limit,
                                          force=force, progress=bar.update)
            finally:
                sink.close()
    click.echo(f"Submitted {report.published} task(s) for {report.images} image(s) × {len(selected)} service(s) "
               f"to {'RabbitMQ' if use_rabbitmq else 'the PostgreSQL job table'}; "
               f"{report.skipped_answered} already answered.")


# --------------------------------------------------------------------------------------------------
# Workers, status and jobs


@main.command()
@click.option("--role", required=True, help="The worker role (see `windmill-cli worker --list-roles`).")
@click.option("--service", help="The service of a service or postprocess worker.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Handler threads.")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=None,
              help="Most jobs claimed and held at once (default: 8 × concurrency).")
@click.option("--lease-seconds", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Lease per claimed job; renewed while it runs.")
@click.option("--drain-timeout", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds to finish in-flight jobs after SIGTERM.")
@click.option("--broker", type=click.Choice(["rabbitmq", "postgres"]),
              help="Where a service worker takes its tasks (default: RabbitMQ when configured, else the job table).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics on this port (http://HOST:PORT/metrics): jobs done and failed, "
                   "handler and service-call latency, queue depths, NOTIFY queue usage.")
@pass_app
def worker(app: AppContext, role: str, service: str | None, concurrency: int, batch_size: int | None,
           lease_seconds: float, drain_timeout: float, broker: str | None, metrics_port: int | None) -> None:
    """Run a worker until SIGTERM/SIGINT (once: drain in-flight jobs; twice: leave now)."""
    from windmill.worker.launch import run_worker
    from windmill.worker.runtime import WorkerOptions

    options = WorkerOptions(concurrency=concurrency, batch_size=batch_size or 8 * concurrency,
                            drain_timeout_s=drain_timeout)
    if broker == "rabbitmq" and app.settings.amqp_url is None:
        raise WindmillError("--broker rabbitmq needs WINDMILL_AMQP_URL (or QUEUE_HOST and QUEUE_USER)")
    code = run_worker(app.settings, app.catalog, role, service=service, options=options,
                      lease=timedelta(seconds=lease_seconds), use_rabbitmq=broker != "postgres",
                      metrics_port=metrics_port)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # handler threads abandoned by a second signal must not keep the process alive


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("windmill-demo"),
              show_default=True, help="Where to write one PNG per photograph.")
@pass_app
def demo(app: AppContext, out_dir: Path) -> None:
    """Run the whole pipeline on the bundled photographs against the stand-in farm and summarise it."""
    from windmill.db.connect import open_database
    from windmill.db.schema import ensure_schema
    from windmill.demo import format_report, run_demo

    if "LOG_LEVEL" not in os.environ:  # the progress lines tell the story; workers' INFO lines would drown them
        logging.getLogger("windmill").setLevel(logging.WARNING)
    click.echo("Windmill demo: every service, harmonized boxes, postprocessing and consensus on "
               + ("the embedded PostgreSQL" if app.settings.uses_embedded_database else "the configured database"))
    with open_database(app.settings, application_name="windmill-demo") as database:
        with database.connect() as conn:
            ensure_schema(conn, app.catalog, may_migrate=app.settings.uses_embedded_database)
        report = run_demo(app.settings, database, app.catalog_as_configured, out_dir, progress=click.echo)
    click.echo(format_report(report))


@main.command("run")
@pass_app
def run_all(app: AppContext) -> None:
    """Run every role in this process (a single machine): service workers for every primary service, merger,
    postprocessing, consensus and caption scoring. SIGTERM/SIGINT drains; twice leaves now."""
    from windmill.db.connect import open_database
    from windmill.db.schema import ensure_schema
    from windmill.worker.group import WorkerGroup
    from windmill.worker.launch import stop_on_signals

    with open_database(app.settings, application_name="windmill-run") as database:
        with database.connect() as conn:
            ensure_schema(conn, app.catalog, may_migrate=app.settings.uses_embedded_database)
        with database.pool(min_size=2, max_size=32, name="run") as pool:
            group = WorkerGroup(app.settings, database, pool, app.catalog)
            with stop_on_signals(group):
                group.start()
                code = group.join()
    sys.exit(code)


def supervisor_for(app: AppContext) -> Any:
    from windmill.supervisor import Supervisor

    return Supervisor.configured(app.settings, app.catalog_as_configured, env_file=app.env_file)


def echo_outcomes(outcomes: list[Any]) -> None:
    """One line per worker; exit status 1 when one did not start, or did not drain and was killed."""
    for outcome in outcomes:
        click.echo(f"{outcome.name}: {outcome.message}", err=not outcome.ok)
    if not all(outcome.ok for outcome in outcomes):
        sys.exit(1)


worker_names = click.argument("names", nargs=-1, metavar="[NAME]...")
drain_timeout_option = click.option(
    "--drain-timeout", type=click.FloatRange(0), default=30.0, show_default=True,
    help="Seconds each worker may take to finish its in-flight jobs after SIGTERM; then it is told to leave now "
         "and, 5 s later, killed.")


@main.group()
def workers() -> None:
    """Detached workers on this machine, by NAME: a service worker per primary and spatial_only catalog service
    (blip, clip, …, yolov8, face, pose), merger, consensus, postprocess_colors, postprocess_face,
    postprocess_pose, caption_score, scheduler. No NAME means all of them. Pid files live in WINDMILL_HOME/run,
    logs are appended to WINDMILL_HOME/logs/NAME.log."""


@workers.command("start")
@worker_names
@pass_app
def workers_start(app: AppContext, names: tuple[str, ...]) -> None:
    """Start the named workers (all without NAME) in the background; a running one is left alone."""
    echo_outcomes(supervisor_for(app).start(names))


@workers.command("stop")
@worker_names
@drain_timeout_option
@pass_app
def workers_stop(app: AppContext, names: tuple[str, ...], drain_timeout: float) -> None:
    """Stop the named workers by their pid: SIGTERM, let them drain, kill only those that do not exit."""
    echo_outcomes(supervisor_for(app).stop(names, drain_timeout=drain_timeout))


@workers.command("restart")
@worker_names
@drain_timeout_option
@pass_app
def workers_restart(app: AppContext, names: tuple[str, ...], drain_timeout: float) -> None:
    """Stop (draining) and start the named workers; one that was not running is started."""
    echo_outcomes(supervisor_for(app).restart(names, drain_timeout=drain_timeout))


@workers.command("status")
@worker_names
@json_option
@pass_app
def workers_status(app: AppContext, names: tuple[str, ...], as_json: bool) -> None:
    """Each worker's pid, whether it runs, the age of its last heartbeat in the workers table, its log."""
    from windmill.monitor import format_table

    supervisor = supervisor_for(app)
    rows = supervisor.status(names)  # unknown names are refused before any connection is made
    note = None
    if app.settings.uses_embedded_database and not any(row.running for row in rows):
        note = "heartbeats not read: no worker started here runs, and the embedded database is not started for this"
    else:
        try:
            with app.connection() as conn:
                rows = supervisor.status(names, conn)
        except (psycopg.OperationalError, WindmillError) as error:
            note = f"heartbeats unavailable: {first_line(error)}"
    if as_json:
        echo_json({"workers": [row.as_dict() for row in rows], "note": note})
        return
    click.echo(format_table([{
        "name": row.name,
        "pid": row.pid,
        "running": "yes" if row.running else "no (stale pid file)" if row.pid_file == "stale" else "no",
        "heartbeat_age_s": row.heartbeat_age_s,
        "log": row.log,
    } for row in rows]))
    if note:
        click.echo(note)


@workers.command("run")
@click.argument("name")
@pass_app
def workers_run(app: AppContext, name: str) -> None:
    """Run the named worker in the foreground, as the systemd unit windmill-worker@NAME does: this process becomes
    `python -m windmill worker --role …` with WORKER_ID=NAME@HOSTNAME (the id `workers status` looks for)."""
    argv, env = supervisor_for(app).command(name)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


@main.command()
@json_option
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--image", "image_id", type=int, help="Show one image's completeness instead.")
@pass_app
def status(app: AppContext, as_json: bool, watch: bool, interval: float, image_id: int | None) -> None:
    """Per-service progress, job and RabbitMQ queue depths, recent failures, live workers (views in psql:
    service_progress, queue_depths, image_completeness, recent_failures, live_workers)."""
    from windmill.db.connect import open_database
    from windmill.db.schema import ensure_schema
    from windmill.monitor import (
        RabbitMQManagement,
        collect_status,
        format_status,
        format_table,
        image_status,
        status_renderer,
        watch_status,
    )

    if watch and (as_json or image_id is not None):
        raise click.UsageError("--watch shows the status tables; leave out --json and --image")
    if image_id is not None:
        with app.connection() as conn:
            row = image_status(conn, image_id)
        if row is None:
            raise WindmillError(f"there is no image {image_id}")
        if as_json:
            echo_json(row)
        else:
            click.echo(format_table([{"field": key, "value": value} for key, value in row.items()]))
        return
    rabbitmq = RabbitMQManagement.configured(app.settings.amqp_url, app.settings.amqp_management_url,
                                             [service.queue_name for service in app.catalog.services])
    if not watch:
        with app.connection() as conn:
            report = collect_status(conn, rabbitmq=rabbitmq)
        if as_json:
            echo_json(report)
        else:
            click.echo(format_status(report))
        return
    with open_database(app.settings, application_name="windmill-status") as database:
        with database.connect() as conn:
            ensure_schema(conn, app.catalog, may_migrate=app.settings.uses_embedded_database)
        render, close = status_renderer(database.connect, rabbitmq=rabbitmq)
        try:
            watch_status(render, interval=interval)
        finally:
            close()


@main.command()
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True,
              help="Most jobs queued per category (merge, consensus, each postprocessing, caption score).")
@json_option
@pass_app
def backfill(app: AppContext, limit: int, as_json: bool) -> None:
    """Queue the jobs that repair missing or stale products, once (what cron and the scheduler run)."""
    from windmill.roles.scheduler import run_backfill

    with app.connection() as conn:
        queued = run_backfill(conn, limit=limit)
    if as_json:
        echo_json(queued)
    elif queued:
        click.echo("Queued " + ", ".join(f"{count} {queue}" for queue, count in queued.items()) + ".")
    else:
        click.echo("Nothing to repair.")


@main.group()
def jobs() -> None:
    """Inspect and retry jobs of the PostgreSQL job queue."""


@contextmanager
def job_queue(app: AppContext) -> Iterator[Any]:
    from windmill.db.connect import open_database
    from windmill.db.schema import ensure_schema
    from windmill.jobs import JobQueue

    with open_database(app.settings, application_name="windmill-cli") as database:
        with database.connect() as conn:
            ensure_schema(conn, app.catalog, may_migrate=app.settings.uses_embedded_database)
        with database.pool(max_size=1, name="cli") as pool:
            yield JobQueue(pool)


@jobs.command("list")
@click.option("--state", type=click.Choice(["queued", "running", "done", "failed", "dead"]))
@click.option("--queue", help="Only this queue.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@json_option
@pass_app
def jobs_list(app: AppContext, state: str | None, queue: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first."""
    from windmill.jobs import JobState
    from windmill.monitor import format_table

    with job_queue(app) as queue_:
        rows = queue_.list(state=JobState(state) if state else None, queue=queue, limit=limit)
    if as_json:
        echo_json(rows)
    else:
        click.echo(format_table(rows, ["id", "queue", "state", "image_id", "attempts", "max_attempts",
                                       "updated_at", "last_error"]))


@jobs.command("retry")
@click.option("--queue", help="Only dead jobs of this queue.")
@click.option("--id", "ids", type=int, multiple=True, help="Only this job (repeatable).")
@pass_app
def jobs_retry(app: AppContext, queue: str | None, ids: tuple[int, ...]) -> None:
    """Queue dead jobs again with fresh attempts."""
    with job_queue(app) as queue_:
        retried = queue_.retry_dead(queue=queue, ids=ids or None)
    click.echo(f"Queued {len(retried)} dead job(s) again.")


@contextmanager
def bench_database(app: AppContext) -> Iterator[tuple[Any, str]]:
    """The migrated database and a URL that bench subprocesses can use (held open for the whole run)."""
    from windmill.db.connect import conninfo_to_url, open_database
    from windmill.db.schema import ensure_schema

    with open_database(app.settings, application_name="windmill-bench") as database:
        with database.connect() as conn:
            ensure_schema(conn, app.catalog, may_migrate=app.settings.uses_embedded_database)
        yield database, app.settings.database_url or conninfo_to_url(database.conninfo)


@main.group()
def cron() -> None:
    """Run the backfill inside PostgreSQL with pg_cron (or use `worker --role scheduler`)."""


@cron.command("install")
@click.option("--schedule", default="* * * * *", show_default=True,
              help="A cron schedule in the server's time zone (pg_cron 1.4: minute granularity).")
@pass_app
def cron_install(app: AppContext, schedule: str) -> None:
    """Schedule `SELECT * FROM windmill.backfill()` in this database; a second install updates the schedule."""
    from windmill.cron import install_cron

    with app.connection() as conn:
        click.echo(install_cron(conn, schedule=schedule))


@cron.command("uninstall")
@pass_app
def cron_uninstall(app: AppContext) -> None:
    """Remove the backfill job of this database (the pg_cron extension stays)."""
    from windmill.cron import uninstall_cron

    with app.connection() as conn:
        click.echo(uninstall_cron(conn))


@cron.command("status")
@json_option
@pass_app
def cron_status_command(app: AppContext, as_json: bool) -> None:
    """Whether pg_cron can run the backfill here, the job, and its latest runs."""
    from windmill.cron import JOB_NAME, cron_status
    from windmill.monitor import format_table

    with app.connection() as conn:
        report = cron_status(conn)
    if as_json:
        echo_json(vars(report))
        return
    if not report.available:
        click.echo(report.reason)
        return
    click.echo(f"pg_cron {report.version or '(extension not created)'}; jobs live in database {report.cron_database}.")
    if report.job is None:
        click.echo(f"No {JOB_NAME} job for this database: `windmill-cli cron install` schedules one.")
        return
    columns = ["jobid", "jobname", "schedule", "database", "username", "active", "command"]
    click.echo(format_table([report.job], columns))
    click.echo("Latest runs:")
    click.echo(format_table(report.runs, ["runid", "status", "start_time", "end_time", "return_message"]))


# --------------------------------------------------------------------------------------------------
# Inspecting products: one image's record and drawing, COCO evaluation


@main.command()
@click.argument("image_id", type=int)
@click.option("--png", "png_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw the image with its merged boxes into this PNG file instead of printing the record.")
@click.option("--detectors", is_flag=True, help="With --png: also draw each detector's raw boxes in its own colour.")
@pass_app
def show(app: AppContext, image_id: int, png_path: Path | None, detectors: bool) -> None:
    """Print an image's full record as JSON (answers, boxes, postprocessing, consensus), or draw it with --png."""
    if png_path is None:
        if detectors:
            raise click.UsageError("--detectors draws boxes: give --png FILE too")
        from windmill.record import image_record

        with app.connection() as conn:
            echo_json(image_record(conn, image_id))
        return
    from windmill.render import render_image, save_png

    with app.connection() as conn:
        picture = render_image(conn, app.settings, image_id, detectors=detectors)
    save_png(picture, png_path)
    click.echo(f"Wrote {png_path} ({picture.width}×{picture.height}).")


@main.command("eval")
@click.option("--coco", "coco_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="COCO annotations (images with file_name, annotations with bbox and category_id, categories).")
@click.option("--group", "-g", help="Only images of this group.")
@json_option
@pass_app
def evaluate(app: AppContext, coco_path: Path, group: str | None, as_json: bool) -> None:
    """COCO AP, AP50 and AP75 of the merged boxes and of each detector against ground truth."""
    from windmill.evaluation import evaluate_collection, format_eval_table, load_coco_annotations

    truth = load_coco_annotations(coco_path)
    with app.connection() as conn:
        rows = evaluate_collection(conn, truth, group=group)
    if as_json:
        echo_json(rows)
    else:
        click.echo(format_eval_table(rows))


# --------------------------------------------------------------------------------------------------
# The Animal Farm services


@main.group()
def farm() -> None:
    """The Animal Farm services: probe them, or serve a stand-in for tests and demos."""


@farm.command("check")
@click.option("--services", "-s", default="full_catalog", show_default=True, help="Which services to probe.")
@json_option
@pass_app
def farm_check(app: AppContext, services: str, as_json: bool) -> None:
    """Probe /health of every selected service; exit status 1 when any is down."""
    from windmill.farm import FarmClient, check_services, format_health_table

    selected = app.catalog.select(services)
    with FarmClient(app.catalog) as client:
        results = check_services(app.catalog, client, services=[service.name for service in selected])
    if as_json:
        echo_json([vars(result) for result in results])
    else:
        click.echo(format_health_table(results))
    if not all(result.ok for result in results):
        sys.exit(1)


@farm.command("serve")
@click.option("--services", "-s", default="full_catalog", show_default=True, help="Which services to serve.")
@click.option("--port-offset", type=int, default=0, show_default=True, help="Serve each service on port + N.")
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of requests answered with HTTP 500.")
@click.option("--timeout-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of requests held open until the client gives up.")
@click.option("--malformed-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of requests answered with a body that is not JSON.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault draws.")
@click.option("--annotations", "annotation_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directories of images with .boxes.json sidecars (default: the bundled samples).")
@pass_app
def farm_serve(app: AppContext, services: str, port_offset: int, latency_ms: float, error_rate: float,
               timeout_rate: float, malformed_rate: float, seed: int, annotation_dirs: tuple[Path, ...]) -> None:
    """Serve a contract-faithful stand-in of every selected service until Ctrl-C."""
    from windmill.simfarm import serve_command

    serve_command(app.catalog_as_configured, services, port_offset, latency_ms, error_rate,
                  timeout_rate, malformed_rate, seed, list(annotation_dirs) or None, echo=click.echo)


# --------------------------------------------------------------------------------------------------
# Benchmarks


@main.group()
def bench() -> None:
    """Benchmarks that print the figures quoted in the README."""


@bench.command("queue")
@click.option("--jobs", "job_count", type=click.IntRange(1000), default=100_000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 5000), default=500, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10), default=3, show_default=True)
@pass_app
def bench_queue(app: AppContext, job_count: int, workers: int, batch_size: int, runs: int) -> None:
    """No-op jobs claimed and completed per second, and NOTIFY wake-up latency."""
    from windmill.bench.queue import run as run_queue_bench

    with bench_database(app) as (database, url):
        run_queue_bench(database, url, jobs=job_count, workers=workers, batch_size=batch_size, runs=runs)


@bench.command("chaos")
@click.option("--images", type=click.IntRange(6), default=500, show_default=True)
@click.option("--kill-interval", type=click.FloatRange(0.5), default=4.0, show_default=True,
              help="Mean seconds between SIGKILLs of a random worker process.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the farm's faults and of the kills.")
@click.option("--logs", "log_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the worker and farm logs in this directory (default: removed with the run).")
@pass_app
def bench_chaos(app: AppContext, images: int, kill_interval: float, seed: int, log_dir: Path | None) -> None:
    """The whole pipeline under faults (farm 5 % HTTP 500, 2 % timeouts, 1 % malformed; random SIGKILLs; one
    PostgreSQL restart and a RabbitMQ crash), then an audit of every product; exit status 1 when a condition fails.
    Runs on a private PostgreSQL cluster and a private RabbitMQ node it starts (RabbitMQ's server must be
    installed), so nothing else on the machine is disturbed."""
    from windmill.bench.chaos import ChaosPlan
    from windmill.bench.chaos import run as run_chaos

    plan = ChaosPlan(images=images, kill_interval_s=kill_interval, seed=seed)
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
    from windmill.bench.merge_latency import run as run_merge_bench

    with bench_database(app) as (database, url):
        run_merge_bench(database, url, images=images, boxes=boxes, runs=runs)


@bench.command("pipeline")
@click.option("--images", type=click.IntRange(6), default=300, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10), default=1, show_default=True)
@pass_app
def bench_pipeline(app: AppContext, images: int, runs: int) -> None:
    """The whole pipeline over N images, workers as separate processes: throughput, CPU, merge latency, waste."""
    from windmill.bench.pipeline import run as run_pipeline_bench

    with bench_database(app) as (database, url):
        run_pipeline_bench(database, url, app.catalog_as_configured, images=images, runs=runs,
                           amqp_url=app.settings.amqp_url)


@bench.command("submit")
@click.option("--images", type=click.IntRange(100), default=100_000, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10), default=1, show_default=True)
@pass_app
def bench_submit(app: AppContext, images: int, runs: int) -> None:
    """Tasks/s and peak memory of submit into RabbitMQ (when configured) and the job table."""
    from windmill.bench.stage import run_submit

    with bench_database(app) as (database, url):
        run_submit(database, url, app.catalog_as_configured, app.settings.amqp_url, images=images, runs=runs)


@bench.command("service")
@click.option("--images", type=click.IntRange(6), default=300, show_default=True)
@click.option("--runs", type=click.IntRange(1, 10), default=3, show_default=True)
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True)
@pass_app
def bench_service(app: AppContext, images: int, runs: int, workers: int, concurrency: int) -> None:
    """Images/s through all 11 primary services against the stand-in at zero latency, both brokers."""
    from windmill.bench.stage import run_service_stage

    with bench_database(app) as (database, url):
        run_service_stage(database, url, app.catalog_as_configured, app.settings.amqp_url, images=images, runs=runs,
                          workers=workers, concurrency=concurrency)


if __name__ == "__main__":
    main()
