"""Commands for operators: status, the backfill (once or from pg_cron), and the job queue's jobs (list, retry,
prune)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from windmill.commands.context import BIGINT, AppContext, echo_json, json_option, pass_app, refuse_unknown
from windmill.errors import NoSuchImage, WindmillError


@click.command()
@json_option
@click.option("--watch", is_flag=True, help="Redraw every --interval seconds until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--image", "image_id", type=BIGINT, help="Show one image's completeness instead.")
@click.option("--recount", is_flag=True,
              help="First rebuild the per-service counters (done, failed) from every answer: reads them all, and "
                   "answers wait until it is done.")
@pass_app
def status(app: AppContext, as_json: bool, watch: bool, interval: float, image_id: int | None,
           recount: bool) -> None:
    """Per-service progress, job and RabbitMQ queue depths, recent failures, live workers (views in psql:
    service_progress, queue_depths, image_completeness, recent_failures, live_workers)."""
    from windmill.monitor import (
        RabbitMQManagement,
        collect_status,
        format_status,
        format_table,
        image_status,
        recount_answers,
        watch_database_status,
    )

    if watch and (as_json or image_id is not None):
        raise click.UsageError("--watch shows the status tables; leave out --json and --image")
    if recount:
        with app.connection() as conn:
            recount_answers(conn)
    if image_id is not None:
        with app.connection() as conn:
            row = image_status(conn, image_id)
        if row is None:
            raise NoSuchImage(image_id)
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
    from windmill.stopping import sigterm_as_ctrl_c

    with sigterm_as_ctrl_c(), app.database("windmill-status") as database:
        watch_database_status(database.connect, rabbitmq=rabbitmq, interval=interval)


@click.command()
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True,
              help="Most jobs queued per queue (merge, consensus, each postprocessing, caption score).")
@click.option("--page", type=click.IntRange(1), default=None,
              help="Images looked at, from where the last run stopped [default: WINDMILL_BACKFILL_PAGE, 1000].")
@click.option("--failed", is_flag=True,
              help="Also ask again for the postprocessing and caption scores that ended in an error (a service that "
                   "was down, an image put right since): up to --limit of them, their error rows replaced.")
@json_option
@pass_app
def backfill(app: AppContext, limit: int, page: int | None, failed: bool, as_json: bool) -> None:
    """Queue the jobs that repair missing or stale products of the next page of images, once (what cron and the
    scheduler run every period)."""
    from windmill.upkeep import retry_failed_products, run_backfill

    with app.connection() as conn:
        queued = run_backfill(conn, limit=limit, page=page or app.settings.backfill_page)
        if failed:
            for queue, count in retry_failed_products(conn, limit=limit).items():
                queued[queue] = queued.get(queue, 0) + count
    if as_json:
        echo_json(queued)
    elif queued:
        click.echo("Queued " + ", ".join(f"{count} {queue}" for queue, count in queued.items()) + ".")
    else:
        click.echo("Nothing to repair.")


@click.group()
def jobs() -> None:
    """Inspect, retry and prune jobs of the PostgreSQL job queue."""


def job_table_queues(app: AppContext) -> list[str]:
    from windmill.jobs.queues import ROLE_QUEUES

    # A service that takes no image task (caption_score: its work is the caption_score role's queue) has none.
    return [service.queue_name for service in app.catalog.services if service.takes_image_tasks] + list(ROLE_QUEUES)


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
    if not rows:
        refuse_unknown(queue, job_table_queues(app), "job queue")
    if as_json:
        echo_json(rows)
    else:
        click.echo(format_table(rows, ["id", "queue", "state", "image_id", "attempts", "max_attempts",
                                       "updated_at", "last_error"]))


@jobs.command("retry")
@click.option("--queue", help="Only dead jobs of this queue.")
@click.option("--id", "ids", type=BIGINT, multiple=True, help="Only this job (repeatable).")
@json_option
@pass_app
def jobs_retry(app: AppContext, queue: str | None, ids: tuple[int, ...], as_json: bool) -> None:
    """Queue dead jobs again with fresh attempts."""
    with job_queue(app) as queue_:
        retried = queue_.retry_dead(queue=queue, ids=ids or None)
        left = [job_id for job_id in dict.fromkeys(ids) if job_id not in retried]
        states = queue_.states(left) if left else {}
    reasons = [_not_retried(job_id, states.get(job_id), queue) for job_id in left]
    if not retried:
        refuse_unknown(queue, job_table_queues(app), "job queue")
        if reasons:  # an --id that retried nothing says why, rather than "Queued 0"
            raise WindmillError("; ".join(reasons))
    if as_json:
        echo_json({"retried": retried})
    else:
        click.echo(f"Queued {len(retried)} dead job(s) again.")
    for reason in reasons:
        click.echo(f"Not retried: {reason}", err=True)


def _not_retried(job_id: int, found: tuple[str, str] | None, queue: str | None) -> str:
    if found is None:
        return f"no job {job_id}"
    state, its_queue = found
    if queue is not None and its_queue != queue:
        return f"job {job_id} is in queue {its_queue!r}, not {queue!r}"
    if state != "dead":
        return f"job {job_id} is {state}, not dead (only dead jobs are retried)"
    return f"job {job_id} stays dead: the same work is already queued again"


@jobs.command("prune")
@click.option("--older-than", "older_than", type=click.FloatRange(0), default=None,
              help="Seconds since the job finished [default: WINDMILL_JOB_RETENTION_S, 3600].")
@click.option("--dead", is_flag=True, help="Prune dead jobs too (their work is then the backfill's again).")
@pass_app
def jobs_prune(app: AppContext, older_than: float | None, dead: bool) -> None:
    """Delete done jobs (with --dead, dead ones too) that finished longer ago than the retention, in batches."""
    from datetime import timedelta

    from windmill.upkeep import prune_jobs

    seconds = app.settings.job_retention_s if older_than is None else older_than
    with app.connection() as conn:
        pruned = prune_jobs(conn, timedelta(seconds=seconds), dead=dead)
    click.echo(f"Pruned {pruned} {'done or dead' if dead else 'done'} job(s) older than {seconds:g} s.")


@click.group()
def cron() -> None:
    """Run the backfill inside PostgreSQL with pg_cron (or use `worker --role scheduler`)."""


@cron.command("install")
@click.option("--schedule", default="* * * * *", show_default=True,
              help="A cron schedule in the server's time zone (pg_cron 1.4: minute granularity).")
@pass_app
def cron_install(app: AppContext, schedule: str) -> None:
    """Schedule `CALL windmill.scheduled_pass()` (the backfill, then the job retention) in this database, with
    WINDMILL_BACKFILL_PAGE and WINDMILL_JOB_RETENTION_S; a second install updates the job."""
    from windmill.cron import cron_command, install_cron

    command = cron_command(page=app.settings.backfill_page, retention_s=app.settings.job_retention_s)
    with app.connection() as conn:
        click.echo(install_cron(conn, schedule=schedule, command=command))


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
