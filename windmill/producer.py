"""Submitting image × service tasks: walk the images a page at a time (keyset on image_id, a short transaction per
page), skip answered pairs and pairs with a task in flight, publish each page as a batch."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from windmill.broker import Broker, Task
from windmill.broker.ledger import publish_in_flight
from windmill.catalog import Service
from windmill.db.queries import fetch_value, query
from windmill.db.schema import refuse_if_overtaken
from windmill.settings import Settings

PAGE_SIZE = Settings.submit_page  # images per page (WINDMILL_SUBMIT_PAGE, --page-size): a read, a lookup, a publish
# The first page's size; each next page doubles up to the page size. A page's tasks reach the workers only when its
# publish is done (the job table: when its transaction commits), so a first page of thousands of images would keep
# every worker idle for a second or more at the start of a submit.
FIRST_PAGE = 16


@dataclass
class SubmitReport:
    images: int = 0
    published: int = 0
    skipped_answered: int = 0  # the pair has a successful answer (and --force was not given)
    skipped_in_flight: int = 0  # the pair has a task queued, running or waiting for a retry
    # The last image id of the last page done: every image up to it was submitted (`--after-id` resumes there).
    last_image_id: int = 0


def count_images(conn: psycopg.Connection, *, group: str | None, limit: int | None, after_id: int = 0) -> int:
    return fetch_value(conn, "count_images", {"group": group, "limit": limit, "after_id": after_id})


def image_pages(conn: psycopg.Connection, *, group: str | None, after_id: int, limit: int | None,
                page_size: int) -> Iterator[list[dict[str, Any]]]:
    """The images after `after_id` (at most `limit`), a page at a time. Each page is its own statement in its own
    transaction: no snapshot stays open between pages, so a walk over ten million images holds back no vacuum and
    sees the images registered while it runs."""
    remaining = limit
    sizes = page_sizes(page_size)
    while remaining is None or remaining > 0:
        size = next(sizes) if remaining is None else min(next(sizes), remaining)
        with conn.cursor(row_factory=dict_row) as cursor:  # autocommit: the statement is the transaction
            page = cursor.execute(query("submit_page"),
                                  {"group": group, "after_id": after_id, "limit": size}).fetchall()
        if not page:
            return
        yield page
        if len(page) < size:
            return
        after_id = page[-1]["image_id"]
        if remaining is not None:
            remaining -= len(page)


def page_sizes(page_size: int) -> Iterator[int]:
    """FIRST_PAGE, then twice the page before, up to `page_size` and then `page_size` for ever."""
    size = min(FIRST_PAGE, page_size)
    while True:
        yield size
        size = min(size * 2, page_size)


class Submitter:
    """Publishes pages of images to a broker for some services, counting into one report."""

    def __init__(self, lookup_conn: psycopg.Connection, broker: Broker, services: Sequence[Service], *,
                 force: bool = False, report: SubmitReport | None = None) -> None:
        self.conn = lookup_conn
        self.broker = broker
        self.services = list(services)
        self.force = force
        self.report = report if report is not None else SubmitReport()
        self.submitted_at = datetime.now(UTC)
        broker.declare(self.services)

    def submit_page(self, images: Sequence[dict[str, Any]]) -> None:
        """One task per image × service of the page, except answered pairs (unless force) and pairs in flight."""
        names = [service.name for service in self.services]
        answered: set[tuple[int, str]] = set()
        if not self.force:
            answered = set(self.conn.execute(
                query("answered_pairs"), {"image_ids": [image["image_id"] for image in images], "services": names}
            ).fetchall())
        tasks = [
            Task.for_image(image, service, self.submitted_at)
            for image in images
            for service in self.services
            if (image["image_id"], service.name) not in answered
        ]
        published = publish_in_flight(self.conn, self.broker, tasks, unless_answered=not self.force)
        report = self.report
        report.images += len(images)
        report.published += len(published)
        report.skipped_in_flight += len(tasks) - len(published)
        report.skipped_answered += len(images) * len(self.services) - len(tasks)


def submit(
    read_conn: psycopg.Connection,
    lookup_conn: psycopg.Connection,
    broker: Broker,
    services: Sequence[Service],
    *,
    group: str | None = None,
    limit: int | None = None,
    force: bool = False,
    after_id: int = 0,
    page_size: int = PAGE_SIZE,
    progress: Callable[[int], None] | None = None,
    report: SubmitReport | None = None,
    stopping: threading.Event | None = None,
) -> SubmitReport:
    """Publish one task per image × service for the images after `after_id`, a page at a time; pairs that already
    have a success are skipped unless force, and pairs that have a task in flight (queued, running or waiting for a
    retry, in either broker) always are. Two connections (autocommit): one reads the pages, the other looks up
    answers and keeps the ledger. `report` (filled page by page) says how far an interrupted submit got:
    `last_image_id` is where `after_id` resumes. Once `stopping` is set, the submit ends after the page it is on."""
    submitter = Submitter(lookup_conn, broker, services, force=force, report=report)
    submitter.report.last_image_id = max(submitter.report.last_image_id, after_id)
    for page in image_pages(read_conn, group=group, after_id=after_id, limit=limit, page_size=page_size):
        # A submit of millions of images runs for hours: an upgrade may come in the middle (windmill.db.schema).
        refuse_if_overtaken(read_conn, "submit", "it stopped queueing")
        submitter.submit_page(page)
        submitter.report.last_image_id = page[-1]["image_id"]
        if progress:
            progress(len(page))
        if stopping is not None and stopping.is_set():
            break
    return submitter.report
