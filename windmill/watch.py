"""`images watch`: register image files as they land in a folder (a camera trap's card, an upload folder), and
with a submitter queue them. File-system events come from watchdog (inotify, FSEvents, kqueue, ...); a file is
taken once its size and modification time have stayed the same for a settle interval, so a file still being
written (in parts, by a slow upload) is not registered half-done. Registration is idempotent by path, so a
restart, which also looks at every file already in the folder, adds each file once; a file renamed inside the
folder keeps its image (watch_moves); a file written again is new content (watch_rewrites)."""

from __future__ import annotations

import errno
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
    AddReport,
    find_image_files,
    printable,
    register_files,
    unstorable_reason,
)
from windmill.db.queries import query
from windmill.db.schema import refuse_if_overtaken
from windmill.errors import WindmillError
from windmill.producer import PAGE_SIZE, Submitter
from windmill.watch_moves import Move, follow_moves
from windmill.watch_rewrites import (
    FileSignature,
    Recorded,
    Settled,
    Verdict,
    judge,
    record_signatures,
    recorded_files,
    replace_content,
)

if TYPE_CHECKING:
    from watchdog.events import FileSystemEventHandler

log = logging.getLogger(__name__)

SETTLE_S = 2.0  # a file is taken when unchanged this long
# A file its writer still holds open is taken once closed, or once unchanged this long: a writer that never closes
# it (or a close not heard of, events lost) must not hold it back for ever; an upload stalled longer is taken.
OPEN_WAIT_S = 300.0
READ_RETRY_S = 2.0  # how often a file that could not be read is looked at again


def is_candidate(path: Path) -> bool:
    """An image file name that is not hidden (upload tools write hidden temporary files, then rename them)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


@dataclass
class SettleTracker:
    """Files seen but not taken yet, each with its last signature and since when it has not changed, those a
    writer holds open, and those data was written to (pure: the caller stats the files, hears the events and gives
    the clock)."""

    settle_s: float = SETTLE_S
    open_wait_s: float = OPEN_WAIT_S
    pending: dict[Path, tuple[FileSignature, float]] = field(default_factory=dict)
    writing: set[Path] = field(default_factory=set)  # written to and not closed since (an upload stalled)
    # Data written to them since they were seen (a registered one has new content: watch_rewrites.judge).
    written: set[Path] = field(default_factory=set)
    walked: set[Path] = field(default_factory=set)  # found by a walk of the folder: no event said what happened

    def observe(self, path: Path, signature: FileSignature | None, now: float, writer: bool | None = None, *,
                wrote: bool = False, walked: bool = False) -> None:
        """A stat of a pending or new file; None: it is gone (deleted, or renamed away). `writer`: an event said it
        was written to (True) or that a writer closed it (False). `wrote`: an event said data was written to it
        (or a file created or renamed onto its path). `walked`: found by a walk of the folder, not by an event."""
        if signature is None:
            self.forget(path)
            return
        if path not in self.pending or self.pending[path][0] != signature:
            self.pending[path] = (signature, now)
        if writer:
            self.writing.add(path)
        elif writer is False:
            self.writing.discard(path)
        if wrote:
            self.written.add(path)
        if walked:
            self.walked.add(path)

    def forget(self, path: Path) -> None:
        self.pending.pop(path, None)
        self.writing.discard(path)
        self.written.discard(path)
        self.walked.discard(path)

    def take_settled(self, now: float) -> list[Settled]:
        """The files unchanged for the settle interval, not empty and not held open by their writer (or unchanged
        for `open_wait_s`), with what was heard of them; they leave the tracker."""
        settled = [Settled(path, signature, True if path in self.written else None if path in self.walked else False)
                   for path, (signature, since) in self.pending.items()
                   if signature[0] > 0 and now - since >= self.settle_s
                   and (path not in self.writing or now - since >= self.open_wait_s)]
        for file in settled:
            self.forget(file.path)
        return sorted(settled, key=lambda file: file.path)


@dataclass(frozen=True)
class Arrival:
    """An event of an image file: `writer` True when it was written to (its writer may still hold it open), False
    when a writer closed it, None when the event says neither (created, renamed into place, attributes changed);
    `wrote` when data was written to it (written, created: new content if it was registered)."""

    path: Path
    writer: bool | None = None
    wrote: bool = False


@dataclass(frozen=True)
class EventsLost:
    """The observer says events were lost (a burst beyond inotify's queue, fs.inotify.max_queued_events): files
    that landed meanwhile are known only to the folder."""


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
    replaced: int = 0  # registered files written again: the images of their old content removed, new ones added


@dataclass
class FolderWatch:
    """Registers the settled image files of `folder` until `stopping` is set; `on_batch` hears of each batch."""

    conn: psycopg.Connection
    folder: Path
    stopping: threading.Event
    recursive: bool = False
    group: str | None = None
    settle_s: float = SETTLE_S
    open_wait_s: float = OPEN_WAIT_S
    submitter: Submitter | None = None
    on_batch: Callable[[AddReport, int], None] | None = None  # (what was registered, tasks queued)
    report: WatchReport = field(default_factory=WatchReport)
    # Files this login cannot read (yet): taken once it can, when a chmod at the end of an upload or an administrator
    # puts them right (their services would only record `permission denied`, and nothing would take them again);
    # with what was heard of them (a registered file written again and unreadable for a while is still new content).
    unreadable: dict[Path, bool | None] = field(default_factory=dict)

    def run(self) -> WatchReport:
        try:
            from watchdog.observers import Observer
        except ImportError:
            raise WindmillError("watching a folder needs the watchdog library: "
                                "pip install 'windmill-pipeline[watch]'") from None

        arrivals: queue.SimpleQueue[Arrival | Move | EventsLost] = queue.SimpleQueue()
        observer = Observer()
        try:
            observer.schedule(_arrivals_handler(arrivals, closes_heard=_hears_closes(observer)), str(self.folder),
                              recursive=self.recursive)
            observer.start()  # before the scan: a file landing meanwhile is both scanned and heard of, never missed
        except OSError as problem:  # gone since the command looked, or a limit of inotify's (max_user_watches)
            raise WindmillError(f"cannot watch {self.folder}: {problem.strerror or problem}") from None
        try:
            tracker = SettleTracker(self.settle_s, self.open_wait_s)
            self._take_files_already_there(tracker)
            tick = min(0.25, self.settle_s / 4)
            read_again = time.monotonic() + READ_RETRY_S
            while not self.stopping.is_set():
                self._register(tracker.take_settled(time.monotonic()))
                self.stopping.wait(tick)
                if not self.folder.is_dir():  # no event says so: a folder made again under its name is not watched
                    raise WindmillError(f"the watched folder {self.folder} is gone (deleted, renamed or unmounted) "
                                        f"after {self.report.added} image(s) added; start the watch again once it "
                                        f"is back")
                moves: list[Move] = []
                lost = False
                while True:
                    try:
                        arrived = arrivals.get_nowait()
                    except queue.Empty:
                        break
                    if isinstance(arrived, Arrival):
                        tracker.observe(arrived.path, signature_of(arrived.path), time.monotonic(), arrived.writer,
                                        wrote=arrived.wrote)
                    elif isinstance(arrived, Move):
                        moves.append(arrived)
                    else:
                        lost = True
                self._follow(moves, tracker)
                if lost and not self.stopping.is_set():
                    self._look_again(tracker)
                for path in list(tracker.pending):
                    tracker.observe(path, signature_of(path), time.monotonic())
                if self.unreadable and time.monotonic() >= read_again:
                    self._readable_again(tracker)
                    read_again = time.monotonic() + READ_RETRY_S
        finally:
            observer.stop()
            observer.join()
        return self.report

    def _take_files_already_there(self, tracker: SettleTracker) -> None:
        """The files that landed while no watch ran (or whose events were lost). One not written for the settle
        interval (its modification time says so) is complete, as if watched that long: it is registered at once, a
        page at a time as the walk finds them, so a folder of millions starts in flat memory. The others (still
        being written, empty, or dated ahead of this clock) are tracked as if they had just arrived. A registered
        file whose size or time is not what was recorded was written again while no watch ran (watch_rewrites)."""
        settled: list[Settled] = []
        walked = AddReport()
        for path in find_image_files([self.folder], recursive=self.recursive, report=walked):
            if self.stopping.is_set():  # a card of millions takes minutes to walk; a stop ends it after its page
                break
            if not is_candidate(path):
                continue
            signature = signature_of(path)
            if path in tracker.pending:  # looked at again (events lost): heard of already, and settling
                tracker.observe(path, signature, time.monotonic())
            elif signature is not None and settled_by_its_time(signature, time.time_ns(), self.settle_s):
                settled.append(Settled(path, signature, wrote=None))  # no event said what happened
                if len(settled) >= PAGE_SIZE:
                    self._register(settled)
                    settled = []
            else:
                tracker.observe(path, signature, time.monotonic(), walked=True)
        self._register(settled)
        for what, why in walked.skipped:
            log.warning("skipped %s: %s", what, why, extra={"action": "watch_skipped"})

    def _look_again(self, tracker: SettleTracker) -> None:
        """Events were lost: the folder is walked again, as on start, so that the files they would have told of are
        taken. The files already known that the walk meets again are not counted again."""
        log.warning("events were lost (a burst of files beyond the kernel's queue of events, "
                    "fs.inotify.max_queued_events): looking at %s again", printable(self.folder),
                    extra={"action": "watch_events_lost"})
        counted = (self.report.already_known, self.report.known_in_another_group)
        self._take_files_already_there(tracker)
        self.report.already_known, self.report.known_in_another_group = counted

    def _register(self, files: Sequence[Settled]) -> None:
        kept: list[Settled] = []
        for file in files:
            path = file.path
            if (problem := unstorable_reason(path)) is not None:  # an arrival; the start-up walk left such out
                log.warning("skipped %s: %s", printable(path), problem, extra={"action": "watch_skipped"})
            elif not os.access(path, os.R_OK):  # one call per file; the stat only for those it refuses
                if signature_of(path) is None:  # deleted (or renamed away) since it settled: nothing to register
                    continue
                if path not in self.unreadable:  # a line once, not at each look
                    log.warning("skipped %s: cannot be read (permission denied); it is taken once it can be",
                                printable(path), extra={"action": "watch_unreadable"})
                heard = (self.unreadable.get(path, False), file.wrote)  # a write heard, or a walk's doubt, stays
                self.unreadable[path] = True if True in heard else None if None in heard else False
            else:
                kept.append(file)
        for start in range(0, len(kept), PAGE_SIZE):
            self._register_page(kept[start:start + PAGE_SIZE])

    def _register_page(self, page: Sequence[Settled]) -> None:
        """Register a page of settled files, each with its size and time. Those registered before are judged
        (watch_rewrites): new content replaces the image of the old, a touch is recorded. Queued with a
        submitter: the new and the replaced, and every file a walk found (a restart queues what was not queued)."""
        refuse_if_overtaken(self.conn, "images watch", "it stopped registering")  # windmill.db.schema
        paths = [file.path for file in page]
        known = recorded_files(self.conn, paths)  # before registering: the files new here are not among them
        added = register_files(self.conn, paths, group=self.group,  # found by the walk or an event, resolved
                               signatures={file.path: file.signature for file in page})
        verdicts = {file.path: judge(known[file.path].signature, file) for file in page if file.path in known}
        judged: dict[Verdict, list[tuple[Recorded, Settled]]] = {verdict: [] for verdict in Verdict}
        for file in page:
            if file.path in verdicts:
                judged[verdicts[file.path]].append((known[file.path], file))
        replaced = replace_content(self.conn, judged[Verdict.REPLACED])
        record_signatures(self.conn, judged[Verdict.RECORD])
        self.report.replaced += len(replaced)
        queued = [file.path for file in page
                  if file.wrote is None or verdicts.get(file.path, Verdict.REPLACED) is Verdict.REPLACED]
        published = self._submit(queued) if self.submitter is not None and queued else 0
        self.report.added += added.added
        self.report.already_known += added.already_known
        self.report.known_in_another_group += added.known_in_another_group
        self.report.published += published
        if self.on_batch:
            self.on_batch(added, published)

    def _readable_again(self, tracker: SettleTracker) -> None:
        """The files that could not be read and now can settle again (a chmod changes neither size nor time, so no
        stat would tell, and only inotify's IN_ATTRIB says so); those gone are forgotten."""
        for path, wrote in list(self.unreadable.items()):
            signature = signature_of(path)
            if signature is None or os.access(path, os.R_OK):
                del self.unreadable[path]
                tracker.observe(path, signature, time.monotonic(), wrote=bool(wrote), walked=wrote is None)

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
                # A file renamed onto a registered one's path (an upload tool's or exiftool's temporary file put in
                # place) is new content there.
                tracker.observe(destination, signature_of(destination), time.monotonic(), wrote=True)
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


def _hears_closes(observer: object) -> bool:
    """Whether the observer reports a writer closing a file (inotify's IN_CLOSE_WRITE): elsewhere (FSEvents,
    kqueue, polling) a file written to would wait for a close that is never heard of."""
    try:
        from watchdog.observers.inotify import InotifyObserver
    except (ImportError, OSError):  # not Linux
        return False
    return isinstance(observer, InotifyObserver)


def _arrivals_handler(arrivals: queue.SimpleQueue[Arrival | Move | EventsLost], *,
                      closes_heard: bool) -> FileSystemEventHandler:
    """watchdog's event handler: puts the image files created, written, closed, renamed into place or whose
    attributes changed (a touch's new time is recorded: watch_rewrites), and every file renamed inside the watched
    tree (with a folder renamed, each file in it) as a Move: whether its source is a registered image only the
    database knows. Each arrival says whether data was written to its file; with `closes_heard`, also whether it
    was written to or closed. A report that events were lost (watchdog's EventsLostEvent) is passed on."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler

    class Arrivals(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            try:
                self.hear(event)
            except Exception as problem:
                # Raised here, it would end watchdog's thread: the watch would go on running and hear of no file.
                log.warning("skipped %s: %s", printable(os.fsdecode(event.src_path)), problem,
                            extra={"action": "watch_skipped"})

        def hear(self, event: FileSystemEvent) -> None:
            if event.event_type == "events_lost":
                arrivals.put(EventsLost())
                return
            if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed", "attrib"):
                return
            raw = event.dest_path if event.event_type == "moved" else event.src_path
            if not raw:
                return
            landed = Path(os.fsdecode(raw))
            if problem := _link_problem(landed):
                if is_candidate(landed):  # said as `images add` says it, rather than dropped unseen
                    log.warning("skipped %s: %s", printable(landed), problem, extra={"action": "watch_skipped"})
                return
            if event.event_type == "moved" and event.src_path:
                # Resolved as registered paths are; the source is gone, so only the folders above it resolve.
                arrivals.put(Move(Path(os.fsdecode(event.src_path)).resolve(), landed.resolve()))
                return
            path = landed.resolve()
            if is_candidate(path):
                writer = {"modified": True, "closed": False}.get(event.event_type) if closes_heard else None
                # inotify tells a write (IN_MODIFY) from a change of attributes (IN_ATTRIB: touch, chmod), which is
                # heard too, so that a touched file's new time is recorded as no new content; elsewhere (FSEvents,
                # kqueue, polling) a touch may come as `modified`, and is taken as a write.
                arrivals.put(Arrival(path, writer, wrote=event.event_type in ("created", "modified")))

    return Arrivals()


def _link_problem(path: Path) -> str | None:
    """Why a symbolic link leads to no file (None for a link that does, and for anything else): resolved, a
    dangling one would be a file that is not there, and a loop raises."""
    if not path.is_symlink():
        return None
    try:
        os.stat(path)
    except OSError as error:
        return "symbolic link loop" if error.errno == errno.ELOOP else "dangling symbolic link"
    return None
