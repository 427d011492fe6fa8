"""Line formats (JSON Lines: one line per image; CSV: one row per merged box), written a page at a time and
resumable: `--after-id N` appends to a file that ends at image N, after cutting off a line (a CSV record) a crash left
half-written."""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from windmill.errors import WindmillError
from windmill.export.output import STDOUT, standard_output
from windmill.export.resume import Continuation
from windmill.export.shapes import CSV_COLUMNS, csv_rows, dumps, jsonl_line
from windmill.export.source import ImageExport

TAIL_CHUNK = 1 << 16
COUNT_CHUNK = 1 << 20  # bytes read at a time to count a CSV file's quotes: memory stays flat at any size


class LineWriter:
    """Writes `render(page)` bytes to `path`; with `resume`, continues a file that ends at its image."""

    def __init__(self, path: Path, *, render: Callable[[list[ImageExport]], bytes], header: bytes,
                 last_record: Callable[[Path], tuple[int, bytes]], last_image_id: Callable[[bytes], int | None],
                 resume: Continuation | None, rows_are_boxes: bool = False) -> None:
        self.path = path
        self.render = render
        self._file = _open(path, header, last_record, last_image_id, resume, rows_are_boxes)
        self._whole = None if path == STDOUT else self._file.tell()  # where the last page written whole ends

    def write_page(self, page: list[ImageExport]) -> int:
        self._file.write(self.render(page))
        self._file.flush()  # a page is in the file before the next one is read
        if self._whole is not None:
            self._whole = self._file.tell()
        return len(page)

    def finish(self) -> list[Path]:
        if self.path == STDOUT:
            self._file.flush()  # standard output stays open for whoever prints after
        else:
            self._file.close()
        return [self.path]

    def notes(self) -> list[str]:
        return []

    def abort(self, whole_through: int | None) -> int | None:
        """Keep the pages written whole; a page cut off by the failure (a full disk, a second Ctrl-C) is cut from
        the file, so it ends at image `whole_through`. What went to standard output has gone."""
        if self._whole is None:
            with contextlib.suppress(OSError):  # its reader may be gone
                self._file.flush()
            return whole_through
        with contextlib.suppress(OSError):  # closed even when its last flush fails (a full disk)
            self._file.close()
        with contextlib.suppress(OSError):
            if self.path.stat().st_size > self._whole:  # (a header that never reached the disk is not padded)
                os.truncate(self.path, self._whole)
        return whole_through


def jsonl_writer(path: Path, resume: Continuation | None) -> LineWriter:
    return LineWriter(path, render=_jsonl_page, header=b"", last_record=_last_complete_line,
                      last_image_id=_jsonl_image_id, resume=resume)


def csv_writer(path: Path, resume: Continuation | None) -> LineWriter:
    return LineWriter(path, render=_csv_page, header=_csv_bytes([list(CSV_COLUMNS)]), last_record=_last_whole_image,
                      last_image_id=_csv_image_id, resume=resume, rows_are_boxes=True)


def _jsonl_page(page: list[ImageExport]) -> bytes:
    return b"".join(dumps(jsonl_line(item)) + b"\n" for item in page)


def _csv_page(page: list[ImageExport]) -> bytes:
    return _csv_bytes([row for item in page for row in csv_rows(item)])


def _csv_bytes(rows: list[list[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


def _jsonl_image_id(line: bytes) -> int | None:
    try:
        value = orjson.loads(line).get("image_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def _csv_image_id(record: bytes) -> int | None:
    try:  # a record may hold a newline in a quoted field: read as a file's text, which keeps it
        first = next(csv.reader(io.StringIO(record.decode("utf-8"), newline="")))[0]
    except (UnicodeDecodeError, StopIteration, IndexError, csv.Error):
        return None
    return int(first) if first.isdigit() else None


def _open(path: Path, header: bytes, last_record: Callable[[Path], tuple[int, bytes]],
          last_image_id: Callable[[bytes], int | None], resume: Continuation | None, rows_are_boxes: bool) -> BinaryIO:
    if path == STDOUT:  # a stream holds no earlier export to continue: --after-id only selects
        stream = standard_output()
        stream.write(header)
        return stream
    try:
        if resume is None or not path.exists() or path.stat().st_size == 0:
            handle: BinaryIO = open(path, "wb")  # noqa: SIM115  (closed by finish)
            handle.write(header)
            return handle
        end, line = last_record(path)
        found = last_image_id(line) if line else None
        if line and line != header.rstrip(b"\n") and found is None:
            raise WindmillError(f"{path} does not end with a line of this format; export to a new file instead")
        if found is not None:
            resume.check(str(path), found, rows_are_boxes=rows_are_boxes)
        handle = open(path, "r+b")  # noqa: SIM115
        handle.truncate(end)  # a line a crash left half-written goes; the images it held follow again
        handle.seek(end)
        if end == 0:
            handle.write(header)
        return handle
    except OSError as error:
        raise WindmillError(f"cannot write {path}: {error.strerror or error}") from None


def _last_complete_line(path: Path) -> tuple[int, bytes]:
    """(where the file's last complete line ends, that line without its line break); (0, b"") for none."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail = b""
        position = size
        while position > 0:
            step = min(TAIL_CHUNK, position)
            position -= step
            handle.seek(position)
            tail = handle.read(step) + tail
            last_break = tail.rfind(b"\n")
            if last_break < 0:
                continue
            previous = tail.rfind(b"\n", 0, last_break)
            if previous >= 0 or position == 0:
                return position + last_break + 1, tail[previous + 1:last_break]
        return 0, b""


def _last_whole_image(path: Path) -> tuple[int, bytes]:
    """A CSV file's _last_complete_line: (where its last whole image ends, that image's last record without its line
    break); (0, b"") for none.

    A newline ends a record only outside quotes (a path, a file name or a label may hold one), and with RFC 4180's
    quoting, a quote inside a field doubled as the csv module writes it, a position is outside quotes exactly when an
    even number of `"` come before it. So the file's quotes are counted, a chunk at a time, and the records are found
    in a window at its end, grown until it holds what is needed. An image has a row per box: when the record a crash
    cut short is of the last complete record's image, that image is cut too, and goes back to before its first row
    (continued after the last complete record, its other rows never came)."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        quotes = _count(handle, b'"')
        window = TAIL_CHUNK
        while True:
            start = max(0, size - window)
            handle.seek(start)
            tail = handle.read(size - start)
            ends = _record_ends(tail, quoted=(quotes - tail.count(b'"')) % 2 == 1)
            bounds = [0, *ends] if start == 0 else ends  # the window's first bytes end a record begun before it
            records = [tail[begin:end - 1] for begin, end in itertools.pairwise(bounds)]
            kept = len(records) - 1  # the last record the file keeps
            if records and (cut := tail[bounds[-1]:]):
                last_image = _csv_image_id(records[-1])
                if last_image is not None and _leading_image_id(cut) == last_image:
                    while kept >= 0 and _csv_image_id(records[kept]) == last_image:
                        kept -= 1
            if kept >= 0:
                return start + bounds[kept + 1], records[kept]
            if start == 0:
                return 0, b""
            window *= 2


def _count(handle: BinaryIO, byte: bytes) -> int:
    """How many times `byte` occurs in the file."""
    handle.seek(0)
    total = 0
    while chunk := handle.read(COUNT_CHUNK):
        total += chunk.count(byte)
    return total


def _record_ends(data: bytes, *, quoted: bool) -> list[int]:
    """Where the CSV records of `data` end (just after their newline): at a newline outside quotes; `quoted`: its
    first byte is inside a quoted field."""
    ends = []
    position = 0
    newline = data.find(b"\n")
    while newline >= 0:
        quoted ^= data.count(b'"', position, newline) % 2 == 1
        position = newline
        if not quoted:
            ends.append(newline + 1)
        newline = data.find(b"\n", newline + 1)
    return ends


def _leading_image_id(cut: bytes) -> int | None:
    """The image id a record cut short begins with, once its first field is whole (the id, which is never quoted)."""
    first, comma, _rest = cut.partition(b",")
    return int(first) if comma and first.isdigit() else None
