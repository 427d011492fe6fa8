"""Commands that hand the results out: `export` (files for COCO tools, pandas, DuckDB) and `web` (the dashboard)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from windmill.commands.context import ID_OR_ZERO, AppContext, pass_app
from windmill.errors import WindmillError
from windmill.export import FORMATS


@click.command("export")
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="coco: a COCO detection file of the merged boxes; jsonl: one line per image; parquet: a "
                   "directory of tables (images, answers, boxes, postprocessing, consensus); csv: one row per box.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="The file (a directory for parquet); - for standard output (jsonl, csv, coco).")
@click.option("--group", "-g", help="Only images of this group.")
@click.option("--since", help="Only images with something new since this instant (ISO 8601, e.g. 2026-11-29T05:00Z): "
                              "added, an answer, a change of boxes, postprocessing, a consensus.")
@click.option("--after-id", type=ID_OR_ZERO, default=0, help="Only images after this id; continues an "
              "interrupted jsonl, csv or parquet export in place.")
@click.option("--services", "-s", help="Only these services' answers (jsonl, parquet; coco with --detectors: which "
                                       "detectors): all, primary, … or a comma-separated list.")
@click.option("--detectors", is_flag=True, help="coco: each detector's raw boxes as a results file beside it.")
@pass_app
def export_command(app: AppContext, fmt: str, out: Path, group: str | None, since: str | None, after_id: int,
                   services: str | None, detectors: bool) -> None:
    """Write the collection's answers and products to files for COCO tools, pandas, DuckDB, FiftyOne."""
    from windmill.collection import group_hint, group_names
    from windmill.export import ExportRequest, ExportStop, Selection, count_images, export, parse_since
    from windmill.stopping import stop_on_signals

    selection = Selection(group=group, since=parse_since(since), after_id=after_id,
                          services=tuple(s.name for s in app.catalog.select(services)) if services else None)
    request = ExportRequest(fmt, out, selection, detectors=detectors)
    request.check()
    if detectors and services and not any(service.is_detector for service in app.catalog.select(services)):
        raise WindmillError(f"--services {services} names no detector, so --detectors would add no results file; "
                            f"the detectors are {', '.join(service.name for service in app.catalog.detectors)}")
    stop = ExportStop()
    with (
        app.connection(reading_only=True) as conn,
        stop_on_signals(stop),
        click.progressbar(length=count_images(conn, selection), label="Exporting", file=sys.stderr,
                          hidden=app.quiet) as bar,
    ):
        report = export(conn, request, progress=bar.update, stop=stop)
        warning = None
        if not report.images and group is not None and group not in (names := group_names(conn)):
            # An empty file is what was asked for, but the name may be mistyped.
            warning = f"Warning: no image is in group {group!r}{group_hint(group, names)}"
    if warning:
        click.echo(warning, err=True)
    for note in report.notes:
        click.echo(f"Note: {note}", err=True)
    last = f", ids up to {report.last_image_id}" if report.last_image_id is not None else ""
    # What a stream's next export takes (windmill.export.NEXT_SINCE_OVERLAP says why it is a minute early).
    following = "" if report.next_since is None else (
        f" The next incremental export: --since "
        f"{report.next_since.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace('+00:00', 'Z')}")
    if request.to_stdout:  # the data holds standard output: the summary goes beside the progress bar
        if not app.quiet:
            click.echo(f"Exported {report.images} image(s){last} as {fmt} to standard output.{following}", err=True)
    else:
        click.echo(f"Exported {report.images} image(s){last} as {fmt}: " + ", ".join(map(str, report.files))
                   + f".{following}")


@click.command("web")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (another than loopback makes the dashboard reachable from the network).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--allow-actions", is_flag=True, help="Offer to retry dead jobs (needs a login that may: the monitor "
                                                    "role only reads).")
@pass_app
def web(app: AppContext, host: str, port: int, allow_actions: bool) -> None:
    """Serve the dashboard: overview (refreshing itself), gallery, each image with its boxes; read-only by default."""
    from windmill.stopping import sigterm_as_ctrl_c, sleep_until_interrupted
    from windmill.web import running_dashboard

    with (
        sigterm_as_ctrl_c(),
        app.database("windmill-web", reading_only=True) as database,
        running_dashboard(app.settings, app.catalog, database, host=host, port=port,
                          allow_actions=allow_actions) as running,
    ):
        try:  # the line too: a signal may come as soon as it is read
            click.echo(f"Windmill dashboard on {running.url}/ ({'actions on' if allow_actions else 'read-only'}); "
                       "Ctrl-C to stop.")
            sleep_until_interrupted()
        except KeyboardInterrupt:
            click.echo("Stopped.")


COMMANDS = [export_command, web]
