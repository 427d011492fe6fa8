"""A file renamed or moved inside a watched folder is the same picture: its image keeps its id, group and answers,
and its recorded path follows the file (it was registered a second time, and processed twice)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.test_image_walk import deep_folder, random_letters
from tests.test_streams import SAMPLE, command, jobs_per_image, landed_long_ago, registered, stop, watching
from windmill.broker import Task
from windmill.catalog import Catalog
from windmill.collection import MAX_NAME_BYTES, add_paths
from windmill.db.connect import Database
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.roles.service import ServiceTaskHandler
from windmill.settings import settings_from_mapping
from windmill.simfarm.server import SimFarm
from windmill.watch_moves import Move, follow_moves


def images(conn: psycopg.Connection) -> list[tuple[int, str, str]]:
    return conn.execute("SELECT image_id, image_path, image_filename FROM images ORDER BY image_id").fetchall()


def quiet_for(seconds: float) -> None:
    """Long enough for a watch of settle 0.3 s to have taken whatever it would take."""
    time.sleep(seconds)


def test_a_file_renamed_in_a_watched_folder_keeps_its_image_and_its_path_follows(
        database: Database, conn: psycopg.Connection, tmp_path: Path) -> None:
    folder = tmp_path.resolve() / "card"
    (folder / "day1").mkdir(parents=True)
    first = folder / "IMG_0001.jpg"
    first.write_bytes(b"jpeg")
    landed_long_ago(first)
    nested = folder / "day1" / "IMG_0002.jpg"
    nested.write_bytes(b"jpeg")
    landed_long_ago(nested)
    with watching(database, folder, settle_s=0.3, recursive=True) as (watch, runner):
        wait_until(lambda: registered(conn, first) and registered(conn, nested), timeout=30,
                   message="the files already there")
        renamed = folder / "fox.jpg"
        first.rename(renamed)
        (folder / "day1").rename(folder / "day1-sorted")  # a folder renamed: each file in it moved
        wait_until(lambda: registered(conn, renamed), timeout=30, message="the renamed file's path")
        quiet_for(1.5)
        assert images(conn) == [(1, str(renamed), "fox.jpg"),
                                (2, str(folder / "day1-sorted" / "IMG_0002.jpg"), "IMG_0002.jpg")]

        # Moved out of the watched tree: where it went is not known (inotify says only that it left), so the image
        # stays as it was, as a deleted file's does.
        renamed.rename(tmp_path / "elsewhere.jpg")
        quiet_for(1.0)
        assert images(conn)[0] == (1, str(renamed), "fox.jpg")
        assert runner.is_alive()
    assert (watch.report.added, watch.report.moved) == (2, 2)


def test_a_file_renamed_to_a_path_too_long_to_index_keeps_its_image_where_it_was_with_a_warning(
        database: Database, conn: psycopg.Connection, tmp_path: Path, caplog) -> None:
    # Its new path would not fit the collection's index (windmill/collection.py MAX_NAME_BYTES): the rename failed
    # the statement that follows every move of the page.
    folder = deep_folder(tmp_path.resolve() / "card", MAX_NAME_BYTES - 200)
    first = folder / "a.jpg"
    first.write_bytes(b"jpeg")
    landed_long_ago(first)
    with watching(database, folder, settle_s=0.3) as (_, runner):
        wait_until(lambda: registered(conn, first), timeout=30, message="the file already there")
        renamed = folder / f"{random_letters(200, 11)}.jpg"
        first.rename(renamed)
        later = folder / "b.jpg"
        later.write_bytes(b"jpeg")
        wait_until(lambda: registered(conn, later), timeout=30, message="the file that landed after")
        assert runner.is_alive()
    assert images(conn)[0] == (1, str(first), "a.jpg")
    assert any(f"was renamed to {renamed}: the path is" in record.getMessage() for record in caplog.records)


def test_a_file_moved_onto_a_registered_one_keeps_its_image_and_the_replaced_one_goes(
        database: Database, conn: psycopg.Connection, tmp_path: Path, caplog) -> None:
    folder = tmp_path.resolve() / "card"
    folder.mkdir()
    kept, replaced = folder / "a.jpg", folder / "b.jpg"
    for path in (kept, replaced):
        path.write_bytes(path.name.encode())
        landed_long_ago(path)
    with watching(database, folder, settle_s=0.3) as (watch, _):
        wait_until(lambda: registered(conn, kept) and registered(conn, replaced), timeout=30,
                   message="the files already there")
        os.replace(kept, replaced)
        wait_until(lambda: len(images(conn)) == 1, timeout=30, message="the replaced image removed")
        quiet_for(1.0)
    # The picture that was b.jpg is gone for good: its answers described nothing there is any more.
    assert images(conn) == [(1, str(replaced), "b.jpg")]
    assert watch.report.moved == 1
    assert any(record.getMessage() == f"{kept} was moved onto {replaced}: image 2, the file it replaced, is removed "
               f"with what was stored for it; image 1 is now at {replaced}" for record in caplog.records), \
        [record.getMessage() for record in caplog.records]


def test_a_watch_that_queues_does_not_queue_a_renamed_file_again(
        conn: psycopg.Connection, worker_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    args = ("images", "watch", str(folder), "--settle", "0.5", "--submit", "nsfw2", "--broker", "postgres")
    with command(worker_env, *args) as watch:
        photo = folder / "photo.jpg"
        photo.write_bytes(SAMPLE.read_bytes())
        wait_until(lambda: jobs_per_image(conn) == {1: 1}, timeout=60, message="the file registered and queued")
        renamed = folder / "cat.jpg"
        photo.rename(renamed)
        wait_until(lambda: registered(conn, renamed), timeout=30, message="the path following the file")
        quiet_for(1.5)
        out, _ = stop(watch)
    assert "added 1 image(s), queued 1 task(s); 0 already known; 1 moved" in out, out
    assert jobs_per_image(conn) == {1: 1}
    assert images(conn) == [(1, str(renamed), "cat.jpg")]


def test_a_task_queued_before_its_file_was_renamed_reads_the_file_where_it_is_now(
        pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog, tmp_path: Path) -> None:
    # A task carries the path its image had when it was queued: a file renamed (and followed by the watch) while
    # its tasks waited had each of them recorded as `image file not found`.
    with SimFarm(catalog, services=["nsfw2"], port_offset=-600):  # 7174: the port range of this checkout
        shifted = catalog.with_port_offset(-600)
        photo = tmp_path.resolve() / "photo.jpg"
        photo.write_bytes(SAMPLE.read_bytes())
        add_paths(conn, [photo])
        image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images").fetchone()
        task = Task.for_image(dict(zip(("image_id", "image_filename", "image_path", "image_url"), image,
                                       strict=True)), shifted["nsfw2"])
        renamed = photo.with_name("cat.jpg")
        photo.rename(renamed)
        follow_moves(conn, [Move(photo, renamed)])
        with FarmClient(shifted) as client:
            handler = ServiceTaskHandler(pool, client, ImageSource(settings_from_mapping({})), shifted, "w")
            outcome = handler.handle(task, final_attempt=True, first_delivery=True)
    assert outcome.status == "success", conn.execute("SELECT error_message FROM results").fetchall()

    # A file gone for good is still said to be gone, by its path as the task had it.
    gone = tmp_path.resolve() / "gone.jpg"
    gone.write_bytes(SAMPLE.read_bytes())
    add_paths(conn, [gone])
    image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images WHERE image_path = %s",
                         (str(gone),)).fetchone()
    gone.unlink()
    with FarmClient(shifted) as client:
        handler = ServiceTaskHandler(pool, client, ImageSource(settings_from_mapping({})), shifted, "w")
        task = Task.for_image(dict(zip(("image_id", "image_filename", "image_path", "image_url"), image,
                                       strict=True)), shifted["nsfw2"])
        outcome = handler.handle(task, final_attempt=True, first_delivery=True)
    assert outcome.status == "error"
    assert conn.execute("SELECT error_message FROM results WHERE image_id = %s", (image[0],)).fetchone() == (
        f"image file not found: {gone}",)
