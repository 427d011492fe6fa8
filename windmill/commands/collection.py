"""Commands for the collection: adding images, submitting them, one image's record, COCO evaluation."""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from windmill.broker.choice import BROKERS, JOB_TABLE, RABBITMQ
from windmill.commands import completion
from windmill.commands.context import (
    AN_ID,
    BIGINT,
    ID_OR_ZERO,
    AppContext,
    echo_json,
    json_option,
    pass_app,
    print_services,
)
from windmill.errors import WindmillError

if TYPE_CHECKING:
    from windmill.api import Submission
    from windmill.catalog import Service
    from windmill.collection import AddReport
    from windmill.producer import SubmitReport
    from windmill.watch import WatchReport


@click.group()
def images() -> None:
    """Register images (files or URLs) in the collection."""


@images.command("add")
@click.argument("paths", nargs=-1, type=click.Path())  # str: a URL among them stays as typed
@click.option("--group", "-g", help="Group name stored with each image (submit --group selects it).")
@click.option("--recursive", "-r", is_flag=True, help="Descend into sub-directories.")
@click.option("--url-list", type=click.File("r", encoding="utf-8", errors="surrogateescape"),
              help="A file with one image URL per line (added as well as any PATH).")
@json_option
@pass_app
def images_add(app: AppContext, paths: tuple[str, ...], group: str | None, recursive: bool,
               url_list: Any, as_json: bool) -> None:
    """Add image files, directories of images, http(s) URLs and/or a list of URLs. Known images are not added
    twice."""
    from windmill.collection import AddReport, is_url

    if not paths and url_list is None:
        raise click.UsageError("name image files, directories or URLs, or give --url-list FILE")
    # URLs go to add_urls: as a Path, 'https://host/a.jpg' collapses to 'https:/host/a.jpg', a file that is not there.
    urls = [path for path in paths if is_url(path)]
    files = [Path(path) for path in paths if not is_url(path)]
    report = AddReport()
    count = RunningCount() if sys.stderr.isatty() and not (app.quiet or as_json) else None
    try:
        with app.windmill() as windmill:
            if files:
                report = report.merged(windmill.add_images(files, group=group, recursive=recursive, progress=count))
            if urls:
                report = report.merged(windmill.add_urls(urls, group=group, progress=count))
            if url_list is not None:
                report = report.merged(windmill.add_urls(url_list, group=group, progress=count))
    finally:
        if count is not None:
            count.close()
    if as_json:
        echo_json(report.as_dict())
    else:
        for what, why in report.skipped:
            click.echo(f"skipped {what}: {why}", err=True)
        click.echo(f"Added {report.added} image(s); {_already_known(report)}; {len(report.skipped)} skipped.")
    if report.skipped and not report.added and not report.already_known:
        sys.exit(1)


def _already_known(report: AddReport | WatchReport) -> str:
    """'N already known', and how many of those stay in another group (or none) than the one asked for: an image
    belongs to one group, so a submit of that group will not find them."""
    elsewhere = (f" ({report.known_in_another_group} of them in another group or none, where they stay: an "
                 f"image belongs to one group)" if report.known_in_another_group else "")
    return f"{report.already_known} already known{elsewhere}"


def _nothing_to_submit(group: str | None, after_id: int, names: list[str]) -> str:
    """Why a submit found no image, naming what it selected by; a group's name may be mistyped (`names`: the
    collection's groups)."""
    from windmill.collection import close_groups

    where = (f" in group {group!r}" if group is not None else "") + (f" after id {after_id}" if after_id else "")
    if after_id:
        return f"no images to submit{where}"
    close = close_groups(group, names) if group is not None else []
    if close:
        return f"no images to submit{where}; did you mean " + " or ".join(map(repr, close)) + "?"
    return f"no images to submit{where}; add some with `windmill-cli images add" + (
        f" --group {shlex.quote(group)}`" if group is not None else "`")


class RunningCount:
    """`images add`'s running count on stderr, rewritten in place at most twice a second: a walk of millions of
    files registers for minutes. Only on a terminal (a log gets the summary line alone)."""

    INTERVAL_S = 0.5

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.shown_at: float | None = None

    def __call__(self, report: AddReport) -> None:
        now = time.monotonic()
        if self.shown_at is not None and now - self.shown_at < self.INTERVAL_S:
            return
        self.shown_at = now
        seen = report.added + report.already_known
        click.echo(f"\rRegistering: {seen:,} file(s), {report.added:,} added, {report.already_known:,} already known "
                   f"({seen / max(now - self.started, 1e-3):,.0f}/s)", nl=False, err=True)

    def close(self) -> None:
        if self.shown_at is not None:
            click.echo(err=True)  # the summary goes on a line of its own


@images.command("watch")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--recursive", "-r", is_flag=True, help="Watch sub-directories too.")
@click.option("--group", "-g", help="Group name stored with each image.")
@click.option("--submit", "selection", metavar="SERVICES", shell_complete=completion.services,
              help="Queue each image for these services too (a selection or a comma list, as submit --services).")
@click.option("--broker", type=click.Choice(BROKERS),
              help="With --submit: where the tasks go (default: RabbitMQ when configured, else the job table).")
@click.option("--settle", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True,
              help="Seconds a file must stay unchanged (size and time) before it is taken: it is still being "
                   "written until then.")
@pass_app
def images_watch(app: AppContext, folder: Path, recursive: bool, group: str | None, selection: str | None,
                 broker: str | None, settle: float) -> None:
    """Register image files as they land in FOLDER (and queue them with --submit), until Ctrl-C or SIGTERM.
    Files already there are looked at first; a file already known is not added (nor queued) twice, unless it was
    written again: new content replaces the image of the old, with what was stored for it."""
    from windmill.stopping import StopRequest, stop_on_signals

    selected = app.catalog.select_for_tasks(selection) if selection else None  # refused before any connection

    def on_batch(added: AddReport, published: int) -> None:
        for what, why in added.skipped:
            click.echo(f"skipped {what}: {why}", err=True)
        if not app.quiet and (added.added or published):
            queued = f"; queued {published} task(s)" if selected is not None else ""
            click.echo(f"Added {added.added} image(s); {_already_known(added)}{queued}.", err=True)

    stop = StopRequest()
    try:
        with app.windmill("windmill-watch") as windmill, stop_on_signals(stop):
            report = windmill.watch(folder, stopping=stop.stopping, recursive=recursive, group=group,
                                    settle_s=settle, submit=selected, broker=broker, on_batch=on_batch)
    except KeyboardInterrupt:
        raise WindmillError(f"interrupted while watching {folder}") from None
    queued = f", queued {report.published} task(s)" if selected is not None else ""
    moved = f"; {report.moved} moved" if report.moved else ""
    replaced = f"; {report.replaced} written again (new content, new image)" if report.replaced else ""
    click.echo(f"Stopped watching {folder}: added {report.added} image(s){queued}; {_already_known(report)}{moved}"
               f"{replaced}.")


@images.command("groups")
@json_option
@pass_app
def images_groups(app: AppContext, as_json: bool) -> None:
    """The collection's groups with their number of images (reads every image's index entry)."""
    from windmill.monitor import format_table

    with app.windmill(reading_only=True) as windmill:
        counts = windmill.groups()
    rows = [{"group": group, "images": images} for group, images in counts.items()]
    if as_json:
        echo_json(rows)
    elif not rows:
        click.echo("No images yet; add some with `windmill-cli images add`.")
    else:
        click.echo(format_table([{**row, "group": "(none)" if row["group"] is None else row["group"]}
                                 for row in rows], ["group", "images"]))


@images.command("remove")
@click.argument("targets", nargs=-1, metavar="[PATH|URL]...")
@click.option("--id", "ids", type=AN_ID, multiple=True, help="An image id (repeatable).")
@click.option("--group", "-g", help="Every image of this group.")
@click.option("--added-before", metavar="INSTANT", help="Every image registered before this instant (ISO 8601, e.g. "
                                                       "2026-11-01T00:00Z): a stream's old images.")
@click.option("--yes", "-y", is_flag=True, help="Remove without asking (needed when not run at a terminal).")
@json_option
@pass_app
def images_remove(app: AppContext, targets: tuple[str, ...], ids: tuple[int, ...], group: str | None,
                  added_before: str | None, yes: bool, as_json: bool) -> None:
    """Remove images from the collection with everything Windmill stored for them: answers, boxes,
    postprocessing, consensus, queued jobs. The files themselves are not touched. PATH: a file as registered (on
    disk or not) or a folder (every image under it); URL: as registered; with --id, --group and --added-before,
    the images any of them names."""
    from windmill.instants import parse_instant

    if not (targets or ids or group is not None or added_before is not None):
        raise click.UsageError("name the images to remove: PATH or URL, --id N, --group G or --added-before T")
    before = parse_instant(added_before, "--added-before") if added_before is not None else None
    with app.windmill() as windmill:
        selected = windmill.images_to_remove(targets, ids=ids, group=group, added_before=before)
        if not selected:
            hint = ""
            if group is not None:
                from windmill.collection import group_hint

                hint = f" (none is in group {group!r}{group_hint(group, windmill.group_names())})"
            raise WindmillError(f"no registered image matches{hint}; nothing removed")
        if not yes:
            if not sys.stdin.isatty():
                raise WindmillError(f"removing {selected:,} image(s) needs --yes when no terminal can ask; "
                                    "nothing removed")
            click.confirm(f"Remove {selected:,} image(s) and everything Windmill stored for them?", abort=True,
                          err=True)
        report = windmill.remove_images(targets, ids=ids, group=group, added_before=before)
    if as_json:
        echo_json(report.as_dict())
    else:
        click.echo(f"Removed {report.removed:,} image(s) with their answers, boxes, postprocessing, consensus and "
                   "jobs.")


@click.command()
@click.option("--services", "-s", default="all", show_default=True, shell_complete=completion.services,
              help="all, primary, spatial_only, full_catalog, or a comma-separated list of services.")
@click.option("--limit", "-l", type=click.IntRange(min=1), help="Submit at most this many images.")
@click.option("--group", "-g", help="Only images of this group.")
@click.option("--force", is_flag=True, help="Submit pairs that already have a successful answer too.")
@click.option("--after-id", type=ID_OR_ZERO,
              help="Only images after this id (resume an interrupted submit where it said it stopped). With "
                   "--follow, by default where the last follow of these services, group and broker stood.")
@click.option("--page-size", type=click.IntRange(1, 100_000),
              help="Images read, looked up and published per page [default: WINDMILL_SUBMIT_PAGE, 2000].")
@click.option("--follow", is_flag=True,
              help="Then keep queueing images as they are registered, until Ctrl-C or SIGTERM.")
@click.option("--poll-interval", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True,
              help="With --follow: look for new images at least this often (a notification wakes it sooner).")
@click.option("--list-services", "list_only", is_flag=True, help="Print the catalog and exit.")
@click.option("--broker", type=click.Choice(BROKERS),
              help="Where the tasks go (default: RabbitMQ when configured, else the PostgreSQL job table).")
@json_option
@pass_app
def submit(app: AppContext, services: str, limit: int | None, group: str | None, force: bool,
           after_id: int | None,
           page_size: int | None, follow: bool, poll_interval: float, list_only: bool, broker: str | None,
           as_json: bool) -> None:
    """Queue one task per image × service for the service workers, a page of images at a time (by id)."""
    if list_only:
        print_services(app.catalog, as_json=False)
        return
    from windmill.producer import SubmitReport

    selected = app.catalog.select_for_tasks(services)  # an unknown name is refused before any connection is made
    report = SubmitReport()
    if follow:
        if limit is not None:
            raise click.UsageError("--follow runs until stopped: it takes no --limit")
        submitted = _follow(app, selected, report, group=group, force=force, broker=broker, after_id=after_id,
                            page_size=page_size, poll_interval=poll_interval, as_json=as_json)
    else:
        after_id = after_id or 0
        from windmill.stopping import StopRequest, stop_on_signals

        stop = StopRequest()
        with app.windmill("windmill-submit") as windmill:
            total = windmill.count_images(group=group, limit=limit, after_id=after_id)
            if total == 0:
                names = windmill.group_names() if group is not None and not after_id else []
                raise WindmillError(_nothing_to_submit(group, after_id, names))
            with click.progressbar(length=total, label="Submitting", file=sys.stderr,
                                   hidden=app.quiet or as_json) as bar:
                try:
                    with stop_on_signals(stop):
                        submitted = windmill.submit(selected, group=group, limit=limit, force=force,
                                                    broker=broker, after_id=after_id, page_size=page_size,
                                                    progress=bar.update, report=report, stopping=stop.stopping)
                except KeyboardInterrupt:
                    stop.stopping.set()
            if stop.stopping.is_set() and report.images < total:
                raise WindmillError(f"stopped: {_counts(report)} Resume with --after-id "
                                    f"{report.last_image_id}.")
    if as_json:
        echo_json({**asdict(report), "services": list(submitted.services),
                   "broker": RABBITMQ if submitted.rabbitmq else JOB_TABLE})
        return
    from windmill.broker.choice import describe

    click.echo(f"Submitted {report.published} task(s) for {report.images} image(s) × {len(selected)} service(s) "
               f"to {describe(submitted.rabbitmq)}; {report.skipped_answered} already answered, "
               f"{report.skipped_in_flight} already in flight. Last image id done: {report.last_image_id}.")


def _counts(report: SubmitReport) -> str:
    return (f"{report.published} task(s) queued for {report.images} image(s); every image up to id "
            f"{report.last_image_id} was submitted.")


def _follow(app: AppContext, selected: list[Service], report: SubmitReport, *, group: str | None, force: bool,
            broker: str | None, after_id: int | None, page_size: int | None, poll_interval: float,
            as_json: bool) -> Submission:
    """submit --follow: until a signal, with a line per walk that queued something (not with -q or --json)."""
    from windmill.stopping import StopRequest, stop_on_signals

    def on_walk(progress: SubmitReport) -> None:
        # Not _counts: the saved position moves a walk behind what was queued (an image still being registered
        # is walked again), so "every image up to id 0 was submitted" followed 1,500 tasks queued.
        if not (app.quiet or as_json):
            click.echo(f"{progress.published} task(s) queued for {progress.images} image(s) so far; a restart "
                       f"resumes after image {progress.last_image_id}.", err=True)

    stop = StopRequest()
    try:
        with app.windmill("windmill-submit") as windmill, stop_on_signals(stop):
            return windmill.follow(selected, stopping=stop.stopping, group=group, force=force, broker=broker,
                                   after_id=after_id, page_size=page_size,
                                   poll_interval_s=poll_interval, on_walk=on_walk, report=report)
    except KeyboardInterrupt:
        raise WindmillError(f"stopped: {_counts(report)} Resume with --after-id "
                            f"{report.last_image_id}.") from None


@click.command()
@click.argument("image_id", type=BIGINT)
@click.option("--png", "png_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Draw the image with its merged boxes into this PNG file instead of printing the record.")
@click.option("--detectors", is_flag=True, help="With --png: also draw each detector's raw boxes in its own colour.")
@pass_app
def show(app: AppContext, image_id: int, png_path: Path | None, detectors: bool) -> None:
    """Print an image's full record as JSON (answers, boxes, postprocessing, consensus), or draw it with --png."""
    if png_path is None:
        if detectors:
            raise click.UsageError("--detectors draws boxes: give --png FILE too")
        with app.windmill(reading_only=True) as windmill:
            echo_json(windmill.image(image_id).as_dict())
        return
    from windmill.render import render_image, save_png

    with app.connection(reading_only=True) as conn:
        picture = render_image(conn, app.settings, image_id, detectors=detectors)
    save_png(picture, png_path)
    click.echo(f"Wrote {png_path} ({picture.width}×{picture.height}).")


@click.command("eval")
@click.option("--coco", "coco_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="COCO annotations (images with file_name, annotations with bbox and category_id, categories).")
@click.option("--group", "-g", help="Only images of this group.")
@click.option("--include-rejected", is_flag=True,
              help="Add a merged+rejected row: the boxes the democratic filter turned down count as low-ranked "
                   "candidates (nothing is stored).")
@json_option
@pass_app
def evaluate(app: AppContext, coco_path: Path, group: str | None, include_rejected: bool, as_json: bool) -> None:
    """COCO AP, AP50, AP75 and best F1 of the merged boxes and of each detector against ground truth."""
    from windmill.evaluation import evaluate_collection, format_eval_table, load_coco_annotations

    truth = load_coco_annotations(coco_path)
    with app.connection(reading_only=True) as conn:
        rows = evaluate_collection(conn, truth, group=group,
                                   rejected_by=app.settings.harmony if include_rejected else None)
    if as_json:
        echo_json(rows)
    else:
        click.echo(format_eval_table(rows))


COMMANDS = (images, submit, show, evaluate)
