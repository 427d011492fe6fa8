"""`images watch`: register image files as they land in a folder (a camera trap's card, an upload folder), and
with a submitter queue them. File-system events come from watchdog (inotify, FSEvents, kqueue, ...); a file is
taken once its size and modification time have stayed the same for a settle interval, so a file still being
written (in parts, by a slow upload) is not registered half-done. Registration is idempotent by path, so a
restart, which also looks at every file already in the folder, adds each file once; a file renamed inside the
folder keeps its image (watch_moves)."""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg.rows import dict_row

from windmill.collection import (
    IMAGE_SUFFIXES,
    NOT_UTF8,
    AddReport,
    find_image_files,
    printable,
    register_files,
    storable,
)
from windmill.db.queries import query
from windmill.errors import WindmillError
from windmill.producer import PAGE_SIZE, Submitter
from windmill.watch_moves import Move, follow_moves

if TYPE_CHECKING:
    from watchdog.events import FileSystemEventHandler

log = logging.getLogger(__name__)

SETTLE_S = 2.0  # a file is taken when unchanged this long
FileSignature = tuple[int, int]  # (size, mtime in ns)


def is_candidate(path: Path) -> bool:
    """An image file name that is not hidden (upload tools write hidden temporary files, then rename them)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


@dataclass
class SettleTracker:
    """Files seen but not taken yet, each with its last signature and since when it has not changed (pure: the
    caller stats the files and gives the clock)."""

    settle_s: float = SETTLE_S
    pending: dict[Path, tuple[FileSignature, float]] = field(default_factory=dict)

    def observe(self, path: Path, signature: FileSignature | None, now: float) -> None:
        """A stat of a pending or new file; None: it is gone (deleted, or renamed away)."""
        if signature is None:
            self.pending.pop(path, None)
        elif path not in self.pending or self.pending[path][0] != signature:
            self.pending[path] = (signature, now)

    def take_settled(self, now: float) -> list[Path]:
        """The files unchanged for the settle interval and not empty; they leave the tracker."""
        settled = [path for path, (signature, since) in self.pending.items()
                   if signature[0] > 0 and now - since >= self.settle_s]
        for path in settled:
            del self.pending[path]
        return sorted(settled)


def signature_of(path: Path) -> FileSignature | None:
    """(size, mtime) of a regular file (one stat); None for anything else, or a file gone."""
    try:
        status = path.stat()
    except OSError:
        return None
    return (status.st_size, status.st_mtime_ns) if stat.S_ISREG(status.st_mode) else None


def settled_by_its_time(signature: FileSignature, now_ns: int, settle_s: float) -> bool:
    """Whether a file found on start is complete: not empty, and last written at least the settle interval ago (a
    write moves the modification time, so this is the tracker's rule read off the file)."""
    size, mtime_ns = signature
    return size > 0 and now_ns - mtime_ns >= settle_s * 1e9  # a time ahead of this clock: not yet


@dataclass
class WatchReport:
    added: int = 0
    already_known: int = 0
    known_in_another_group: int = 0  # of the already known, those registered in another group or none
    published: int = 0  # tasks queued (with a submitter)
    moved: int = 0  # registered files renamed inside the folder, their images following them


@dataclass
class FolderWatch:
    """Registers the settled image files of `folder` until `stopping` is set; `on_batch` hears of each batch."""

    conn: psycopg.Connection
    folder: Path
    stopping: threading.Event
    recursive: bool = False
    group: str | None = None
    settle_s: float = SETTLE_S
    submitter: Submitter | None = None
    on_batch: Callable[[AddReport, int], None] | None = None  # (what was registered, tasks queued)
    report: WatchReport = field(default_factory=WatchReport)

    def run(self) -> WatchReport:
        try:
            from watchdog.observers import Observer
        except ImportError:
            raise WindmillError("watching a folder needs the watchdog library: "
                                "pip install 'windmill-pipeline[watch]'") from None

        arrivals: queue.SimpleQueue[Path | Move] = queue.SimpleQueue()
        observer = Observer()
        try:
            observer.schedule(_arrivals_handler(arrivals), str(self.folder), recursive=self.recursive)
            observer.start()  # before the scan: a file landing meanwhile is both scanned and heard of, never missed
        except OSError as problem:  # gone since the command looked, or a limit of inotify's (max_user_watches)
            raise WindmillError(f"cannot watch {self.folder}: {problem.strerror or problem}") from None
        try:
            tracker = SettleTracker(self.settle_s)
            self._take_files_already_there(tracker)
            tick = min(0.25, self.settle_s / 4)
            while not self.stopping.is_set():
                self._register(tracker.take_settled(time.monotonic()))
                self.stopping.wait(tick)
                if not self.folder.is_dir():  # no event says so: a folder made again under its name is not watched
                    raise WindmillError(f"the watched folder {self.folder} is gone (deleted, renamed or unmounted) "
                                        f"after {self.report.added} image(s) added; start the watch again once it "
                                        f"is back")
                moves: list[Move] = []
                while True:
                    try:
                        arrived = arrivals.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(arrived, Path):
                        tracker.observe(arrived, signature_of(arrived), time.monotonic())
                    else:
                        moves.append(arrived)
                self._follow(moves, tracker)
                for path in list(tracker.pending):
                    tracker.observe(path, signature_of(path), time.monotonic())
        finally:
            observer.stop()
            observer.join()
        return self.report

    def _take_files_already_there(self, tracker: SettleTracker) -> None:
        """The files that landed while no watch ran. One not written for the settle interval (its modification
        time says so) is complete, as if watched that long: it is registered at once, a page at a time as the walk
        finds them, so a folder of millions starts in flat memory. The others (still being written, empty, or
        dated ahead of this clock) are tracked as if they had just arrived."""
        settled: list[Path] = []
        walked = AddReport()
        for path in find_image_files([self.folder], recursive=self.recursive, report=walked):
            if not is_candidate(path):
                continue
            signature = signature_of(path)
            if signature is not None and settled_by_its_time(signature, time.time_ns(), self.settle_s):
                settled.append(path)
                if len(settled) >= PAGE_SIZE:
                    self._register(settled)
                    settled = []
            else:
                tracker.observe(path, signature, time.monotonic())
        self._register(settled)
        for what, why in walked.skipped:
            log.warning("skipped %s: %s", what, why, extra={"action": "watch_skipped"})

    def _register(self, files: Sequence[Path]) -> None:
        kept: list[Path] = []
        for path in files:
            if storable(path):
                kept.append(path)
            else:  # an arrival; the start-up walk left such files out
                log.warning("skipped %s: %s", printable(path), NOT_UTF8, extra={"action": "watch_skipped"})
        files = kept
        for start in range(0, len(files), PAGE_SIZE):
            batch = files[start:start + PAGE_SIZE]
            added = register_files(self.conn, batch, group=self.group)  # found by the walk or an event, resolved
            published = self._submit(batch) if self.submitter is not None else 0
            self.report.added += added.added
            self.report.already_known += added.already_known
            self.report.known_in_another_group += added.known_in_another_group
            self.report.published += published
            if self.on_batch:
                self.on_batch(added, published)

    def _follow(self, moves: Sequence[Move], tracker: SettleTracker) -> None:
        """Registered files renamed: their images follow them (and with a submitter are offered as a known file
        is). A move of no registered file (an upload's temporary name renamed into place) is an arrival."""
        if not moves:
            return
        outcomes = follow_moves(self.conn, moves)
        followed = [outcome.move.destination for outcome in outcomes if outcome.image_id is not None]
        for outcome in outcomes:
            destination = outcome.move.destination
            if outcome.image_id is None and is_candidate(destination):
                tracker.observe(destination, signature_of(destination), time.monotonic())
        if followed:
            log.info("%d registered file(s) renamed: their images follow them", len(followed),
                     extra={"action": "watch_moved"})
            self.report.moved += len(followed)
            if self.submitter is not None:
                self.report.published += self._submit(followed)

    def _submit(self, files: Iterable[Path]) -> int:
        """Queue the images of these files, new or already known: pairs answered or in flight are skipped, so a
        restart queues nothing twice."""
        assert self.submitter is not None
        with self.conn.cursor(row_factory=dict_row) as cursor:
            images = cursor.execute(query("images_by_path"), {"paths": [str(path) for path in files]}).fetchall()
        if not images:
            return 0
        before = self.submitter.report.published
        self.submitter.submit_page(images)
        return self.submitter.report.published - before


def _arrivals_handler(arrivals: queue.SimpleQueue[Path | Move]) -> FileSystemEventHandler:
    """watchdog's event handler: puts the paths of image files created, written, closed or renamed into place, and
    every file renamed inside the watched tree (with a folder renamed, each file in it) as a Move: whether its
    source is a registered image only the database knows."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler

    class Arrivals(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
                return
            raw = event.dest_path if event.event_type == "moved" else event.src_path
            if not raw:
                return
            landed = Path(os.fsdecode(raw))
            if is_candidate(landed) and landed.is_symlink() and not landed.exists():
                # Said as `images add` says it: resolved, it would only be a file that is not there, dropped unseen.
                log.warning("skipped %s: dangling symbolic link", printable(landed), extra={"action": "watch_skipped"})
                return
            if event.event_type == "moved" and event.src_path:
                # Resolved as registered paths are; the source is gone, so only the folders above it resolve.
                arrivals.put(Move(Path(os.fsdecode(event.src_path)).resolve(), landed.resolve()))
                return
            path = landed.resolve()
            if is_candidate(path):
                arrivals.put(path)

    return Arrivals()
