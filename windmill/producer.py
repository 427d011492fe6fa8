"""Submitting image × service tasks: stream the images from PostgreSQL, skip answered pairs and pairs with a task in
flight, publish in batches."""

from __future__ import annotations

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

BATCH_SIZE = 2000


@dataclass
class SubmitReport:
    images: int = 0
    published: int = 0
    skipped_answered: int = 0  # the pair has a successful answer (and --force was not given)
    skipped_in_flight: int = 0  # the pair has a task queued, running or waiting for a retry


def count_images(conn: psycopg.Connection, *, group: str | None, limit: int | None) -> int:
    return fetch_value(conn, "count_images", {"group": group, "limit": limit})


def _image_batches(conn: psycopg.Connection, *, group: str | None, limit: int | None) -> Iterator[list[dict[str, Any]]]:
    # A named cursor needs a transaction; it is read-only and holds no locks.
    with conn.transaction(), conn.cursor(name="windmill_submit", row_factory=dict_row) as cursor:
        cursor.itersize = BATCH_SIZE
        cursor.execute(query("stream_images"), {"group": group, "limit": limit})
        while batch := cursor.fetchmany(BATCH_SIZE):
            yield batch


def submit(
    read_conn: psycopg.Connection,
    lookup_conn: psycopg.Connection,
    broker: Broker,
    services: Sequence[Service],
    *,
    group: str | None = None,
    limit: int | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SubmitReport:
    """Publish one task per image × service; pairs that already have a success are skipped unless force, and pairs
    that have a task in flight (queued, running or waiting for a retry, in either broker) always are.
    Two connections: one streams images inside its transaction, the other looks up answers and keeps the ledger."""
    broker.declare(services)
    report = SubmitReport()
    names = [service.name for service in services]
    submitted_at = datetime.now(UTC)
    for images in _image_batches(read_conn, group=group, limit=limit):
        answered: set[tuple[int, str]] = set()
        if not force:
            answered = set(lookup_conn.execute(
                query("answered_pairs"), {"image_ids": [image["image_id"] for image in images], "services": names}
            ).fetchall())
        tasks = [
            Task.for_image(image, service, submitted_at)
            for image in images
            for service in services
            if (image["image_id"], service.name) not in answered
        ]
        published = publish_in_flight(lookup_conn, broker, tasks, unless_answered=not force)
        report.images += len(images)
        report.published += len(published)
        report.skipped_in_flight += len(tasks) - len(published)
        report.skipped_answered += len(images) * len(services) - len(tasks)
        if progress:
            progress(len(images))
    return report
