"""A collection the way the pipeline leaves it, for the tests of what reads it out (export, the web dashboard): the
bundled photographs through every primary service, merged, postprocessed, scored and voted, plus the cases a
reader must not trip on (an image known only by a URL with one failed answer; a success followed by a failure)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import _WRITABLE_TABLES
from tests.farm_fixtures import running_farm
from tests.test_pipeline import PRODUCTS, run_group
from windmill.broker import JobTableBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.worker.group import RoleSpec

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
SAMPLE_GROUP = "samples"
URL_GROUP = "elsewhere"
URL_IMAGE = "https://images.example.invalid/gone.jpg"


@contextmanager
def processed_collection(database_url: str, catalog: Catalog) -> Iterator[Database]:
    """The test database holding the processed samples (group `samples`) and the URL image (group `elsewhere`)."""
    database = Database(database_url, application_name="windmill-tests")
    with database.connect() as conn:
        conn.execute(f"TRUNCATE {_WRITABLE_TABLES} RESTART IDENTITY CASCADE")
        add_paths(conn, [SAMPLES], group=SAMPLE_GROUP)
        with running_farm(catalog) as (_, shifted), database.pool(max_size=16, name="collection") as pool:
            with database.connect() as reader:
                submit(reader, conn, JobTableBroker(JobQueue(pool)), shifted.select("primary"))
            run_group(database, pool, shifted, (RoleSpec("service", "primary", concurrency=8), *PRODUCTS))
            # A detector's later failure does not hide the answer the boxes were computed from.
            conn.execute("INSERT INTO results (image_id, service, task_id, data, status, error_message) "
                         "VALUES (1, 'yolov8', %s, '{}', 'error', 'yolov8: HTTP 500 after a success')",
                         (uuid.uuid4(),))
            image_id = conn.execute("INSERT INTO images (image_filename, image_url, image_group) VALUES "
                                    "('gone.jpg', %s, %s) RETURNING image_id", (URL_IMAGE, URL_GROUP)).fetchone()[0]
            conn.execute("INSERT INTO results (image_id, service, task_id, data, status, error_message) "
                         "VALUES (%s, 'blip', %s, '{}', 'error', 'blip: the image answered HTTP 404')",
                         (image_id, uuid.uuid4()))
            # The jobs those rows queued are left alone: nothing here runs them.
    yield database
