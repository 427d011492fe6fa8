"""Commands that run workers: one role in the foreground, every role in one process, detached named workers."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import click

from windmill.broker.choice import BROKERS
from windmill.commands import completion
from windmill.commands.context import AppContext, echo_json, json_option, pass_app
from windmill.errors import WindmillError
from windmill.keeper import RESTART_POLICIES


def list_roles(ctx: click.Context, _: click.Parameter, wanted: bool) -> None:
    """`worker --list-roles`: every role with what it does, then exit (before --role is required)."""
    if not wanted or ctx.resilient_parsing:
        return
    from windmill.roles.registry import role_summaries

    summaries = role_summaries()
    width = max(map(len, summaries))
    for name, summary in summaries.items():
        click.echo(f"{name.ljust(width)}  {summary}")
    ctx.exit()


service_tasks_broker = click.option(
    "--broker", type=click.Choice(BROKERS),
    help="Where the service tasks are taken from (default: RabbitMQ when configured, else the job table).")


@click.command()
@click.option("--role", required=True, shell_complete=completion.roles,
              help="The worker role (`windmill-cli worker --list-roles` lists them).")
@click.option("--list-roles", is_flag=True, is_eager=True, expose_value=False, callback=list_roles,
              help="List the roles with what each does, and exit.")
@click.option("--service", shell_complete=completion.services,
              help="The service of a service or postprocess worker.")
@click.option("--concurrency", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Handler threads, shared out in a lane per service queue (README: Lanes).")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=None,
              help="Most jobs claimed and held at once (default: 8 × concurrency).")
@click.option("--lease-seconds", type=click.FloatRange(1, 3600), default=30.0, show_default=True,
              help="Lease per claimed job; renewed while it runs.")
@click.option("--drain-timeout", type=click.FloatRange(0), default=30.0, show_default=True,
              help="Seconds to finish in-flight jobs after SIGTERM.")
@service_tasks_broker
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics on this port (http://HOST:PORT/metrics): jobs done and failed, "
                   "handler and service-call latency, queue depths, NOTIFY queue usage (default: "
                   "WINDMILL_METRICS_PORT; none: off).")
@pass_app
def worker(app: AppContext, role: str, service: str | None, concurrency: int, batch_size: int | None,
           lease_seconds: float, drain_timeout: float, broker: str | None, metrics_port: int | None) -> None:
    """Run a worker until SIGTERM/SIGINT (once: drain in-flight jobs; twice: leave now)."""
    from windmill.roles.registry import check_role
    from windmill.worker.launch import run_worker
    from windmill.worker.runtime import WorkerOptions

    check_role(role, service)  # a mistyped role or service is refused before any database is opened or started
    if service:
        app.catalog.select(service)
    if role == "service":
        from windmill.roles.service import serviceable

        serviceable(app.catalog, service or app.settings.service_name)  # a service worker without one
    app.announce_database()

    options = WorkerOptions(concurrency=concurrency, batch_size=batch_size or 8 * concurrency,
                            drain_timeout_s=drain_timeout)
    code = run_worker(app.settings, app.catalog, role, service=service, options=options,
                      lease=timedelta(seconds=lease_seconds), broker=broker,
                      metrics_port=metrics_port or app.settings.metrics_port,
                      # The setting's port is the base of the named workers' (workers start): blip's, on a machine
                      # that runs them; an explicit --metrics-port is what Prometheus was told, and stays.
                      metrics_port_may_move=metrics_port is None)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # handler threads abandoned by a second signal must not keep the process alive


@click.command("run")
@service_tasks_broker
@pass_app
def run_all(app: AppContext, broker: str | None) -> None:
    """Run every role in this process (a single machine): a service worker for every primary and spatial_only
    service, merger, postprocessing (colors, face, pose), consensus, caption scoring and the scheduler — what the
    named workers of `workers start` run, in one process. SIGTERM/SIGINT drains; twice leaves now.
    WINDMILL_METRICS_PORT serves every role's metrics on that port. The service tasks come from RabbitMQ when it
    is configured, as `submit` sends them, else from the job table."""
    from windmill.broker.choice import uses_rabbitmq
    from windmill.db.schema import open_migrated
    from windmill.worker.launch import run_machine

    uses_rabbitmq(app.settings, broker)  # --broker rabbitmq without a URL is refused before the database starts
    app.announce_database()
    # As a worker: a database away (restarting, or not up yet on the machine's boot) is waited for.
    with open_migrated(app.settings, app.catalog, application_name="windmill-run",
                       waiting="run cannot start yet") as database, \
            database.pool(min_size=2, max_size=32, name="run") as pool:
        code = run_machine(app.settings, app.catalog, database, pool, broker=broker)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # handler threads left running after the drain timeout must not keep the process alive


def supervisor_for(app: AppContext) -> Any:
    from windmill.supervisor import Supervisor

    return Supervisor.configured(app.settings, app.catalog_as_configured, env_file=app.source.env_file)


def echo_outcomes(outcomes: list[Any]) -> None:
    """One line per worker; exit status 1 when one did not start, or did not drain and was killed."""
    for outcome in outcomes:
        click.echo(f"{outcome.name}: {outcome.message}", err=not outcome.ok)
    if not all(outcome.ok for outcome in outcomes):
        sys.exit(1)


worker_names = click.argument("names", nargs=-1, metavar="[NAME]...", shell_complete=completion.worker_names)
drain_timeout_option = click.option(
    "--drain-timeout", type=click.FloatRange(0), default=30.0, show_default=True,
    help="Seconds each worker may take to finish its in-flight jobs after SIGTERM; then it is told to leave now "
         "and, 5 s later, killed.")


@click.group()
def workers() -> None:
    """Detached workers on this machine, by NAME: a service worker per primary and spatial_only catalog service
    (blip, clip, …, yolov8, face, pose), merger, consensus, postprocess_colors, postprocess_face,
    postprocess_pose, caption_score, scheduler. No NAME means all of them. Pid files live in WINDMILL_HOME/run,
    logs are appended to WINDMILL_HOME/logs/NAME.log."""


restart_option = click.option(
    "--restart", type=click.Choice(RESTART_POLICIES), default=None,
    help="on-failure: run each worker under a keeper that starts it again when it crashes or exits with an error, "
         "after 1 s, doubling up to 60 s (start's default: no; restart's: as the worker ran).")


@workers.command("start")
@worker_names
@restart_option
@pass_app
def workers_start(app: AppContext, names: tuple[str, ...], restart: str | None) -> None:
    """Start the named workers (all without NAME) in the background; a running one is left alone."""
    echo_outcomes(supervisor_for(app).start(names, restart=restart or "no"))


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
@restart_option
@pass_app
def workers_restart(app: AppContext, names: tuple[str, ...], drain_timeout: float, restart: str | None) -> None:
    """Stop (draining) and start the named workers; one that was not running is started."""
    echo_outcomes(supervisor_for(app).restart(names, drain_timeout=drain_timeout, restart=restart))


@workers.command("status")
@worker_names
@json_option
@pass_app
def workers_status(app: AppContext, names: tuple[str, ...], as_json: bool) -> None:
    """Each worker's pid, whether it runs, the age of its last heartbeat in the workers table, its log."""
    from windmill.monitor import format_table

    rows, note = supervisor_for(app).status_with_heartbeats(names, app.settings, app.connection)
    if as_json:
        echo_json({"workers": [row.as_dict() for row in rows], "note": note})
        return
    click.echo(format_table([{
        "name": row.name,
        "pid": row.pid,
        "running": _running(row),
        "heartbeat_age_s": row.heartbeat_age_s,
        "restarts": "" if row.restarts is None else row.restarts,
        "last_exit": row.last_exit or "",
        "log": row.log,
    } for row in rows]))
    if note:
        click.echo(note)


def _running(row: Any) -> str:
    """The status table's word for a worker: a kept one that crashed is backing off, not running."""
    if row.next_start_at is not None:
        return f"no: backing off, starts again at {row.next_start_at}"
    if row.running:
        return "yes"
    return "no (stale pid file)" if row.pid_file == "stale" else "no"


@workers.command("health")
@worker_names
@pass_app
def workers_health(app: AppContext, names: tuple[str, ...]) -> None:
    """Exit 0 when each named worker has a heartbeat of the last 30 s in the workers table, else 1 with the reason
    (a container's health check: `windmill-cli -q workers health merger`)."""
    from windmill.db.connect import open_database

    app.announce_database()
    supervisor = supervisor_for(app)
    with open_database(app.settings, application_name="windmill-health") as database, database.connect() as conn:
        report = supervisor.health(names, conn)
    for name, healthy, why in report:
        click.echo(f"{name}: {'healthy' if healthy else 'UNHEALTHY'}, {why}", err=not healthy)
    if not all(healthy for _, healthy, _ in report):
        sys.exit(1)


@workers.command("run")
@click.argument("name", shell_complete=completion.worker_names)
@pass_app
def workers_run(app: AppContext, name: str) -> None:
    """Run the named worker in the foreground, as the systemd unit windmill-worker@NAME does: this process becomes
    `python -m windmill worker --role …` with WORKER_ID=NAME@HOSTNAME (the id `workers status` looks for)."""
    supervisor = supervisor_for(app)
    [started] = supervisor.status([name])
    if started.running:  # two processes of one name would share one WORKER_ID, its heartbeat and its metrics port
        raise WindmillError(f"{name} already runs on this machine (pid {started.pid}, from `windmill-cli workers "
                            f"start`); stop it first: windmill-cli workers stop {name}")
    argv, env = supervisor.command(name)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)


COMMANDS = (worker, run_all, workers)
