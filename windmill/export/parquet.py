"""Parquet export (pyarrow, `pip install 'windmill-pipeline[parquet]'`): a directory with one dataset per table (images,
answers, boxes, postprocessing, consensus), each a series of part files named by the image ids they hold:
`boxes/part-000000000001-000000100000.parquet`. pandas, pyarrow and DuckDB read a table's directory as one table.

A part is written under a hidden name and renamed when complete (readers skip hidden files), so a crash loses at
most the part being written; `--after-id` adds parts after the last complete one."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from windmill.errors import WindmillError
from windmill.export.resume import Continuation
from windmill.export.shapes import table_rows
from windmill.export.source import ImageExport

INSTALL_HINT = "pip install 'windmill-pipeline[parquet]'"
PART_IMAGES = 100_000  # images per part file: a crash costs at most this many, and parts stay a few hundred MB
_PART = re.compile(r"^part-(\d{12})-(\d{12})\.parquet$")
TABLES = ("images", "answers", "boxes", "postprocessing", "consensus")
# Columns without min/max statistics: no reader filters JSON documents or messages by range, and their statistics
# (up to 4 KB of text per value, per column chunk) are held in memory for every row group until the part closes.
UNRANGED = frozenset({"path", "url", "error_message", "data", "merged_data", "consensus_data"})


def _schemas() -> dict[str, Any]:
    import pyarrow as pa

    instant = pa.timestamp("us", tz="UTC")
    text, json_text, whole, real = pa.string(), pa.string(), pa.int64(), pa.float64()
    return {
        "images": pa.schema([("image_id", whole), ("file_name", text), ("path", text), ("url", text),
                             ("group", text), ("created", instant), ("width", pa.int32()), ("height", pa.int32())]),
        "answers": pa.schema([("result_id", whole), ("image_id", whole), ("service", text), ("status", text),
                              ("error_message", text), ("processing_time", real), ("created", instant),
                              ("worker_id", text), ("data", json_text)]),
        "boxes": pa.schema([("merged_id", whole), ("image_id", whole), ("label", text), ("emoji", text),
                            ("score", real), ("avg_confidence", real), ("detection_count", pa.int32()),
                            ("contributing_services", pa.list_(text)), ("x", real), ("y", real), ("width", real),
                            ("height", real), ("created", instant), ("merged_data", json_text)]),
        "postprocessing": pa.schema([("postprocessing_id", whole), ("image_id", whole), ("merged_box_id", whole),
                                     ("service", text), ("status", text), ("error_message", text),
                                     ("processing_time", real), ("created", instant), ("data", json_text)]),
        "consensus": pa.schema([("image_id", whole), ("top_emoji", text), ("emoji", pa.list_(text)),
                                ("created", instant), ("consensus_data", json_text)]),
    }


class ParquetWriter:
    def __init__(self, directory: Path, resume: Continuation | None, *, part_images: int = PART_IMAGES) -> None:
        # malloc's heap rather than pyarrow's default (mimalloc): a page's arrays are a few hundred KB, made and freed
        # at once, and mimalloc's arenas kept ~15 MB more resident for no speed the export notices. The variable
        # reaches Arrow's own allocations when pyarrow is first used here (as in `windmill-cli export`), and an
        # explicit choice in the environment wins; the writer's arrays and pages use the system pool in any case.
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
        try:
            import pyarrow.parquet
        except ImportError:
            raise WindmillError(f"the parquet format needs pyarrow: {INSTALL_HINT}") from None
        self._pq = pyarrow.parquet
        self._pa = pyarrow
        self._pool = pyarrow.system_memory_pool()
        self.directory = directory
        self.part_images = part_images
        self.schemas = _schemas()
        self.written: list[Path] = []
        self._writers: dict[str, Any] = {}
        self._part: tuple[int, int, int] | None = None  # first image id, last image id, images
        # The last image id of the parts closed so far; a resumed export's: of the selection, every image up to it.
        self._kept_through = resume.after_id if resume is not None else None
        self._writing = False  # a page's tables are being written: the open part holds part of a page
        self._prepare(resume)

    def _prepare(self, resume: Continuation | None) -> None:
        holds_through = None  # the last image of the parts already there (resuming)
        try:
            for table in TABLES:
                folder = self.directory / table
                folder.mkdir(parents=True, exist_ok=True)
                for entry in folder.iterdir():
                    if entry.name.startswith(".part-") and entry.name.endswith(".tmp"):
                        entry.unlink()  # a part a crash left unfinished
                    elif (match := _PART.match(entry.name)) and resume is None:
                        entry.unlink()  # a new export replaces the old one
                    elif match:
                        holds_through = max(holds_through or 0, int(match.group(2)))
        except OSError as error:
            raise WindmillError(f"cannot write {self.directory}: {error.strerror or error}") from None
        if resume is not None and holds_through is not None:
            resume.check(str(self.directory), holds_through)

    def write_page(self, page: list[ImageExport]) -> int:
        rows: dict[str, list[dict[str, Any]]] = {table: [] for table in TABLES}
        for item in page:
            for table, found in table_rows(item).items():
                rows[table].extend(found)
        self._writing = True  # from here until every table has the page: opening a part's files can fail too
        if self._part is None:
            self._open(page[0].image_id)
        for table in TABLES:
            self._writers[table].write_table(self._arrow_table(rows[table], self.schemas[table]))
            rows[table] = []  # the dicts go before the next table's arrays are built
        self._writing = False
        assert self._part is not None  # opened above
        first, _last, images = self._part
        self._part = (first, page[-1].image_id, images + len(page))
        if self._part[2] >= self.part_images:
            self._close_part()
        return len(page)

    def _arrow_table(self, rows: list[dict[str, Any]], schema: Any) -> Any:
        """Table.from_pylist, in our memory pool (it takes none): one array per column of the rows' values."""
        pa = self._pa
        return pa.Table.from_arrays([pa.array([row.get(name) for row in rows], type=column.type, memory_pool=self._pool)
                                     for name, column in zip(schema.names, schema, strict=True)], schema=schema)

    def _open(self, first: int) -> None:
        self._part = (first, first, 0)
        for table in TABLES:
            hidden = self._hidden(table, first)
            schema = self.schemas[table]
            ranged = [name for name in schema.names if name not in UNRANGED]
            self._writers[table] = self._pq.ParquetWriter(hidden, schema, compression="zstd", write_statistics=ranged,
                                                          memory_pool=self._pool)

    def _close_part(self) -> None:
        if self._part is None:
            return
        first, last, _images = self._part
        for writer in self._writers.values():  # every table whole before any is published
            writer.close()
        for table in self._writers:
            final = self.directory / table / f"part-{first:012d}-{last:012d}.parquet"
            self._hidden(table, first).rename(final)
            self.written.append(final)
        self._writers = {}
        self._part = None
        self._kept_through = last

    def _hidden(self, table: str, first: int) -> Path:
        return self.directory / table / f".part-{first:012d}.parquet.tmp"

    def finish(self) -> list[Path]:
        self._close_part()
        return [self.directory]

    def notes(self) -> list[str]:
        return []

    def abort(self, whole_through: int | None) -> int | None:
        """The open part is kept when it holds whole pages and closes cleanly; one cut in the middle of a page (a
        full disk, a second Ctrl-C between two tables) cannot be trimmed, and goes with its pages."""
        if self._part is not None and not self._writing:
            try:
                self._close_part()
                return self._kept_through
            except (OSError, self._pa.ArrowException):
                pass
        if self._part is not None:
            first = self._part[0]
            for writer in self._writers.values():
                with contextlib.suppress(Exception):
                    writer.close()
            for table in TABLES:
                self._hidden(table, first).unlink(missing_ok=True)
            self._writers, self._part = {}, None
        return self._kept_through
