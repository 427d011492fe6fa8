"""`submit --follow`: keep queueing images as they are registered. A registering statement notifies the channel
`windmill_images` (sql/0050_image_stream.sql); the follower wakes on it, or after a poll interval when a
notification was lost, and walks the images after its position a page at a time, as `submit` does.

Image ids are drawn when a row is inserted but become visible when its transaction commits, so an id can appear
below ids already walked past. The position (`done_id`: every image up to it was looked at) therefore moves past
the newest id seen only after every transaction that was writing to `images` at that walk has ended; ids above the
position that were already submitted are remembered so that the next walks skip them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from windmill.db.queries import fetch_value, query
from windmill.db.schema import refuse_if_overtaken
from windmill.producer import PAGE_SIZE, SubmitReport, Submitter, image_pages

POLL_INTERVAL_S = 5.0  # a walk at least this often, notified or not
CATCH_UP_S = 0.5  # the next walk's delay while the position is behind the newest image seen
STOP_CHECK_S = 0.2


@dataclass
class FollowPosition:
    """Where a follower stands (pure bookkeeping: the caller reads the pages and the writers)."""

    done_id: int = 0  # every image up to this id was submitted, and no other can appear below it
    seen: set[int] = field(default_factory=set)  # ids above done_id already submitted
    newest_seen: int = 0  # the highest id the last walk saw
    writers: frozenset[str] = frozenset()  # the transactions writing to images when the last walk ended

    def __post_init__(self) -> None:
        self.newest_seen = max(self.newest_seen, self.done_id)

    def unseen(self, page: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """The images of a page not submitted yet; they count as seen from now on."""
        fresh = [image for image in page if image["image_id"] not in self.seen]
        self.seen.update(image["image_id"] for image in fresh)
        self.newest_seen = max(self.newest_seen, page[-1]["image_id"]) if page else self.newest_seen
        return fresh

    def walked(self, writers_before: frozenset[str], writers_after: frozenset[str], newest_before: int) -> None:
        """After a walk: when none of the writers of the previous walk's end was still writing as this walk began,
        every id up to that walk's newest was visible to this one, and the position moves there."""
        if not self.writers & writers_before:
            self.done_id = max(self.done_id, newest_before)
            self.seen = {image_id for image_id in self.seen if image_id > self.done_id}
        self.writers = writers_after


def images_writers(conn: psycopg.Connection) -> frozenset[str]:
    return frozenset(fetch_value(conn, "images_writers"))


def stream_name(services: Sequence[str], group: str | None, broker: str) -> str:
    """The saved position's key: the same selection followed again resumes where the last follow stood."""
    return f"{broker}:{','.join(sorted(services))}" + (f":{group}" if group is not None else "")


def saved_position(conn: psycopg.Connection, stream: str) -> int:
    """Where the last follow of this stream stood (0: none ran yet)."""
    row = conn.execute(query("follow_position"), {"stream": stream}).fetchone()
    return row[0] if row else 0


@dataclass
class Follower:
    """Walks and waits until `stopping` is set. `on_walk` is called with the report after each walk that queued
    something."""

    read_conn: psycopg.Connection
    submitter: Submitter
    wake: threading.Event
    stopping: threading.Event
    group: str | None = None
    page_size: int = PAGE_SIZE
    poll_interval_s: float = POLL_INTERVAL_S
    on_walk: Callable[[SubmitReport], None] | None = None
    stream: str | None = None  # where to save the position (follow_positions); None: nowhere

    def run(self, after_id: int = 0) -> SubmitReport:
        position = FollowPosition(done_id=after_id)
        report = self.submitter.report
        report.last_image_id = max(report.last_image_id, after_id)
        while not self.stopping.is_set():
            self.wake.clear()  # before the walk: a registration committed during it wakes the next one
            published_before = report.published
            self.walk(position)
            if self.stream is not None and position.done_id != report.last_image_id:
                self.read_conn.execute(query("save_follow_position"),
                                       {"stream": self.stream, "after_id": position.done_id})
            report.last_image_id = position.done_id
            if self.on_walk and report.published > published_before:
                self.on_walk(report)
            # Until the position has caught up with the newest image seen, walk again soon: the next walk is the
            # one that can move it (a restart then resumes close behind what was queued).
            behind = position.done_id < position.newest_seen
            self._wait(min(self.poll_interval_s, CATCH_UP_S) if behind else self.poll_interval_s)
        return report

    def _wait(self, seconds: float) -> None:
        """Until a notification, `seconds`, or a stop (checked every STOP_CHECK_S: a signal sets `stopping` only)."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            if self.wake.wait(min(left, STOP_CHECK_S)):
                return

    def walk(self, position: FollowPosition) -> None:
        newest_before = position.newest_seen
        writers_before = images_writers(self.read_conn)
        for page in image_pages(self.read_conn, group=self.group, after_id=position.done_id, limit=None,
                                page_size=self.page_size):
            fresh = position.unseen(page)
            if fresh:
                refuse_if_overtaken(self.read_conn, "submit --follow", "it stopped queueing")
                self.submitter.submit_page(fresh)
            if self.stopping.is_set():
                return  # the position stays where it was: nothing above it is taken for done
        position.walked(writers_before, images_writers(self.read_conn), newest_before)
