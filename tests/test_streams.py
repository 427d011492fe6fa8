"""Streams (issue 13 item 8): `images watch` registers files as they land, never half-written, once each across
restarts; `submit --follow` queues images as they are registered (woken by NOTIFY), resumes without duplicates,
and leaves its position behind an image id that may still appear below the ones it saw."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, wait_until
from windmill.broker import JobTableBroker
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.follow import Follower, FollowPosition
from windmill.jobs import JobQueue
from windmill.producer import Submitter
from windmill.watch import FolderWatch, SettleTracker, settled_by_its_time

SAMPLE = Path(__file__).resolve().parent.parent / "windmill" / "samples" / "chelsea.jpg"


def jobs_per_image(conn: psycopg.Connection) -> dict[int, int]:
    return dict(conn.execute("SELECT image_id, count(*) FROM jobs GROUP BY image_id").fetchall())


def registered(conn: psycopg.Connection, path: Path) -> int:
    return conn.execute("SELECT count(*) FROM images WHERE image_path = %s", (str(path),)).fetchone()[0]


@contextmanager
def command(env: dict[str, str], *args: str) -> Iterator[subprocess.Popen[str]]:
    """`windmill-cli ARGS` as a process of its own; stopped with SIGTERM (if it still runs) on leaving."""
    process = subprocess.Popen([PYTHON, "-m", "windmill", *args], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def stop(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM, as a service manager stops it: the process ends by itself, cleanly, with one line."""
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    assert len(out.splitlines()) == 1, out
    return out, err


# -- settling ---------------------------------------------------------------------------------------------------


def taken(tracker: SettleTracker, now: float) -> list[Path]:
    return [settled.path for settled in tracker.take_settled(now)]


def test_a_file_is_taken_once_it_has_not_changed_for_the_settle_interval() -> None:
    tracker = SettleTracker(settle_s=2.0)
    growing, empty = Path("/up/growing.jpg"), Path("/up/empty.jpg")
    tracker.observe(growing, (100, 1), now=0.0)
    tracker.observe(empty, (0, 1), now=0.0)
    tracker.observe(growing, (200, 2), now=1.5)  # still being written
    assert tracker.take_settled(now=3.0) == []
    tracker.observe(growing, (200, 2), now=3.0)  # the same again: the interval runs from its last change
    assert taken(tracker, now=3.6) == [growing]
    assert tracker.take_settled(now=9.0) == [], "an empty file is never taken; a taken one is not taken again"
    tracker.observe(empty, None, now=9.0)  # deleted
    assert tracker.pending == {}


# -- the follower's position ------------------------------------------------------------------------------------


def test_an_image_committed_below_ids_already_walked_past_is_still_queued(
        database: Database, conn: psycopg.Connection, pool: ConnectionPool, catalog: Catalog) -> None:
    insert = "INSERT INTO images (image_filename, image_path) VALUES (%s, %s)"
    with database.connect() as slow, database.connect() as reader, database.connect() as lookup:
        submitter = Submitter(lookup, JobTableBroker(JobQueue(pool)), catalog.select("nsfw2"))
        follower = Follower(reader, submitter, threading.Event(), threading.Event(), page_size=1)
        position = FollowPosition()
        with slow.transaction():
            slow.execute(insert, ("late.jpg", "/stream/late.jpg"))  # draws image id 1, commits last
            conn.execute(insert, ("early.jpg", "/stream/early.jpg"))  # image id 2, visible at once
            follower.walk(position)
            follower.walk(position)
            assert jobs_per_image(conn) == {2: 1}
            assert position.done_id == 0, "the position passed an id whose transaction was still writing"
        follower.walk(position)
        follower.walk(position)
    assert jobs_per_image(conn) == {1: 1, 2: 1}
    assert (position.done_id, position.seen) == (2, set())


# -- images watch -----------------------------------------------------------------------------------------------


def write_in_parts(path: Path, conn: psycopg.Connection, parts: int = 4, pause_s: float = 0.3) -> None:
    """Write the sample in parts, each part opened and closed again (an upload in chunks), checking after each
    part but the last that the watch has not taken the file yet."""
    data = SAMPLE.read_bytes()
    size = -(-len(data) // parts)
    for n in range(parts):
        with path.open("ab" if n else "wb") as file:
            file.write(data[n * size:(n + 1) * size])
        if n < parts - 1:
            assert registered(conn, path) == 0, f"registered after {n + 1} of {parts} parts"
            time.sleep(pause_s)


@contextmanager
def watching(database: Database, folder: Path, settle_s: float, *, recursive: bool = False,
             submitter: Submitter | None = None) -> Iterator[tuple[FolderWatch, threading.Thread]]:
    """A FolderWatch of `folder` (queuing with `submitter`) running on a thread of its own, stopped on leaving."""
    stopping = threading.Event()
    with database.connect() as watch_conn:
        watch = FolderWatch(watch_conn, folder, stopping, recursive=recursive, settle_s=settle_s, submitter=submitter)
        runner = threading.Thread(target=watch.run)
        runner.start()
        try:
            yield watch, runner
        finally:
            stopping.set()
            runner.join(timeout=30)
    assert not runner.is_alive(), "the watch did not stop"


def landed_long_ago(path: Path) -> Path:
    os.utime(path, (time.time() - 7200, time.time() - 7200))  # a camera card keeps the time of the shot
    return path


def test_a_file_found_on_start_is_complete_once_unwritten_for_the_settle_interval() -> None:
    now = 10**18
    assert settled_by_its_time((100, now - 3 * 10**9), now, settle_s=2.0)
    assert not settled_by_its_time((100, now - 10**9), now, settle_s=2.0), "written a second ago"
    assert not settled_by_its_time((0, now - 3 * 10**9), now, settle_s=2.0), "empty"
    assert not settled_by_its_time((100, now + 3 * 10**9), now, settle_s=0.0), "dated ahead of this clock"


def test_files_long_complete_are_taken_on_start_without_waiting_and_one_being_written_is_not(
        database: Database, conn: psycopg.Connection, tmp_path: Path) -> None:
    """A folder of millions must not wait to be watched file by file: files unwritten for the settle interval are
    registered by the walk itself (here the interval is an hour, so only the walk can have taken them)."""
    folder = tmp_path.resolve() / "card"
    folder.mkdir()
    old = [folder / f"IMG_{n:04d}.jpg" for n in range(3)]
    for path in old:
        path.write_bytes(b"jpeg")
        landed_long_ago(path)
    being_written = folder / "IMG_9999.jpg"
    being_written.write_bytes(b"jp")
    with watching(database, folder, settle_s=3600) as (watch, _):
        wait_until(lambda: all(registered(conn, path) for path in old), timeout=30,
                   message="the files already complete")
        time.sleep(0.5)
        assert not registered(conn, being_written)
    assert watch.report.added == 3


def test_watch_registers_and_queues_each_file_once_complete_across_restarts(
        conn: psycopg.Connection, worker_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path.resolve() / "uploads"
    (folder / "day2").mkdir(parents=True)
    before = folder / "before.jpg"
    before.write_bytes(SAMPLE.read_bytes())  # landed while no watch ran
    args = ("images", "watch", str(folder), "--recursive", "--settle", "2", "--submit", "nsfw2",
            "--broker", "postgres")
    with command(worker_env, *args) as watch:
        wait_until(lambda: registered(conn, before), timeout=60, message="the file already there")
        slow, nested = folder / "slow.jpg", folder / "day2" / "nested.JPG"
        write_in_parts(slow, conn)
        write_in_parts(nested, conn)
        (folder / "notes.txt").write_text("not an image")
        wait_until(lambda: registered(conn, slow) and registered(conn, nested), timeout=30,
                   message="the files written in parts")
        out, _ = stop(watch)
    assert "added 3 image(s), queued 3 task(s)" in out
    assert Path(conn.execute("SELECT image_path FROM images WHERE image_filename = 'slow.jpg'").fetchone()[0]
                ).read_bytes() == SAMPLE.read_bytes()

    while_down = folder / "while_down.png"
    while_down.write_bytes(SAMPLE.read_bytes())
    with command(worker_env, *args, "--group", "day3") as watch:
        wait_until(lambda: registered(conn, while_down), timeout=60, message="the file that landed while down")
        out, _ = stop(watch)
    # The known files stay in their group (none): the summary says so, as `images add --group` does.
    assert ("added 1 image(s), queued 1 task(s); 3 already known (3 of them in another group or none, where they "
            "stay: an image belongs to one group)") in out
    assert conn.execute("SELECT image_group, count(*) FROM images GROUP BY 1 ORDER BY 1").fetchall() == [
        ("day3", 1), (None, 3)]
    assert conn.execute("SELECT count(*), count(DISTINCT image_path) FROM images").fetchone() == (4, 4)
    assert sorted(jobs_per_image(conn).values()) == [1, 1, 1, 1]


# -- submit --follow --------------------------------------------------------------------------------------------


def test_follow_queues_images_registered_after_it_started_and_resumes_without_duplicates(
        conn: psycopg.Connection, worker_env: dict[str, str]) -> None:
    def register(*names: str) -> None:
        for name in names:
            conn.execute("INSERT INTO images (image_filename, image_path) VALUES (%s, %s)",
                         (name, f"/stream/{name}"))

    register("first.jpg")
    # A poll interval far beyond the waits below: only the registration's notification can wake it in time.
    follow = ("submit", "--follow", "--services", "nsfw2", "--broker", "postgres", "--poll-interval", "600")
    with command(worker_env, *follow) as follower:
        wait_until(lambda: jobs_per_image(conn) == {1: 1}, timeout=60, message="the image already there")
        register("second.jpg", "third.jpg")
        wait_until(lambda: jobs_per_image(conn) == {1: 1, 2: 1, 3: 1}, timeout=30,
                   message="the images registered after the follower started")
        out, err = stop(follower)
    assert "Submitted 3 task(s) for 3 image(s)" in out
    # A line per walk that queued something; the position it names lags a walk behind (it once said "every image
    # up to id 0 was submitted" right after queueing the first image).
    assert "1 task(s) queued for 1 image(s) so far; a restart resumes after image " in err, err
    last_done = int(out.rsplit("Last image id done: ", 1)[1].rstrip(".\n"))
    assert 1 <= last_done <= 3

    assert conn.execute("SELECT after_image_id FROM follow_positions").fetchone() == (last_done,)

    register("fourth.jpg")
    with command(worker_env, *follow) as follower:  # no --after-id: where the last follow stood
        wait_until(lambda: 4 in jobs_per_image(conn), timeout=60, message="the image registered while it was down")
        out, _ = stop(follower)
    assert f"Submitted 1 task(s) for {4 - last_done} image(s)" in out
    assert jobs_per_image(conn) == {1: 1, 2: 1, 3: 1, 4: 1}

    conn.execute("UPDATE follow_positions SET after_image_id = 0")
    with command(worker_env, *follow, "--after-id", "0") as follower:  # asked to walk everything again
        wait_until(lambda: conn.execute("SELECT after_image_id FROM follow_positions").fetchone() == (4,),
                   timeout=60, message="the walk from the start")
        out, _ = stop(follower)
    assert "Submitted 0 task(s) for 4 image(s)" in out and "4 already in flight" in out
    assert jobs_per_image(conn) == {1: 1, 2: 1, 3: 1, 4: 1}


def test_a_watched_name_that_is_not_utf8_is_skipped_with_a_warning_and_the_watch_goes_on(
        database: Database, conn: psycopg.Connection, tmp_path: Path, caplog) -> None:
    folder = tmp_path.resolve() / "card"
    folder.mkdir()
    raw = os.fsencode(folder)

    def land(name: bytes) -> Path:
        path = Path(os.fsdecode(raw + b"/" + name))
        path.write_bytes(b"jpeg")
        return path

    landed_long_ago(land(b"caf\xe9_before.jpg"))
    before = landed_long_ago(land(b"before.jpg"))
    with watching(database, folder, settle_s=0.3) as (_, runner):
        wait_until(lambda: registered(conn, before), timeout=30, message="the file already there")
        land(b"caf\xe9_after.jpg")
        after = land(b"after.jpg")
        wait_until(lambda: registered(conn, after), timeout=30, message="the file that arrived")
        assert runner.is_alive()
    skipped = [record.getMessage() for record in caplog.records if "not valid UTF-8" in record.getMessage()]
    assert any("caf\\xe9_before.jpg" in message for message in skipped)
    assert any("caf\\xe9_after.jpg" in message for message in skipped)
    assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 2


def test_a_file_landing_with_a_path_too_long_to_index_is_skipped_with_a_warning_and_the_watch_goes_on(
        database: Database, conn: psycopg.Connection, tmp_path: Path, caplog) -> None:
    from tests.test_image_walk import deep_folder, random_letters
    from windmill.collection import MAX_NAME_BYTES

    folder = deep_folder(tmp_path.resolve() / "card", MAX_NAME_BYTES - 200)
    with watching(database, folder, settle_s=0.3) as (_, runner):
        far = folder / f"{random_letters(200, 5)}.jpg"
        far.write_bytes(b"jpeg")
        near = folder / "near.jpg"
        near.write_bytes(b"jpeg")
        wait_until(lambda: registered(conn, near), timeout=30, message="the file that fits")
        wait_until(lambda: any("bytes long, over the 2,600" in record.getMessage() for record in caplog.records),
                   timeout=30, message="the warning for the file too long to index")
        assert runner.is_alive()
    assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 1


def test_a_dangling_link_landing_in_a_watched_folder_is_skipped_with_a_line(
        database: Database, conn: psycopg.Connection, tmp_path: Path, caplog) -> None:
    # `images add` names such a link; a watch dropped it without a word (resolved, it was a file not there).
    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    (folder / "before.jpg").write_bytes(b"jpeg")
    before = landed_long_ago(folder / "before.jpg")
    with watching(database, folder, settle_s=0.3) as (_, runner):
        wait_until(lambda: registered(conn, before), timeout=30, message="the watch to have looked at the folder")
        (folder / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
        after = folder / "after.jpg"
        after.write_bytes(b"jpeg")
        wait_until(lambda: registered(conn, after), timeout=30, message="the file that arrived after the link")
        assert runner.is_alive()
    assert any(record.getMessage() == f"skipped {folder / 'broken.jpg'}: dangling symbolic link"
               for record in caplog.records), [record.getMessage() for record in caplog.records]


def test_follow_and_watch_outlive_their_database_sessions_being_killed(
        conn: psycopg.Connection, worker_env: dict[str, str], tmp_path: Path) -> None:
    # A PostgreSQL restart, a failover or an admin's pg_terminate_backend ended both streams with "PostgreSQL
    # refused `submit`": the workers came back, the stream did not.
    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    follow = ("submit", "--follow", "--services", "nsfw2", "--broker", "postgres", "--poll-interval", "1")
    watch = ("images", "watch", str(folder), "--settle", "0.5")
    with command(worker_env, *follow) as follower, command(worker_env, *watch) as watcher:
        first = folder / "first.jpg"
        first.write_bytes(SAMPLE.read_bytes())
        wait_until(lambda: registered(conn, first) and jobs_per_image(conn), timeout=60,
                   message="the first file registered and queued")
        killed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = "
                              "current_database() AND pid <> pg_backend_pid() AND application_name IN "
                              "('windmill-submit', 'windmill-watch')").fetchone()[0]
        assert killed >= 2, "the streams' sessions were there to kill"
        second = folder / "second.jpg"
        second.write_bytes(SAMPLE.read_bytes())
        wait_until(lambda: registered(conn, second) and len(jobs_per_image(conn)) == 2, timeout=60,
                   message="the file landed after the kill registered and queued",
                   interval=0.2)
        assert follower.poll() is None and watcher.poll() is None, "a stream ended"
        _, follow_err = stop(follower)
        _, watch_err = stop(watcher)
    assert "lost the database" in follow_err + watch_err
    assert sorted(jobs_per_image(conn).values()) == [1, 1]


def test_a_watched_folder_that_goes_away_ends_the_watch_with_one_sentence(
        conn: psycopg.Connection, worker_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path.resolve() / "card"
    folder.mkdir()
    with command(worker_env, "images", "watch", str(folder), "--settle", "0.5") as watcher:
        photo = folder / "photo.jpg"
        photo.write_bytes(SAMPLE.read_bytes())
        wait_until(lambda: registered(conn, photo), timeout=60, message="the watch to take a file")
        shutil.rmtree(folder)  # the card taken out; one made again under its name would not be watched
        _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (f"Error: the watched folder {folder} is gone (deleted, renamed or "
                                            "unmounted) after 1 image(s) added; start the watch again once it is "
                                            "back")


def test_a_file_its_writer_holds_open_through_pauses_longer_than_the_settle_interval_waits_for_its_close(
        database: Database, conn: psycopg.Connection, tmp_path: Path) -> None:
    """An upload over a slow link stalls for longer than the settle interval, its file still open: it was taken a
    quarter written. inotify says when a writer closes a file; one still open waits for it."""
    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    data = SAMPLE.read_bytes()
    before = folder / "before.jpg"
    before.write_bytes(data)
    landed_long_ago(before)
    with watching(database, folder, settle_s=0.3) as (watch, runner):
        # Once the files already there are taken, the watch hears of every write (a file already being written when
        # it started is judged by the settle interval alone).
        wait_until(lambda: registered(conn, before), timeout=30, message="the file already there")
        slow = folder / "slow.jpg"
        with slow.open("wb") as upload:
            for n in range(4):
                upload.write(data[n * len(data) // 4:(n + 1) * len(data) // 4])
                upload.flush()
                time.sleep(1.0)  # stalled, more than three settle intervals
                assert not registered(conn, slow), f"taken with {n + 1} of 4 parts written, its writer still there"
        wait_until(lambda: registered(conn, slow), timeout=30, message="the file once its writer closed it")
        assert runner.is_alive()
    assert watch.report.added == 2


def test_a_file_held_open_is_waited_for_only_so_long() -> None:
    """A writer that never closes its file, or a close the watch did not hear of (events lost), must not keep it
    from being taken for ever."""
    tracker = SettleTracker(settle_s=2.0, open_wait_s=60.0)
    held, closed = Path("/up/held.jpg"), Path("/up/closed.jpg")
    tracker.observe(held, (100, 1), now=0.0, writer=True)
    tracker.observe(closed, (100, 1), now=0.0, writer=True)
    tracker.observe(closed, (100, 1), now=1.0, writer=False)  # closed after its last write: settles from that write
    assert taken(tracker, now=2.0) == [closed]
    assert tracker.take_settled(now=59.0) == [], "unchanged, but its writer still holds it"
    assert taken(tracker, now=60.0) == [held]
    assert tracker.writing == set()
