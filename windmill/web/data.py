"""What the dashboard's pages read: the status `windmill-cli status` shows (windmill.monitor), gallery pages, an
image's record (windmill.record) with the shapes to draw over it, and the one action, retrying dead jobs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from windmill.catalog import Catalog
from windmill.db.queries import query
from windmill.db.schema import newer_migrations, overtaken
from windmill.errors import NoSuchImage, WindmillError, first_line
from windmill.jobs import JobQueue
from windmill.monitor import RabbitMQManagement, collect_status
from windmill.record import image_record
from windmill.settings import Settings
from windmill.web.overlay import Overlay, build_overlay
from windmill.web.pictures import PICTURE_PX, Picture, Pictures

GALLERY_PAGE = 48
STATUSES = ("failed", "incomplete")


@dataclass(frozen=True)
class GalleryFilter:
    group: str | None = None
    emoji: str | None = None
    status: str | None = None  # failed | incomplete
    before: int | None = None  # image id: the page shows older images

    def params(self, limit: int) -> dict[str, Any]:
        return {"group": self.group, "emoji": self.emoji, "status": self.status, "before": self.before,
                "limit": limit}

    def query_string(self, **changes: Any) -> dict[str, Any]:
        """The filter as URL parameters (without empty ones), with `changes` applied."""
        values = {"group": self.group, "emoji": self.emoji, "status": self.status, "before": self.before, **changes}
        return {key: value for key, value in values.items() if value not in (None, "")}


@dataclass(frozen=True)
class ImagePage:
    record: dict[str, Any]
    overlay: Overlay | None
    picture_problem: str | None  # why the picture cannot be shown (the record still is)


class MayNotRetry(WindmillError):
    MESSAGE = ("this database login may not retry jobs (the monitor role only reads); start the dashboard with a "
               "worker login to retry")


class Dashboard:
    """The pages' data, read through a small pool (as the monitor role can: views and SELECTs only)."""

    def __init__(self, settings: Settings, catalog: Catalog, pool: ConnectionPool, *,
                 rabbitmq: RabbitMQManagement | None = None, gallery_page: int = GALLERY_PAGE) -> None:
        self.settings = settings
        self.gallery_page = gallery_page
        self.catalog = catalog
        self.pool = pool
        self.rabbitmq = rabbitmq
        self.pictures = Pictures(settings, self._locate)

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        with self.pool.connection() as conn:
            yield conn

    def _locate(self, image_id: int) -> tuple[str | None, str | None] | None:
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            row = cursor.execute(query("record_image"), {"image_id": image_id}).fetchone()
        return None if row is None else (row["image_path"], row["image_url"])

    def status(self) -> dict[str, Any]:
        """What `status` prints, and whether a newer Windmill migrated the database since this dashboard started:
        migrations only add, so its pages still read, but they leave out whatever the newer version records."""
        with self._connection() as conn:
            unknown = newer_migrations(conn)
            return {**collect_status(conn, rabbitmq=self.rabbitmq),
                    "overtaken": str(overtaken(unknown, "this dashboard", "its pages leave out what that version "
                                                                          "records")) if unknown else None}

    def gallery(self, selected: GalleryFilter) -> tuple[list[dict[str, Any]], int | None]:
        """A page of images and the position of the next (older) page, None on the last one."""
        with self._connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            rows = cursor.execute(query("web_gallery_page"), selected.params(self.gallery_page + 1)).fetchall()
        more = len(rows) > self.gallery_page
        rows = rows[:self.gallery_page]
        return rows, rows[-1]["image_id"] if more else None

    def groups(self) -> list[str]:
        with self._connection() as conn:
            return [row[0] for row in conn.execute(query("web_groups"))]

    def image(self, image_id: int) -> ImagePage:
        """The record and the shapes over its picture; WindmillError for an unknown image."""
        with self._connection() as conn:
            record = image_record(conn, image_id)
        try:
            picture = self.pictures.get(image_id, PICTURE_PX)
        except WindmillError as problem:
            return ImagePage(record, None, first_line(problem))
        if picture is None:
            raise NoSuchImage(image_id)
        detectors = [service.name for service in self.catalog.detectors]
        return ImagePage(record, build_overlay(record, (picture.width, picture.height), detectors), None)

    def picture(self, image_id: int, longest_side: int) -> Picture | None:
        return self.pictures.get(image_id, longest_side)

    def retry_dead(self, queue: str) -> int:
        """Queue the dead jobs of `queue` again; a login without the right to (the monitor role) is told so."""
        try:
            return len(JobQueue(self.pool).retry_dead(queue=queue))
        except psycopg.errors.InsufficientPrivilege:
            raise MayNotRetry(MayNotRetry.MESSAGE) from None
