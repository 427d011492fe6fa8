"""`windmill-cli export`: the collection's answers and products as files other tools read — COCO (pycocotools,
faster-coco-eval, FiftyOne), JSON Lines, Parquet (pandas, DuckDB) and CSV — streamed a page of images at a time
in image id order, so memory stays flat at any size and an interrupted export continues with `--after-id`."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import psycopg

from windmill.db.queries import query
from windmill.errors import WindmillError
from windmill.export.output import STDOUT
from windmill.export.resume import Continuation
from windmill.export.source import (
    PAGE_SIZE,
    ImageExport,
    Selection,
    count_images,
    detector_names,
    first_image_between,
    image_pages,
)
from windmill.instants import parse_instant

FORMATS = ("coco", "jsonl", "parquet", "csv")
SUFFIXES = {"coco": "json", "jsonl": "jsonl", "csv": "csv"}  # the file formats' usual suffixes, for a hint

__all__ = ["FORMATS", "ExportReport", "ExportRequest", "ExportStop", "ExportStopped", "Selection", "count_images",
           "export", "parse_since"]


class Writer(Protocol):
    def write_page(self, page: list[ImageExport]) -> int:
        """Write a page; returns how many of its images the output holds (COCO leaves out an image of no known size)."""
        ...

    def finish(self) -> list[Path]: ...

    def notes(self) -> list[str]:
        """What a reader of the output should know that the output cannot say (a sentence each)."""
        ...

    def abort(self, whole_through: int | None) -> int | None:
        """After a failure or a stop: keep what the format can of the pages written whole (the last of them ends
        at image `whole_through`), remove the rest, and say up to which image id the output now holds every
        image (None: nothing). Never raises: it runs while another error is on its way out."""
        ...


@dataclass(frozen=True)
class ExportRequest:
    format: str
    out: Path
    selection: Selection = field(default_factory=Selection)
    detectors: bool = False  # coco: each detector's raw boxes as a results file too

    @property
    def to_stdout(self) -> bool:
        """`--out -`: the export goes to standard output (jsonl, csv, coco)."""
        return self.out == STDOUT

    def check(self) -> None:
        """Refuse combinations that would silently do nothing, in one sentence."""
        if self.format not in FORMATS:
            raise WindmillError(f"unknown export format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if self.detectors and self.format != "coco":
            raise WindmillError("--detectors adds COCO results files: use it with --format coco")
        if self.selection.services is not None and self.format == "csv":
            raise WindmillError("--services selects answers, and the csv format holds merged boxes only")
        if self.selection.services is not None and self.format == "coco" and not self.detectors:
            raise WindmillError("--services with --format coco selects the detectors of --detectors; add it")
        if self.to_stdout and self.format == "parquet":
            raise WindmillError("parquet writes a directory of tables, which standard output (-) cannot hold: give "
                                "a directory")
        if self.to_stdout and self.detectors:
            raise WindmillError("--detectors writes a results file per detector beside the COCO file, which standard "
                                "output (-) cannot hold: give a file name")
        if self.to_stdout:
            return
        if self.format == "parquet" and self.out.exists() and not self.out.is_dir():
            raise WindmillError(f"{self.out} is a file, and parquet writes a directory of tables: give a directory")
        if self.format != "parquet" and self.out.is_dir():
            raise WindmillError(f"{self.out} is a directory: give the {self.format} file to write, e.g. "
                                f"{self.out / ('collection.' + SUFFIXES[self.format])}")


@dataclass
class ExportReport:
    images: int = 0
    last_image_id: int | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # the writer's (Writer.notes), for the summary
    next_since: dt.datetime | None = None  # the --since of the next incremental export (_next_since)


class ExportStopped(WindmillError):
    """The export stopped before the end; the message says what was written and how to continue."""


class ExportStop:
    """Asked to stop (SIGINT/SIGTERM, see windmill.stopping.stop_on_signals): the export ends after the page
    it is writing; asked twice, at once."""

    # Leaving now is a KeyboardInterrupt in the main thread, raised by the signal's handler (stop_on_signals).
    leave_now_interrupts = True
    first_signal_does = "finishing the page being written"  # what stop_on_signals logs at the first signal

    def __init__(self) -> None:
        self.requested = False

    def request_stop(self, *, immediately: bool = False) -> None:
        self.requested = True


def _writer(conn: psycopg.Connection, request: ExportRequest) -> Writer:
    selection = request.selection
    resume = None
    if selection.after_id:  # into an output that holds images already, it continues there (or is refused)
        resume = Continuation(selection.after_id, functools.partial(first_image_between, conn, selection))
    if request.format == "jsonl":
        from windmill.export.lines import jsonl_writer

        return jsonl_writer(request.out, resume)
    if request.format == "csv":
        from windmill.export.lines import csv_writer

        return csv_writer(request.out, resume)
    if request.format == "parquet":
        from windmill.export.parquet import ParquetWriter

        return ParquetWriter(request.out, resume)
    from windmill.export.coco import CocoWriter

    # Every detector's, not only those this export writes: an earlier export's results files go (CocoWriter.finish).
    return CocoWriter(request.out, detectors=request.detectors, known_detectors=detector_names(conn))


def export(conn: psycopg.Connection, request: ExportRequest, *, progress: Callable[[int], None] | None = None,
           stop: ExportStop | None = None, page_size: int = PAGE_SIZE) -> ExportReport:
    """Write the selected images to `request.out` in `request.format`; `progress` gets the number of images of
    each page written. Stopping (or a failure: a full disk, a lost connection) keeps every complete page of the line
    formats and every complete part of Parquet, and raises ExportStopped naming the id to continue after; a COCO
    file is written whole or not at all."""
    request.check()
    writer = _writer(conn, request)
    report = ExportReport(next_since=_next_since(conn))
    try:
        for page in image_pages(conn, request.selection, detectors=request.detectors, page_size=page_size):
            report.images += writer.write_page(page)
            report.last_image_id = page[-1].image_id
            if progress is not None:
                progress(len(page))
            if stop is not None and stop.requested:
                raise ExportStopped("on request")
            del page  # released before the next page is read (the generator lets go of it too)
        report.files = writer.finish()
        report.notes = writer.notes()
    except BrokenPipeError:
        writer.abort(report.last_image_id)
        raise  # the reader of standard output went away (`| head`): the command ends quietly, as a pipe's writer does
    except (Exception, KeyboardInterrupt) as error:
        kept_through = writer.abort(report.last_image_id)
        raise ExportStopped(_stopped_message(request, kept_through, error)) from error
    return report


# A change is dated by when its transaction began (`now()`), so one that commits while an export reads can carry a
# time before the export's start and be in neither this export nor a next one given that start. Windmill's
# transactions that date rows last milliseconds (a lock wait, seconds); a minute's overlap covers them, at the price
# of exporting again the few images changed in the minute before (an image exported twice is the same image, newer).
NEXT_SINCE_OVERLAP = dt.timedelta(minutes=1)


def _next_since(conn: psycopg.Connection) -> dt.datetime:
    """The --since that continues this export in a next incremental one: the server's clock (the one that dates the
    rows) at the start, less the overlap."""
    row = conn.execute(query("server_clock")).fetchone()
    assert row is not None
    return row[0] - NEXT_SINCE_OVERLAP


def _stopped_message(request: ExportRequest, kept_through: int | None, error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        cause = "interrupted"
    elif isinstance(error, OSError) and error.strerror:
        cause = error.strerror  # "No space left on device", without the errno and the file's name
    else:
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    where = "standard output" if request.to_stdout else str(request.out)
    if kept_through is None:
        return f"export stopped ({cause}); nothing was written to {where}"
    return (f"export stopped ({cause}): {where} {'got' if request.to_stdout else 'holds'} every image up to id "
            f"{kept_through}; continue with --after-id {kept_through}")


def parse_since(text: str | None) -> dt.datetime | None:
    """`--since`: an ISO 8601 instant; without a zone, local time."""
    return None if text is None else parse_instant(text, "--since")
