"""The image collection: registering files and URLs as rows of `images` (once each)."""

from __future__ import annotations

import difflib
import errno
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import psycopg

from windmill.db.queries import fetch_value, query
from windmill.errors import WindmillError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".heif",
                            ".avif"})
BATCH_SIZE = 1000
Progress = Callable[["AddReport"], None]  # called after each batch with the report so far
# (file name, path, URL, size, modification time in ns): size and time only where the caller stat'ed the file.
Row = tuple[str, str | None, str | None, int | None, int | None]


@dataclass
class AddReport:
    added: int = 0
    already_known: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    # Of the already known, with a group given: those in another group (or none), where they stay.
    known_in_another_group: int = 0

    def merged(self, other: AddReport) -> AddReport:
        """Both reports' counts together (files and a URL list added in one command)."""
        return AddReport(self.added + other.added, self.already_known + other.already_known,
                         [*self.skipped, *other.skipped],
                         self.known_in_another_group + other.known_in_another_group)

    def as_dict(self) -> dict[str, object]:
        return {"added": self.added, "already_known": self.already_known,
                "known_in_another_group": self.known_in_another_group,
                "skipped": [{"what": what, "why": why} for what, why in self.skipped]}


NOT_UTF8 = "the name is not valid UTF-8, which the collection stores (rename it, e.g. with convmv)"
# The longest path or URL the collection registers, in UTF-8 bytes. Each is the key of a unique index
# (images_path_key, images_url_key), and a B-tree entry holds at most 2,704 bytes: a longer one failed the insert
# of its whole batch, and `images add` ended there. PostgreSQL compresses a long key before it indexes it, so some
# longer ones would fit, but which depends on their characters; one bound says it the same way for every name
# (Linux allows paths of 4,096 bytes; real paths and URLs are far shorter).
MAX_NAME_BYTES = 2_600


def printable(path: Path | str) -> str:
    """A path (or URL) as it can be printed: bytes of a name that is not UTF-8 shown as \\xNN, and a NUL character
    (a URL list's line can hold one) as \\x00."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").replace("\x00", "\\x00")


def storable(path: Path | str) -> bool:
    """Whether the path (or URL) can be registered: unstorable_reason has nothing to say of it."""
    return unstorable_reason(path) is None


def unstorable_reason(path: Path | str, *, what: str = "path") -> str | None:
    """Why the path (or URL: `what`) cannot be registered, or None: a name in another encoding (Latin-1 from an
    old camera or archive) reaches Python with surrogates that PostgreSQL's text cannot hold, as it cannot a NUL
    character, and a key longer than MAX_NAME_BYTES does not fit the collection's index."""
    text = str(path)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return NOT_UTF8
    if "\x00" in text:  # a URL list's line (a path cannot hold one)
        return f"the {what} holds a NUL character, which the database's text cannot"
    if size > MAX_NAME_BYTES:
        return f"the {what} is {size:,} bytes long, over the {MAX_NAME_BYTES:,} the collection can index"
    return None


def find_image_files(paths: Iterable[Path], *, recursive: bool, report: AddReport) -> Iterator[Path]:
    """Image files named or found in named directories; anything else is reported, never fatal."""
    for path in paths:
        if path.is_dir():
            yield from _files_in(path.resolve(), recursive=recursive, report=report)
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                report.skipped.append((printable(path),
                                       f"not an image file name ({', '.join(sorted(IMAGE_SUFFIXES))})"))
            elif (problem := unstorable_reason(path.resolve())) is None:
                yield path.resolve()
            else:
                report.skipped.append((printable(path.resolve()), problem))
        elif path.is_symlink():
            report.skipped.append((printable(path), "dangling symbolic link"))
        elif path.exists():
            report.skipped.append((printable(path), "not a regular file or a directory (a device, socket or FIFO)"))
        else:
            report.skipped.append((printable(path), "no such file or directory"))


def _files_in(directory: Path, *, recursive: bool, report: AddReport) -> Iterator[Path]:
    """The image files of a resolved directory (and with `recursive` of its sub-directories), depth first, each
    directory's entries in name order: the order of the whole listing sorted, with one directory's listing in
    memory at a time, so ten million files start registering at once and in flat memory. The entries' types come
    with the listing (no stat per file), and only a symbolic link is resolved, file by file. A sub-directory that
    is a symbolic link is not entered (it may lead back up); one that cannot be listed, or whose name is not
    UTF-8, is reported once and skipped, and so is each such file."""
    if (problem := unstorable_reason(directory, what="folder's path")) is not None:
        report.skipped.append((printable(directory), problem))
        return
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as error:
        report.skipped.append((str(directory), f"cannot list the directory: {error.strerror or error}"))
        return
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    yield from _files_in(directory / entry.name, recursive=True, report=report)
                continue
            named_as_image = os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES
            wanted = named_as_image and entry.is_file()
            # An image's name on what is no file is reported, as it is when named on the command line; a link to a
            # directory is not (sub-directory links are never entered).
            odd = named_as_image and not wanted and not entry.is_dir()
            dangling = odd and entry.is_symlink()
        except OSError as error:  # gone since the listing, or a symbolic link loop (said, as a dangling link is)
            if error.errno == errno.ELOOP and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                report.skipped.append((printable(directory / entry.name), "symbolic link loop"))
            continue
        if odd:
            report.skipped.append((printable(directory / entry.name), "dangling symbolic link" if dangling
                                   else "not a regular file or a directory (a device, socket or FIFO)"))
        if wanted:
            path = directory / entry.name
            if entry.is_symlink():
                path = path.resolve()
            if (problem := unstorable_reason(path)) is None:
                yield path
            else:
                report.skipped.append((printable(path), problem))


def _insert(conn: psycopg.Connection, rows: list[Row], group: str | None, report: AddReport,
            progress: Progress | None) -> None:
    if not rows:
        return
    if group is not None and (problem := unstorable_reason(group, what="group name")) is not None:
        # Its index (images_group_idx) would refuse the batch, PostgreSQL saying why in its own words.
        shown = printable(group)
        raise WindmillError(f"cannot register images in the group {shown[:60]}{'…' if len(shown) > 60 else ''}: "
                            f"{problem}")
    added = conn.execute(
        query("add_images"),
        {
            "filenames": [row[0] for row in rows],
            "paths": [row[1] for row in rows],
            "urls": [row[2] for row in rows],
            "groups": [group] * len(rows),
            "sizes": [row[3] for row in rows],
            "mtimes": [row[4] for row in rows],
        },
    ).rowcount
    report.added += added
    report.already_known += len(rows) - added
    if group is not None and added < len(rows):
        report.known_in_another_group += fetch_value(conn, "known_images_in_another_group", {
            "group": group, "paths": [row[1] for row in rows if row[1]], "urls": [row[2] for row in rows if row[2]]})
    if progress is not None:
        progress(report)


def add_paths(conn: psycopg.Connection, paths: Iterable[Path], *, group: str | None = None,
              recursive: bool = False, progress: Progress | None = None) -> AddReport:
    """Register files and the image files of directories, a batch at a time as they are found (each batch its own
    statement: with an autocommit connection, registered for good)."""
    report = AddReport()
    register_files(conn, find_image_files(paths, recursive=recursive, report=report), group=group, report=report,
                   progress=progress)
    return report


def register_files(conn: psycopg.Connection, files: Iterable[Path], *, group: str | None = None,
                   report: AddReport | None = None, progress: Progress | None = None,
                   signatures: Mapping[Path, tuple[int, int]] | None = None) -> AddReport:
    """Register image files already found (resolved and storable, as find_image_files yields them), a batch at a
    time; into `report` when given. `signatures`: the (size, mtime in ns) of files the caller stat'ed, recorded
    with them (`images watch` compares them later, to tell a file written again)."""
    report = report if report is not None else AddReport()
    signatures = signatures or {}
    batch: list[Row] = []
    for file in files:
        size, mtime_ns = signatures.get(file, (None, None))
        batch.append((file.name, str(file), None, size, mtime_ns))
        if len(batch) >= BATCH_SIZE:
            _insert(conn, batch, group, report, progress)
            batch = []
    _insert(conn, batch, group, report, progress)
    return report


def is_url(text: str) -> bool:
    """Whether a command-line argument names a URL ('scheme://…') rather than a file: add_urls then says which
    schemes it takes, instead of a path that does not exist."""
    scheme, separator, _ = text.partition("://")
    return bool(separator) and scheme[:1].isascii() and scheme[:1].isalpha() and all(
        char.isascii() and (char.isalnum() or char in "+-.") for char in scheme)


def _host_problem(parts: SplitResult) -> str | None:
    """Why the URL's host or port cannot be fetched, found now rather than as each service's failed download."""
    try:
        parts.port  # noqa: B018  (raises for a port that is not a number in range)
    except ValueError:
        return "the port is not a number from 0 to 65535"
    host = parts.hostname
    if not host:
        return "the URL names no host"
    if any(char.isspace() or char in "<>\\\"{}|^`" for char in host):
        return f"{host!r} is not a host name"
    return None


def add_urls(conn: psycopg.Connection, urls: Iterable[str], *, group: str | None = None,
             progress: Progress | None = None) -> AddReport:
    """Register http(s) URLs (one per line of a list file; blank lines and # comments ignored)."""
    report = AddReport()
    batch: list[Row] = []
    for raw in urls:
        url = raw.strip()
        if not url or url.startswith("#"):
            continue
        if (problem := unstorable_reason(url, what="URL")) is not None:
            # NOT_UTF8: a list file's line in another encoding (read with surrogateescape)
            report.skipped.append((printable(url), "the line is not valid UTF-8" if problem == NOT_UTF8 else problem))
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            report.skipped.append((url, "only http:// and https:// URLs can be added"))
            continue
        if not parts.netloc:  # http:///a.jpg, https:a.jpg
            report.skipped.append((url, "the URL names no host"))
            continue
        if problem := _host_problem(parts):
            report.skipped.append((url, problem))
            continue
        filename = unquote(parts.path.rsplit("/", 1)[-1]) or parts.netloc
        batch.append((filename, None, url, None, None))
        if len(batch) >= BATCH_SIZE:
            _insert(conn, batch, group, report, progress)
            batch = []
    _insert(conn, batch, group, report, progress)
    return report


GROUP_NAMES_LIMIT = 10_000  # enough to find a mistyped name among; a collection with more is listed by `images groups`


def group_names(conn: psycopg.Connection, limit: int = GROUP_NAMES_LIMIT) -> list[str]:
    """The collection's group names in order (the first `limit`)."""
    return [row[0] for row in conn.execute(query("image_group_names"), {"limit": limit})]


def close_groups(group: str, names: list[str]) -> list[str]:
    """The group names a mistyped one may have meant, closest first: the same name in other letter case first (a
    short name like `G1` is too far from `g1` for the closeness of the letters alone), then the close ones."""
    same_but_case = [name for name in names if name.casefold() == group.casefold() and name != group]
    by_case = {name.casefold(): name for name in names}
    close = [by_case[found] for found in difflib.get_close_matches(group.casefold(), list(by_case), n=3, cutoff=0.6)]
    return list(dict.fromkeys([*same_but_case, *close]))[:3]


def group_hint(group: str, names: list[str]) -> str:
    """For a group that selects no image, given the collection's group names: the names it may have meant, or the
    groups there are when few, as a clause to end a message with."""
    if not names:
        return "; no image is in any group"
    close = close_groups(group, names)
    if close:
        return "; did you mean " + " or ".join(repr(name) for name in close) + "?"
    if len(names) <= 5:
        return "; the groups are " + ", ".join(repr(name) for name in names)
    return "; `windmill-cli images groups` lists them"
