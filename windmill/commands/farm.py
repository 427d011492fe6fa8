"""Commands for the Animal Farm services: probing them, serving the stand-in, and the demo that runs on it."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from windmill.commands import completion
from windmill.commands.context import AppContext, echo_json, json_option, pass_app


@click.group()
def farm() -> None:
    """The Animal Farm services: probe them, or serve a stand-in for tests and demos."""


@farm.command("check")
@click.option("--services", "-s", default="full_catalog", show_default=True, shell_complete=completion.services,
              help="Which services to probe.")
@json_option
@pass_app
def farm_check(app: AppContext, services: str, as_json: bool) -> None:
    """Probe /health of every selected service; exit status 1 when any is down. A service with a
    fleet_max_concurrency (pose) is probed in one of its fleet-wide places when a database is configured: its
    /health runs an inference on the model its requests share (spec §2.7)."""
    from windmill.farm import check_services, format_health_table

    selected = app.catalog.select(services)
    with _probing_client(app, selected) as client:
        results = check_services(app.catalog, client, services=selected)
    if as_json:
        echo_json([vars(result) for result in results])
    else:
        click.echo(format_health_table(results))
    if not all(result.ok for result in results):
        sys.exit(1)


def _probing_client(app: AppContext, selected: list[Any]) -> Any:
    """The client a probe uses: a worker process's (process_farm_client: the fleet-wide places in the configured
    database) when a selected service has a fleet limit and the database answers; else one with the catalog's
    per-process limits only."""
    import psycopg

    from windmill.db.connect import Database
    from windmill.errors import first_line
    from windmill.farm import FarmClient
    from windmill.worker.farm_client import process_farm_client

    limited = [service.name for service in selected if service.fleet_max_concurrency]
    url = app.settings.database_url
    if limited and url is not None:
        database = Database(url, application_name="windmill-farm-check")
        try:
            database.connect().close()
            return process_farm_client(app.settings, app.catalog, database)
        except psycopg.Error as error:
            click.echo(f"warning: probing {', '.join(limited)} without a fleet-wide place: the database cannot be "
                       f"reached ({first_line(error)})", err=True)
    return FarmClient(app.catalog, allow_private_urls=app.settings.allow_private_urls)


@farm.command("serve")
@click.option("--services", "-s", default="full_catalog", show_default=True, shell_complete=completion.services,
              help="Which services to serve.")
@click.option("--port-offset", type=int, default=0, show_default=True, help="Serve each service on port + N.")
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of requests answered with HTTP 500.")
@click.option("--timeout-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of requests held open until the client gives up.")
@click.option("--malformed-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True,
              help="Share of requests answered with a body that is not JSON.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fault and latency draws.")
@click.option("--annotations", "annotation_dirs", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directories of images with .boxes.json sidecars (default: the bundled samples).")
@click.option("--latency-profile", metavar="NAME|FILE",
              help="Per-service latency and capacity: a bundled profile (gpu) or a JSON file (README).")
@click.option("--no-cache", is_flag=True, help="Compute every answer per request (no per-image answer cache).")
@click.option("--score-uploads", is_flag=True,
              help="caption_score's /score takes an uploaded image too, as the clip-score service of 2026 does "
                   "(the CLIP of df57b25 takes only url or file).")
@pass_app
def farm_serve(app: AppContext, services: str, port_offset: int, latency_ms: float, error_rate: float,
               timeout_rate: float, malformed_rate: float, seed: int, annotation_dirs: tuple[Path, ...],
               latency_profile: str | None, no_cache: bool, score_uploads: bool) -> None:
    """Serve a contract-faithful stand-in of every selected service until Ctrl-C."""
    from windmill.simfarm import serve_command

    serve_command(app.catalog_as_configured, services, port_offset, latency_ms, error_rate,
                  timeout_rate, malformed_rate, seed, list(annotation_dirs) or None,
                  latency_profile=latency_profile, cache=not no_cache, score_uploads=score_uploads,
                  echo=click.echo)


@click.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("windmill-demo"),
              show_default=True, help="Where to write one PNG per photograph.")
@pass_app
def demo(app: AppContext, out_dir: Path) -> None:
    """Run the whole pipeline on the bundled photographs against the stand-in farm and summarise it."""
    from windmill.demo import format_report, run_demo

    if "LOG_LEVEL" not in os.environ:  # the progress lines tell the story; workers' INFO lines would drown them
        logging.getLogger("windmill").setLevel(logging.WARNING)
    click.echo("Windmill demo: every service, harmonized boxes, postprocessing and consensus on "
               + ("the embedded PostgreSQL" if app.settings.uses_embedded_database else "the configured database"))
    with app.database("windmill-demo") as database:
        report = run_demo(app.settings, database, app.catalog_as_configured, out_dir, progress=click.echo)
    click.echo(format_report(report))


COMMANDS = (farm, demo)
