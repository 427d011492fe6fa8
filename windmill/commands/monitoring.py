"""Commands for operators: status, the backfill (once or from pg_cron), and the job queue's jobs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from windmill.commands.context import AppContext, echo_json, json_option, pass_app
from windmill.errors import WindmillError


@click.command()
@json_option
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--image", "image_id", type=int, help="Show one image's completeness instead.")
@pass_app
def status(app: AppContext, as_json: bool, watch: bool, interval: float, image_id: int | None) -> None:
    """Per-service progress, job and RabbitMQ queue depths, recent failures, live workers (views in psql:
    service_progress, queue_depths, image_completeness, recent_failures, live_workers)."""
    from windmill.monitor import (
        RabbitMQManagement,
        collect_status,
        format_status,
        format_table,
        image_status,
        watch_database_status,
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
    rabbitmq = RabbitMQManagement.for_settings(app.settings, app.catalog)
    if not watch:
        with app.connection() as conn:
            report = collect_status(conn, rabbitmq=rabbitmq)
        if as_json:
            echo_json(report)
        else:
            click.echo(format_status(report))
        return
    with app.database("windmill-status") as database:
        watch_database_status(database.connect, rabbitmq=rabbitmq, interval=interval)


@click.command()
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


@click.group()
def jobs() -> None:
    """Inspect and retry jobs of the PostgreSQL job queue."""


@contextmanager
def job_queue(app: AppContext) -> Iterator[Any]:
    with app.windmill() as windmill:
        yield windmill.jobs


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


@click.group()
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


COMMANDS = (status, backfill, jobs, cron)
