"""A file written again at the path it was registered under (an upload re-sent, a camera overwriting, `cp new.jpg
a.jpg`) is new content: the image of its old content goes with everything stored for it and the new content is
registered and answered as a new image. Registration was by path, so such a file was never processed again and its
answers, boxes and consensus described a picture that was nowhere any more. A touch or a chmod is no new content."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from tests.test_pipeline import PRODUCTS, SETTINGS, expected_keys, run_group
from tests.test_streams import SAMPLE, jobs_per_image, landed_long_ago, watching
from windmill.broker import JobTableBroker, Task
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.jobs import JobQueue
from windmill.producer import Submitter
from windmill.roles.consensus import consensus_for_image
from windmill.roles.service import ServiceTaskHandler
from windmill.watch import SettleTracker
from windmill.watch_rewrites import Settled, Verdict, judge
from windmill.worker.layout import RoleSpec

OTHER = SAMPLE.parent / "coffee.jpg"  # another picture: other answers, another size
SERVICES_AND_PRODUCTS = (RoleSpec("service", "primary", concurrency=8), *PRODUCTS)


def image_at(conn: psycopg.Connection, path: Path) -> int | None:
    row = conn.execute("SELECT image_id FROM images WHERE image_path = %s", (str(path),)).fetchone()
    return row[0] if row else None


def recorded(conn: psycopg.Connection, path: Path) -> tuple[int | None, int | None]:
    return conn.execute("SELECT image_size, image_mtime_ns FROM images WHERE image_path = %s",
                        (str(path),)).fetchone()


def stored_for(conn: psycopg.Connection, image_id: int) -> dict[str, int]:
    """Every row of every table that names the image (answers, boxes, postprocessing, consensus, jobs, the ledger
    of tasks in flight, ...), by table: what a removal must leave nothing of. The counters' deltas (an answer
    stored, +1; deleted, -1; folded into the counters later) by their sum, which the removal brings to nothing."""
    tables = [row[0] for row in conn.execute(
        "SELECT table_name FROM information_schema.columns WHERE column_name = 'image_id' "
        "AND table_schema = current_schema() AND table_name IN (SELECT table_name FROM information_schema.tables "
        "WHERE table_type = 'BASE TABLE' AND table_schema = current_schema()) ORDER BY 1")]
    assert {"results", "merged_boxes", "postprocessing", "consensus", "jobs", "service_tasks_in_flight"} <= set(tables)
    counts = {table: conn.execute(f"SELECT {'coalesce(sum(change), 0)' if table.endswith('_deltas') else 'count(*)'}"
                                  f" FROM {table} WHERE image_id = %s", (image_id,)).fetchone()[0]
              for table in tables}
    return {table: count for table, count in counts.items() if count}


def quiet_for(seconds: float) -> None:
    """Long enough for a watch of settle 0.3 s to have taken whatever it would take."""
    time.sleep(seconds)


# -- what is new content (pure) ---------------------------------------------------------------------------------

PATH = Path("/up/a.jpg")


@pytest.mark.parametrize(("was", "now", "wrote", "verdict"), [
    ((100, 1), (100, 1), True, Verdict.SAME),  # size and time as recorded: the same file, whatever was heard
    ((100, 1), (100, 1), None, Verdict.SAME),  # found by a walk, unchanged
    ((100, 1), (120, 2), True, Verdict.REPLACED),  # written
    ((100, 1), (120, 1), False, Verdict.REPLACED),  # another size is other data, whatever was heard
    ((100, 1), (100, 2), True, Verdict.REPLACED),  # the same size written again (inotify heard IN_MODIFY)
    ((100, 1), (100, 2), False, Verdict.RECORD),  # a touch: the time moved and nothing was written
    ((100, 1), (100, 2), None, Verdict.REPLACED),  # while no watch ran: a touch cannot be told from a write
    (None, (100, 2), None, Verdict.RECORD),  # `images add` recorded nothing: the walk records what is there
    (None, (100, 2), False, Verdict.RECORD),
    (None, (100, 2), True, Verdict.REPLACED),  # written while watched
])
def test_what_a_registered_file_that_settled_again_holds(was, now, wrote, verdict) -> None:
    assert judge(was, Settled(PATH, now, wrote)) is verdict


def test_the_tracker_says_what_was_heard_of_each_file_it_hands_over() -> None:
    tracker = SettleTracker(settle_s=1.0)
    written, touched, walked = Path("/up/written.jpg"), Path("/up/touched.jpg"), Path("/up/walked.jpg")
    tracker.observe(written, (10, 1), now=0.0, wrote=True)
    tracker.observe(written, (10, 1), now=0.5)  # a later event of no write does not undo the write
    tracker.observe(touched, (10, 2), now=0.0)
    tracker.observe(walked, (10, 3), now=0.0, walked=True)
    assert tracker.take_settled(now=1.0) == [Settled(touched, (10, 2), False), Settled(walked, (10, 3), None),
                                             Settled(written, (10, 1), True)]
    tracker.observe(written, (10, 1), now=2.0, wrote=True)
    tracker.observe(written, None, now=2.5)  # deleted: what was heard of it goes too
    tracker.observe(written, (10, 4), now=3.0)
    assert tracker.take_settled(now=4.0) == [Settled(written, (10, 4), False)]


# -- while the watch runs ---------------------------------------------------------------------------------------


def test_content_written_again_while_watched_drops_what_was_stored_and_is_answered_anew(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog,
        tmp_path: Path, caplog) -> None:
    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    photo = folder / "photo.jpg"
    with running_farm(catalog) as (_, farm_catalog), database.connect() as lookup:
        submitter = Submitter(lookup, JobTableBroker(JobQueue(pool)), farm_catalog.select("primary"))
        with watching(database, folder, 0.3, submitter=submitter) as (watch, _):
            photo.write_bytes(SAMPLE.read_bytes())
            wait_until(lambda: jobs_per_image(conn).get(1), timeout=30, message="the photo registered and queued")
            run_group(database, pool, farm_catalog, SERVICES_AND_PRODUCTS)
            old = stored_for(conn, 1)
            assert old.get("results") == 11 and old.get("consensus") == 1 and old.get("merged_boxes") \
                and old.get("postprocessing"), old

            shutil.copyfile(OTHER, photo)  # `cp coffee.jpg photo.jpg`: written again in place
            wait_until(lambda: image_at(conn, photo) not in (None, 1), timeout=30,
                       message="the new content registered")
            new = image_at(conn, photo)
            assert new is not None
            wait_until(lambda: jobs_per_image(conn).get(new), timeout=30, message="the new content queued")
            run_group(database, pool, farm_catalog, SERVICES_AND_PRODUCTS)
    assert watch.report.replaced == 1
    assert stored_for(conn, 1) == {}, "something of the old content survived"
    assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 1
    # The new content is what was answered, and its products are those of its answers.
    assert conn.execute("SELECT count(*) FROM results WHERE image_id = %s AND status = 'success'",
                        (new,)).fetchone()[0] == 11
    size = conn.execute("SELECT jsonb_path_query_first(data, 'strict $.**.file_size') #>> '{}' FROM results "
                        "WHERE image_id = %s AND service = 'metadata'", (new,)).fetchone()
    assert size is not None and size[0] == str(OTHER.stat().st_size), size
    assert set(conn.execute("SELECT crop_key FROM merged_boxes WHERE image_id = %s", (new,)).fetchall()
               ) == {(key,) for key in expected_keys(conn, new)}
    service_types = {service.name: service.service_type for service in catalog.services}
    assert conn.execute("SELECT consensus_data FROM consensus WHERE image_id = %s", (new,)).fetchone()[0] == \
        consensus_for_image(conn, new, service_types)
    assert recorded(conn, photo) == (OTHER.stat().st_size, photo.stat().st_mtime_ns)
    assert f"{photo} was written again: image 1, its old content, is removed with what was stored for it; the " \
           f"new content is image {new}" in [record.getMessage() for record in caplog.records]


def test_an_answer_of_the_old_content_still_on_its_way_is_not_stored_on_the_new_image(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog,
        tmp_path: Path) -> None:
    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    photo = folder / "photo.jpg"
    photo.write_bytes(SAMPLE.read_bytes())
    landed_long_ago(photo)
    with running_farm(catalog, services=["metadata"]) as (_, farm_catalog):
        with watching(database, folder, 0.3):
            wait_until(lambda: image_at(conn, photo) == 1, timeout=30, message="the photo registered")
            image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images").fetchone()
            task = Task.for_image(dict(zip(("image_id", "image_filename", "image_path", "image_url"), image,
                                           strict=True)), farm_catalog["metadata"])  # a worker holds it
            shutil.copyfile(OTHER, photo)
            wait_until(lambda: image_at(conn, photo) not in (None, 1), timeout=30,
                       message="the new content registered")
        with FarmClient(farm_catalog) as client:
            handler = ServiceTaskHandler(pool, client, ImageSource(SETTINGS), farm_catalog, "w")
            outcome = handler.handle(task, final_attempt=True, first_delivery=True)
    assert outcome.status is None, "the old content's answer was stored"
    assert conn.execute("SELECT image_id, service FROM results").fetchall() == []


def test_a_touch_or_a_chmod_reprocesses_nothing_and_a_write_of_the_same_size_does(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog,
        tmp_path: Path) -> None:
    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    photo = folder / "photo.jpg"
    with database.connect() as lookup:
        submitter = Submitter(lookup, JobTableBroker(JobQueue(pool)), catalog.select("nsfw2"))
        with watching(database, folder, 0.3, submitter=submitter):
            photo.write_bytes(SAMPLE.read_bytes())
            wait_until(lambda: jobs_per_image(conn) == {1: 1}, timeout=30, message="the photo registered and queued")
            conn.execute("DELETE FROM jobs")  # as if answered: what is queued from here on is queued again
            quiet_for(0.5)
            subprocess.run(["touch", str(photo)], check=True)  # opens it for writing: IN_ATTRIB, IN_CLOSE_WRITE
            os.chmod(photo, 0o600)  # IN_ATTRIB
            quiet_for(0.5)
            later = photo.stat().st_mtime_ns + 10**9
            os.utime(photo, ns=(later, later))  # a time set without opening the file: IN_ATTRIB alone
            quiet_for(1.0)
            assert (image_at(conn, photo), jobs_per_image(conn)) == (1, {}), "a touch or a chmod reprocessed"
            assert recorded(conn, photo) == (SAMPLE.stat().st_size, later), "the touched time not recorded"
        # The touched time was recorded: a watch started again does not take the touch for new content either.
        with watching(database, folder, 0.3, submitter=submitter):
            quiet_for(1.0)
            assert (image_at(conn, photo), jobs_per_image(conn)) == (1, {1: 1}), \
                "a restart queues what was not answered, nothing else"
            conn.execute("DELETE FROM jobs")

            data = bytearray(photo.read_bytes())
            data[len(data) // 2] ^= 0xFF  # the same size, other pixels
            with photo.open("r+b") as file:
                file.write(data)
            wait_until(lambda: image_at(conn, photo) not in (None, 1), timeout=30,
                       message="the same-size write taken as new content")
            new = image_at(conn, photo)
            wait_until(lambda: jobs_per_image(conn) == {new: 1}, timeout=30, message="the new content queued")


def test_a_file_renamed_onto_a_registered_one_by_an_upload_tool_is_new_content(
        database: Database, conn: psycopg.Connection, tmp_path: Path) -> None:
    # rsync, exiftool and most upload tools write a temporary file and rename it over the old one: inotify says a
    # file was moved onto the path, and no write there.
    folder = tmp_path.resolve() / "uploads"
    folder.mkdir()
    photo = folder / "photo.jpg"
    photo.write_bytes(SAMPLE.read_bytes())
    landed_long_ago(photo)
    with watching(database, folder, 0.3) as (watch, _):
        wait_until(lambda: image_at(conn, photo) == 1, timeout=30, message="the photo registered")
        temporary = folder / ".photo.jpg.XXXXXX"  # hidden: not an image to take
        shutil.copyfile(OTHER, temporary)
        os.replace(temporary, photo)
        wait_until(lambda: image_at(conn, photo) not in (None, 1), timeout=30, message="the new content")
    assert watch.report.replaced == 1
    assert recorded(conn, photo) == (OTHER.stat().st_size, photo.stat().st_mtime_ns)


# -- while no watch ran -----------------------------------------------------------------------------------------


def test_a_file_written_again_while_no_watch_ran_is_new_content_on_start(
        database: Database, conn: psycopg.Connection, tmp_path: Path) -> None:
    folder = tmp_path.resolve() / "card"
    folder.mkdir()
    rewritten, kept, added = folder / "a.jpg", folder / "b.jpg", folder / "c.jpg"
    for path in (rewritten, kept, added):
        path.write_bytes(SAMPLE.read_bytes())
        landed_long_ago(path)
    add_paths(conn, [added])  # `images add` records no size or time
    assert recorded(conn, added) == (None, None)
    with watching(database, folder, 0.3) as (watch, _):
        wait_until(lambda: (watch.report.added, watch.report.already_known) == (2, 1), timeout=30,
                   message="the files already there")
    before = {path: image_at(conn, path) for path in (rewritten, kept, added)}

    for path in (rewritten, added):  # a card copied again, its files keeping the time of the shot
        shutil.copyfile(OTHER, path)
        landed_long_ago(path)
    # c.jpg too: what `images add` did not record, the first walk did (with nothing recorded, a walk cannot tell).
    with watching(database, folder, 0.3) as (watch, _):
        wait_until(lambda: image_at(conn, rewritten) not in (None, before[rewritten])
                   and image_at(conn, added) not in (None, before[added]), timeout=30,
                   message="both taken as new content")
    assert watch.report.replaced == 2
    assert image_at(conn, kept) == before[kept]
    assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 3
    for path in (rewritten, added):
        assert recorded(conn, path) == (OTHER.stat().st_size, path.stat().st_mtime_ns)
