"""`images watch` under the conditions of a real folder: what lands in it that is no image file to take (a
symbolic link loop) is said once and skipped, and the watch goes on hearing of the files after it; a burst that
loses events, and a file it cannot read yet, do not keep files from being taken."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PYTHON, wait_until
from tests.test_streams import SAMPLE, jobs_per_image, landed_long_ago, registered, stop, watching
from windmill.db.connect import Database
from windmill.watch import FolderWatch
from windmill.watch_rewrites import Settled


def test_a_symbolic_link_loop_landing_is_skipped_and_the_watch_goes_on_hearing(
        database: Database, conn: psycopg.Connection, tmp_path: Path, caplog) -> None:
    # Resolving the loop raised in watchdog's thread: a traceback, and the watch heard of no file after it while it
    # seemed to run.
    folder = tmp_path.resolve() / "uploads"
    (folder / "day1").mkdir(parents=True)
    (folder / "day1" / "up").symlink_to("..")  # a folder loop, there from the start: not entered
    os.symlink("y.jpg", folder / "x.jpg")  # a loop there from the start: the walk said nothing of it either
    os.symlink("x.jpg", folder / "y.jpg")
    before = folder / "before.jpg"
    before.write_bytes(b"jpeg")
    landed_long_ago(before)
    with watching(database, folder, settle_s=0.3, recursive=True) as (_, runner):
        wait_until(lambda: registered(conn, before), timeout=30, message="the file already there")
        os.symlink("loop2", folder / "loop1")
        os.symlink("loop1", folder / "loop2")
        os.symlink("b.jpg", folder / "a.jpg")
        os.symlink("a.jpg", folder / "b.jpg")
        after = folder / "after.jpg"
        after.write_bytes(SAMPLE.read_bytes())
        wait_until(lambda: registered(conn, after), timeout=30, message="the file that landed after the loops")
        assert runner.is_alive()
    messages = [record.getMessage() for record in caplog.records]
    assert f"skipped {folder / 'b.jpg'}: symbolic link loop" in messages, messages
    assert f"skipped {folder / 'x.jpg'}: symbolic link loop" in messages, messages
    assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 2
    assert not any("Traceback" in (record.exc_text or "") for record in caplog.records)


def test_files_whose_events_were_lost_in_a_burst_are_found_by_looking_at_the_folder_again(
        database: Database, conn: psycopg.Connection, tmp_path: Path, monkeypatch, caplog) -> None:
    """A burst of files beyond the kernel's queue (fs.inotify.max_queued_events, 16,384 events: 100,000 files
    copied at once lost 171 of them here) drops their events; watchdog says so once. Those files were never
    registered until the watch was started again. Here the loss is staged: the events of `lost_*` files are dropped
    and the report of the loss passed on."""
    from watchdog.events import EventsLostEvent, FileSystemEvent, FileSystemEventHandler

    import windmill.watch

    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    hearing = windmill.watch._arrivals_handler

    def losing_handler(*args, **kwargs) -> FileSystemEventHandler:
        handler = hearing(*args, **kwargs)

        class Losing(FileSystemEventHandler):
            def dispatch(self, event: FileSystemEvent) -> None:
                if os.path.basename(os.fsdecode(event.src_path)).startswith("lost_"):
                    if event.event_type == "closed":
                        handler.dispatch(EventsLostEvent(str(folder), is_directory=True))
                    return
                handler.dispatch(event)

        return Losing()

    monkeypatch.setattr(windmill.watch, "_arrivals_handler", losing_handler)
    known = folder / "known.jpg"
    known.write_bytes(b"jpeg")
    landed_long_ago(known)
    with watching(database, folder, settle_s=0.3) as (watch, runner):
        wait_until(lambda: registered(conn, known), timeout=30, message="the file already there")
        lost = [folder / f"lost_{n}.jpg" for n in range(3)]
        for path in lost:
            path.write_bytes(SAMPLE.read_bytes())
        wait_until(lambda: all(registered(conn, path) for path in lost), timeout=30,
                   message="the files whose events were lost")
        assert runner.is_alive()
    assert (watch.report.added, watch.report.already_known) == (4, 0), "a file looked at again is not counted again"
    assert any("events were lost" in record.getMessage() for record in caplog.records)


def as_a_user(args: list[str]) -> list[str]:
    """The command as a login that file permissions apply to: root reads a file of mode 000, so as root the
    command runs without the capabilities that let it (setpriv, util-linux)."""
    if os.geteuid() != 0:
        return args
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions would not apply")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *args]


def test_a_file_the_watch_cannot_read_waits_with_a_line_until_it_can(
        conn: psycopg.Connection, worker_env: dict[str, str], tmp_path: Path) -> None:
    # It was registered and queued, every service then recording `not readable (permission denied)`, and once its
    # permissions were put right (an upload tool's chmod at the end, an administrator) nothing took it again.
    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    readable, locked = folder / "readable.jpg", folder / "locked.jpg"
    for path in (readable, locked):
        path.write_bytes(SAMPLE.read_bytes())
        landed_long_ago(path)
    locked.chmod(0)
    args = [PYTHON, "-m", "windmill", "images", "watch", str(folder), "--settle", "0.3", "--submit", "nsfw2",
            "--broker", "postgres"]
    watch = subprocess.Popen(as_a_user(args), env=worker_env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        wait_until(lambda: registered(conn, readable), timeout=60, message="the readable file")
        arrived = folder / "arrived.jpg"
        arrived.write_bytes(SAMPLE.read_bytes())
        arrived.chmod(0)
        time.sleep(1.5)
        assert not registered(conn, locked) and not registered(conn, arrived)
        locked.chmod(0o644)
        arrived.chmod(0o644)
        wait_until(lambda: registered(conn, locked) and registered(conn, arrived), timeout=30,
                   message="the files once readable")
        out, err = stop(watch)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate()
    for path in (locked, arrived):
        assert f"skipped {path}: cannot be read (permission denied); it is taken once it can be" in err, err
    assert "added 3 image(s), queued 3 task(s)" in out
    assert jobs_per_image(conn) == {1: 1, 2: 1, 3: 1}


def test_a_stop_asked_for_during_the_walk_of_the_files_already_there_ends_it(
        database: Database, conn: psycopg.Connection, tmp_path: Path, monkeypatch) -> None:
    # SIGTERM during the start of a watch of a card of millions of files went on to the end of the walk: minutes,
    # while a service manager waits 90 s before it kills.
    import windmill.watch

    monkeypatch.setattr(windmill.watch, "PAGE_SIZE", 2)  # a page of two files: the walk of ten is five pages
    folder = tmp_path.resolve() / "card"
    folder.mkdir()
    for n in range(10):
        (folder / f"IMG_{n:04d}.jpg").write_bytes(b"jpeg")
        landed_long_ago(folder / f"IMG_{n:04d}.jpg")
    stopping = threading.Event()
    with database.connect() as watch_conn:
        watch = FolderWatch(watch_conn, folder, stopping, settle_s=0.3,
                            on_batch=lambda added, published: stopping.set())  # SIGTERM after the first page
        runner = threading.Thread(target=watch.run)
        runner.start()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert watch.report.added == 2, "the page under way is finished, no other begun"


def test_a_file_deleted_between_settling_and_its_registration_is_not_registered(
        database: Database, conn: psycopg.Connection, tmp_path: Path, caplog) -> None:
    # A file deleted right after landing: once it had settled, the page it was on was registered without another
    # look, and each of its services then recorded `image file not found`.
    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    kept, deleted = folder / "kept.jpg", folder / "deleted.jpg"
    for path in (kept, deleted):
        path.write_bytes(b"jpeg")
    with database.connect() as watch_conn:
        watch = FolderWatch(watch_conn, folder, threading.Event())
        deleted.unlink()  # after the tracker took both as settled, before the page is registered
        watch._register([Settled(deleted, (4, 0), True), Settled(kept, (4, 0), True)])
    assert watch.report.added == 1
    assert [row[0] for row in conn.execute("SELECT image_path FROM images")] == [str(kept)]
    assert not [record for record in caplog.records if "deleted.jpg" in record.getMessage()], "gone, not unreadable"
