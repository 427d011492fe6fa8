"""The service role over real HTTP against the Animal Farm stand-in, through the job-table queues: one result
row per image × service, failures recorded with their reason after bounded retries, redeliveries harmless."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from tests.support.image_memory import generate
from windmill.broker import JobTableBroker, Task
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.jobs import JobQueue, NewJob
from windmill.producer import submit
from windmill.removal import Removal, remove_images
from windmill.roles.registry import RoleContext, build_role
from windmill.roles.service import ServiceTaskHandler
from windmill.settings import Settings, settings_from_mapping
from windmill.worker.farm_client import process_farm_client
from windmill.worker.runtime import Worker, WorkerOptions

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
SERVED = "primary"


@pytest.fixture
def farm_catalog(catalog: Catalog) -> Iterator[Catalog]:
    with running_farm(catalog) as (_, shifted):
        yield shifted


def run_service_worker(database: Database, pool: ConnectionPool, catalog: Catalog, selection: str,
                       until: callable, *, retry_base_s: float = 0.01, settings: Settings | None = None) -> None:
    """Run a service worker in this process until `until()` holds."""
    settings = settings or settings_from_mapping({"WORKER_ID": "service-test"})
    jobs = JobQueue(pool, lease=timedelta(seconds=30), retry_base_s=retry_base_s)
    with process_farm_client(settings, catalog, database) as farm:
        context = RoleContext(settings=settings, database=database, pool=pool, jobs=jobs, catalog=catalog,
                              worker_id="service-test", farm=farm, images=ImageSource(settings),
                              service=selection)
        role = build_role("service", context)
        worker = Worker(jobs, role, worker_id="service-test", listen_conninfo=database.conninfo,
                        options=WorkerOptions(concurrency=8, batch_size=32, poll_interval_s=0.1))
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            wait_until(until, timeout=60, message="the service worker to finish")
        finally:
            worker.request_stop()
            thread.join(timeout=30)


def submit_samples(conn: psycopg.Connection, pool: ConnectionPool, catalog: Catalog, selection: str,
                   database: Database) -> int:
    add_paths(conn, [SAMPLES])
    with database.connect() as reader:
        report = submit(reader, conn, JobTableBroker(JobQueue(pool)), catalog.select(selection))
    return report.published


def unfinished(conn: psycopg.Connection) -> bool:
    return not conn.execute("SELECT EXISTS (SELECT 1 FROM jobs WHERE queue LIKE 'queue\\_%%' "
                            "AND state IN ('queued', 'running', 'failed'))").fetchone()[0]


def test_every_primary_service_answers_every_sample(database: Database, pool: ConnectionPool,
                                                   conn: psycopg.Connection, farm_catalog: Catalog) -> None:
    published = submit_samples(conn, pool, farm_catalog, SERVED, database)
    images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    assert published == images * 11
    run_service_worker(database, pool, farm_catalog, SERVED, lambda: unfinished(conn))
    rows = conn.execute("SELECT service, status, count(*), min(processing_time) FROM results "
                        "GROUP BY service, status ORDER BY service").fetchall()
    assert [(service, status, count) for service, status, count, _ in rows] == [
        (service.name, "success", images) for service in sorted(farm_catalog.select(SERVED), key=lambda s: s.name)]
    assert all(fastest > 0 for *_, fastest in rows)
    # The yolov8 answer is stored under our name, the service's own name kept beside it.
    data = conn.execute("SELECT data FROM results WHERE service = 'yolov8' LIMIT 1").fetchone()[0]
    assert data["service"] == "yolov8" and data["reported_service"] == "yolo"
    # Detector answers enqueued merges, voters consensus: one of each per image; the voter answers that came while
    # others were outstanding queued no vote, at most the image's deadline job (sql/0105).
    follow_up = dict(conn.execute("SELECT split_part(dedupe_key, ':', 1), count(*) FROM jobs "
                                  "WHERE queue IN ('merge', 'consensus') GROUP BY 1").fetchall())
    assert follow_up.pop("consensus-deadline", 0) <= images
    assert follow_up == {"merge": images, "consensus": images}


def test_a_service_that_stays_down_ends_in_error_rows_once_its_outage_wait_is_over(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog) -> None:
    settings = settings_from_mapping({"WORKER_ID": "service-test", "WINDMILL_OUTAGE_WAIT_S": "1"})
    with running_farm(catalog, services=["blip"]) as (_, shifted):  # nothing listens on yolov8's port
        published = submit_samples(conn, pool, shifted, "yolov8", database)
        run_service_worker(database, pool, shifted, "yolov8", lambda: unfinished(conn), settings=settings)
    rows = conn.execute("SELECT status, error_message FROM results").fetchall()
    assert len(rows) == published
    assert all(status == "error" and message.startswith("yolov8: ") and "(down for " in message
               for status, message in rows), rows
    # The service tasks' jobs (their error rows also queued the images' votes: sql/0104): the calls waited for the
    # service, and once it had been down for the wait, took their retries.
    attempts = {row[0] for row in conn.execute("SELECT attempts FROM jobs WHERE payload ? 'task_id'")}
    assert attempts == {5}, "every task was retried to its limit, then recorded — no endless loop"


def test_a_service_failing_otherwise_ends_in_error_rows_after_bounded_retries(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog) -> None:
    with running_farm(catalog, services=["yolov8"], error_rate=1.0) as (_, shifted):  # HTTP 500 every time
        published = submit_samples(conn, pool, shifted, "yolov8", database)
        run_service_worker(database, pool, shifted, "yolov8", lambda: unfinished(conn))
    rows = conn.execute("SELECT status, error_message FROM results").fetchall()
    assert len(rows) == published
    assert all(status == "error" and "yolov8" in message for status, message in rows)
    attempts = {row[0] for row in conn.execute("SELECT attempts FROM jobs WHERE payload ? 'task_id'")}
    assert attempts == {5}, "every task was retried to its limit, then recorded — no endless loop"


def test_a_bad_image_is_recorded_once_without_retries(database: Database, pool: ConnectionPool,
                                                     conn: psycopg.Connection, farm_catalog: Catalog,
                                                     tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((SAMPLES / "chelsea.jpg").read_bytes()[:2000])
    add_paths(conn, [broken])
    with database.connect() as reader:
        submit(reader, conn, JobTableBroker(JobQueue(pool)), farm_catalog.select("blip,yolov8"))
    run_service_worker(database, pool, farm_catalog, "blip,yolov8", lambda: unfinished(conn))
    rows = conn.execute("SELECT service, status, error_message FROM results ORDER BY service").fetchall()
    assert [(service, status) for service, status, _ in rows] == [("blip", "error"), ("yolov8", "error")]
    assert all("truncated" in message or "corrupt" in message for *_, message in rows), rows
    assert {row[0] for row in conn.execute("SELECT attempts FROM jobs WHERE payload ? 'task_id'")} == {1}


def test_an_image_whose_decode_would_take_more_than_a_worker_may_hold_is_a_bad_image_row(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, farm_catalog: Catalog,
        tmp_path: Path) -> None:
    """4200 × 4200 RGBA takes 135 MiB to prepare, over a budget of 128 MiB: refused from its header, once (no
    retry: the next attempt would refuse it the same way), with the reason; the worker goes on with the others."""
    huge = tmp_path / "huge.png"
    huge.write_bytes(generate("rgba_png", 4200, 4200))
    add_paths(conn, [huge, SAMPLES / "chelsea.jpg"])
    with database.connect() as reader:
        submit(reader, conn, JobTableBroker(JobQueue(pool)), farm_catalog.select("blip"))
    settings = settings_from_mapping({"WORKER_ID": "service-test", "WINDMILL_DECODE_BUDGET_BYTES": str(128 << 20)})
    run_service_worker(database, pool, farm_catalog, "blip", lambda: unfinished(conn), settings=settings)
    rows = dict(conn.execute("SELECT i.image_filename, (r.status, r.data -> 'error' ->> 'kind', r.error_message) "
                             "FROM results r JOIN images i USING (image_id)").fetchall())
    assert rows["chelsea.jpg"][0] == "success"
    assert rows["huge.png"] == ("error", "bad_image", "image 4200×4200 RGBA PNG takes about 134.6 MiB to decode, over"
                                " the 128 MiB a worker may hold for decoding (WINDMILL_DECODE_BUDGET_BYTES)")
    assert {row[0] for row in conn.execute("SELECT attempts FROM jobs WHERE payload ? 'task_id'")} == {1}


def test_a_job_whose_payload_is_not_a_task_goes_dead_at_once_naming_the_field(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, farm_catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images").fetchone()
    task = Task.for_image(dict(zip(("image_id", "image_filename", "image_path", "image_url"), image, strict=True)),
                          farm_catalog["yolov8"])
    job_id = JobQueue(pool).enqueue(NewJob(task.queue_name, {**task.to_message(), "image_id": str(image[0])}))
    run_service_worker(database, pool, farm_catalog, "yolov8", lambda: unfinished(conn))
    state, attempts, last_error = conn.execute("SELECT state, attempts, last_error FROM jobs WHERE id = %s",
                                               (job_id,)).fetchone()
    assert (state, attempts) == ("dead", 1), "retrying a message that is not a task cannot help"
    assert "'image_id'" in last_error
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 0


def test_a_redelivered_task_writes_nothing_new(pool: ConnectionPool, conn: psycopg.Connection,
                                              farm_catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images").fetchone()
    task = Task.for_image(dict(zip(("image_id", "image_filename", "image_path", "image_url"), image, strict=True)),
                          farm_catalog["nsfw2"])
    settings = settings_from_mapping({})
    with FarmClient(farm_catalog) as client:
        handler = ServiceTaskHandler(pool, client, ImageSource(settings), farm_catalog, "w")
        first = handler.handle(task, final_attempt=True)
        again = handler.handle(task, final_attempt=True)
        other = handler.handle(replace(task, task_id="00000000-0000-0000-0000-000000000001"), final_attempt=True)
    assert first.status == "success" and again.status is None and other.status == "success"
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 2
    assert handler.images.prepared_images.loads == 1, "the image was read and validated once for all three"


def test_the_answer_of_an_image_removed_meanwhile_is_dropped_not_retried(pool: ConnectionPool,
                                                                         conn: psycopg.Connection,
                                                                         farm_catalog: Catalog) -> None:
    """`images remove` while a task is on the way: its answer has no image to belong to. Raising would retry it
    in vain (via RabbitMQ into the dead-letter queue) and fail the answer group it came with."""
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images").fetchone()
    task = Task.for_image(dict(zip(("image_id", "image_filename", "image_path", "image_url"), image, strict=True)),
                          farm_catalog["nsfw2"])
    assert remove_images(conn, Removal(ids=(image[0],))).removed == 1
    with FarmClient(farm_catalog) as client:
        handler = ServiceTaskHandler(pool, client, ImageSource(settings_from_mapping({})), farm_catalog, "w")
        outcome = handler.handle(task, final_attempt=False, first_delivery=True)
    assert outcome.status is None
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 0


def test_service_role_refuses_unknown_and_postprocessing_services(catalog: Catalog, pool: ConnectionPool,
                                                                  database: Database) -> None:
    from windmill.errors import WindmillError

    settings = settings_from_mapping({})
    for selection, message in (("yolo9", "unknown service"), ("caption_score", "caption_score takes no image task"),
                               (None, "needs --service")):
        with FarmClient(catalog) as farm, pytest.raises(WindmillError, match=message):
            build_role("service", RoleContext(settings=settings, database=database, pool=pool, jobs=JobQueue(pool),
                                              catalog=catalog, worker_id="w", farm=farm, images=ImageSource(settings),
                                              service=selection))


def test_phone_photos_in_heic_and_avif_are_sent_as_jpeg(database: Database, pool: ConnectionPool,
                                                      conn: psycopg.Connection, farm_catalog: Catalog,
                                                      tmp_path: Path) -> None:
    import pillow_heif  # test dependency: encodes HEIC; Windmill reads it with pi-heif
    from PIL import Image

    picture = Image.new("RGB", (80, 60), (30, 140, 60))
    library = tmp_path / "DCIM"
    library.mkdir()
    pillow_heif.from_pillow(picture).save(library / "IMG_0001.HEIC", quality=90)
    picture.save(library / "IMG_0002.avif", "AVIF")
    report = add_paths(conn, [library])  # a directory of a phone's library: both are taken as images
    assert report.skipped == []
    with database.connect() as reader:
        submit(reader, conn, JobTableBroker(JobQueue(pool)), farm_catalog.select("metadata"))
    run_service_worker(database, pool, farm_catalog, "metadata", lambda: unfinished(conn))
    rows = conn.execute("SELECT i.image_filename, r.status, r.data FROM results r JOIN images i USING (image_id) "
                        "ORDER BY i.image_filename").fetchall()
    assert [(name, status) for name, status, _ in rows] == [("IMG_0001.HEIC", "success"),
                                                            ("IMG_0002.avif", "success")]
    # The stand-in's metadata service reports the format of the bytes it received.
    for _, _, data in rows:
        received = data["predictions"][0]
        assert received["file"]["file_type"] == "jpeg"
        assert received["dimensions"] == {"width": 80, "height": 60}
