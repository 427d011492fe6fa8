"""The image collection: registering files and URLs as rows of `images` (once each)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg

from windmill.db.queries import query

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".heic", ".heif",
                            ".avif"})
BATCH_SIZE = 1000


@dataclass
class AddReport:
    added: int = 0
    already_known: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)

    def merged(self, other: AddReport) -> AddReport:
        """Both reports' counts together (files and a URL list added in one command)."""
        return AddReport(self.added + other.added, self.already_known + other.already_known,
                         [*self.skipped, *other.skipped])

    def as_dict(self) -> dict[str, object]:
        return {"added": self.added, "already_known": self.already_known,
                "skipped": [{"what": what, "why": why} for what, why in self.skipped]}


def find_image_files(paths: Iterable[Path], *, recursive: bool, report: AddReport) -> Iterator[Path]:
    """Image files named or found in named directories; anything else is reported, never fatal."""
    for path in paths:
        if path.is_dir():
            found = path.rglob("*") if recursive else path.iterdir()
            for child in sorted(found):
                if child.is_file() and child.suffix.lower() in IMAGE_SUFFIXES:
                    yield child.resolve()
        elif path.is_file():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield path.resolve()
            else:
                report.skipped.append((str(path), f"not an image file name ({', '.join(sorted(IMAGE_SUFFIXES))})"))
        elif path.is_symlink():
            report.skipped.append((str(path), "dangling symbolic link"))
        else:
            report.skipped.append((str(path), "no such file or directory"))


def _insert(conn: psycopg.Connection, rows: list[tuple[str, str | None, str | None]], group: str | None,
            report: AddReport) -> None:
    if not rows:
        return
    added = conn.execute(
        query("add_images"),
        {
            "filenames": [row[0] for row in rows],
            "paths": [row[1] for row in rows],
            "urls": [row[2] for row in rows],
            "groups": [group] * len(rows),
        },
    ).rowcount
    report.added += added
    report.already_known += len(rows) - added


def add_paths(conn: psycopg.Connection, paths: Iterable[Path], *, group: str | None = None,
              recursive: bool = False) -> AddReport:
    report = AddReport()
    batch: list[tuple[str, str | None, str | None]] = []
    for file in find_image_files(paths, recursive=recursive, report=report):
        batch.append((file.name, str(file), None))
        if len(batch) >= BATCH_SIZE:
            _insert(conn, batch, group, report)
            batch = []
    _insert(conn, batch, group, report)
    return report


def add_urls(conn: psycopg.Connection, urls: Iterable[str], *, group: str | None = None) -> AddReport:
    """Register http(s) URLs (one per line of a list file; blank lines and # comments ignored)."""
    report = AddReport()
    batch: list[tuple[str, str | None, str | None]] = []
    for raw in urls:
        url = raw.strip()
        if not url or url.startswith("#"):
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            report.skipped.append((url, "only http:// and https:// URLs can be added"))
            continue
        filename = unquote(parts.path.rsplit("/", 1)[-1]) or parts.netloc
        batch.append((filename, None, url))
        if len(batch) >= BATCH_SIZE:
            _insert(conn, batch, group, report)
            batch = []
    _insert(conn, batch, group, report)
    return report
