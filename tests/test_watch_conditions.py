"""`images watch` under the conditions of a real folder: what lands in it that is no image file to take (a
symbolic link loop, ...) is said once and skipped, and the watch goes on hearing of the files after it."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from tests.conftest import wait_until
from tests.test_streams import SAMPLE, landed_long_ago, registered, watching
from windmill.db.connect import Database


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
