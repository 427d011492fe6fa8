"""Removing images from the collection: `windmill-cli images remove`. Everything stored for an image goes with it
(ON DELETE CASCADE, and the ledger's trigger), a page of images per transaction, so a removal of millions holds
its locks briefly and an interrupted one has removed whole pages. Workers meeting a removed image drop its work
(roles/service.py)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from windmill.collection import is_url
from windmill.db.queries import fetch_value, query

log = logging.getLogger(__name__)

PAGE_SIZE = 500
DEADLOCK_TRIES = 3  # a page that meets a worker's locks in the other order is tried again
T = TypeVar("T")


@dataclass(frozen=True)
class Removal:
    """What to remove: the images any of these select (ids, a group, files or URLs as registered, folders)."""

    ids: tuple[int, ...] = ()
    group: str | None = None
    paths: tuple[str, ...] = ()
    urls: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()  # each ends with '/': the images registered under it, at any depth
    added_before: dt.datetime | None = None  # the images registered before this instant

    @classmethod
    def of(cls, targets: Iterable[str] = (), *, ids: Iterable[int] = (), group: str | None = None,
           added_before: dt.datetime | None = None) -> Removal:
        """From command-line words: a URL as registered; a folder (one that exists) for the images under it;
        any other path as the file registered there, whether or not it is still on disk."""
        paths: list[str] = []
        urls: list[str] = []
        folders: list[str] = []
        for target in targets:
            if is_url(target):
                urls.append(target)
                continue
            resolved = Path(target).expanduser().resolve()
            if resolved.is_dir():
                folders.append(str(resolved).rstrip("/") + "/")
            else:
                paths.append(str(resolved))
        return cls(tuple(ids), group, tuple(paths), tuple(urls), tuple(folders), added_before)

    @property
    def empty(self) -> bool:
        return not (self.ids or self.group is not None or self.paths or self.urls or self.folders
                    or self.added_before is not None)

    def params(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "group": self.group, "paths": list(self.paths), "urls": list(self.urls),
                "folders": list(self.folders), "added_before": self.added_before}


@dataclass
class RemoveReport:
    removed: int = 0
    last_image_id: int | None = None  # the highest id removed so far

    def as_dict(self) -> dict[str, Any]:
        return {"removed": self.removed, "last_image_id": self.last_image_id}


def count_selected(conn: psycopg.Connection, removal: Removal) -> int:
    return int(fetch_value(conn, "count_images_to_remove", removal.params()))


def remove_images(conn: psycopg.Connection, removal: Removal, *, page_size: int = PAGE_SIZE,
                  progress: Callable[[int], None] | None = None) -> RemoveReport:
    """Remove the selected images, a page per transaction (`conn` in autocommit); `progress` gets each page's
    count. Images registered meanwhile that the selection takes (a group being added to) go too."""
    report = RemoveReport()
    params = removal.params()
    after_id = 0
    while True:
        ids = [row[0] for row in conn.execute(query("images_to_remove"),
                                              {**params, "after_id": after_id, "limit": page_size})]
        if not ids:
            return report
        removed = _remove_page(conn, ids)
        report.removed += removed
        report.last_image_id = after_id = ids[-1]
        if progress is not None:
            progress(removed)


def _remove_page(conn: psycopg.Connection, ids: list[int]) -> int:
    return retried_on_deadlock(conn, lambda: len(conn.execute(query("remove_images"), {"ids": ids}).fetchall()),
                               f"removing images {ids[0]}–{ids[-1]}")


def retried_on_deadlock(conn: psycopg.Connection, work: Callable[[], T], what: str) -> T:
    """`work` in a transaction of its own (`conn` in autocommit), tried again when a removal in it meets a worker's
    locks taken in the other order (PostgreSQL ends one of the two: here, the removal)."""
    for attempt in range(1, DEADLOCK_TRIES + 1):
        try:
            with conn.transaction():
                return work()
        except psycopg.errors.DeadlockDetected:
            if attempt == DEADLOCK_TRIES:
                raise
            log.info("%s met a worker's locks; trying again", what, extra={"action": "remove_images_retried"})
    raise AssertionError("unreachable")  # pragma: no cover
