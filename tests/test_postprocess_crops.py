"""The postprocess worker: a job per image and service (sql/0115) sends the image's boxes still to see the service,
one after the other, and cuts them from one decode: the first box cut has the image's other boxes with
postprocessing still to come cut with it, for colors, which asks for them long after face and pose."""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.db.queries import query
from windmill.farm import FarmClient, ServiceAnswer, ServiceCallError
from windmill.image_cache import ImageSource
from windmill.images import PreparedImage
from windmill.jobs import Job, JobQueue
from windmill.roles.merger import merge_image
from windmill.roles.postprocess import PostprocessHandler
from windmill.roles.registry import RoleContext
from windmill.settings import settings_from_mapping

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
SETTINGS = settings_from_mapping({"WORKER_ID": "crops-test"})
PERSON = {"x": 100, "y": 40, "width": 150, "height": 300}
CAT = {"x": 300, "y": 200, "width": 120, "height": 90}


def boxes_to_crop(conn: psycopg.Connection, image_id: int) -> list[dict[str, int]]:
    return sorted((row[0] for row in conn.execute(query("image_boxes_to_crop"), {"image_id": image_id})),
                  key=lambda bbox: bbox["x"])


def merged_image(conn: psycopg.Connection, pool: ConnectionPool, first: tuple[str, str]) -> int:
    """coffee.jpg with two merged boxes, apart: `first` (label, emoji) at PERSON and a cat; its id."""
    add_paths(conn, [SAMPLES / "coffee.jpg"])
    image_id = conn.execute("SELECT image_id FROM images").fetchone()[0]
    detections = [{"label": first[0], "emoji": first[1], "confidence": 0.95, "bbox": PERSON},
                  {"label": "cat", "emoji": "🐈", "confidence": 0.9, "bbox": CAT}]
    conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, 'yolov8', %s, %s, "
                 "'success')", (image_id, uuid.uuid4(), Jsonb({"predictions": detections})))
    with pool.connection() as worker_conn:
        merge_image(worker_conn, image_id, SETTINGS.harmony, "crops-test")
    return image_id


def test_a_person_box_cut_for_face_has_the_images_other_boxes_cut_with_it(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog) -> None:
    image_id = merged_image(conn, pool, ("person", "🧑"))
    jobs = {(queue, dedupe_key, tuple(payload.items())) for queue, dedupe_key, payload in conn.execute(
        "SELECT queue, dedupe_key, payload FROM jobs WHERE queue LIKE 'postprocess%%'")}
    person_id, cat_id = (conn.execute("SELECT merged_id FROM merged_boxes WHERE merged_data->>'emoji' = %s",
                                      (emoji,)).fetchone()[0] for emoji in ("🧑", "🐈"))
    assert jobs == {(f"postprocess_{service}", f"{service}:image:{image_id}", (("image_id", image_id),))
                    for service in ("colors", "face", "pose")}, "one job per image and service"
    merged_bboxes = boxes_to_crop(conn, image_id)
    assert len(merged_bboxes) == 2, "both boxes have postprocessing to come"

    with running_farm(catalog, services=["colors", "face"]) as (_, shifted), FarmClient(shifted) as farm:
        images = ImageSource(SETTINGS)
        context = RoleContext(settings=SETTINGS, database=database, pool=pool, jobs=JobQueue(pool), catalog=shifted,
                              worker_id="crops-test", farm=farm, images=images)
        handler = PostprocessHandler(context, farm, images)
        assert handler.handle(Job(1, "postprocess_face", {"image_id": image_id}, image_id, 1, 5), "face")
        assert (images.decoded_images.loads, images.crops.loads) == (1, 2), "the cat was cut with the person"
        # A job queued per box by an earlier release does its one box: the cat, not the person.
        assert handler.handle(Job(2, "postprocess_colors", {"merged_box_id": cat_id, "image_id": image_id},
                                  image_id, 1, 5), "colors") == ["success"]
        assert (images.decoded_images.loads, images.crops.loads, images.crops.hits) == (1, 2, 1)
        # The cat has all its postprocessing (colors): only the person's boxes are still to be cut.
        assert boxes_to_crop(conn, image_id) == [bbox for bbox in merged_bboxes if bbox["x"] < 200]
        # The image's colors job does the box still without colors, and a second run finds nothing left.
        assert len(handler.handle(Job(3, "postprocess_colors", {"image_id": image_id}, image_id, 1, 5), "colors")) == 1
        assert handler.handle(Job(4, "postprocess_colors", {"image_id": image_id}, image_id, 1, 5), "colors") == []
    stored = conn.execute("SELECT merged_box_id, service FROM postprocessing ORDER BY service, merged_box_id")
    assert stored.fetchall() == sorted([(cat_id, "colors"), (person_id, "colors"), (person_id, "face")],
                                       key=lambda row: (row[1], row[0]))


def stub_handler(database: Database, pool: ConnectionPool, farm: object) -> PostprocessHandler:
    """A postprocess handler whose service calls go to `farm` (anything with FarmClient's `analyze`)."""
    images = ImageSource(SETTINGS)
    context = RoleContext(settings=SETTINGS, database=database, pool=pool, jobs=JobQueue(pool), catalog=None,
                          worker_id="crops-test", farm=farm, images=images)  # type: ignore[arg-type]
    return PostprocessHandler(context, farm, images)  # type: ignore[arg-type]


class FlakyColors:
    """A colors service whose second call answers HTTP 503 once: the farm client's outcome, without the HTTP."""

    def __init__(self) -> None:
        self.calls = 0

    def analyze(self, service: str, image: object, **_options: object) -> ServiceAnswer:
        self.calls += 1
        if self.calls == 2:
            raise ServiceCallError("HTTP 503: busy", kind="http_5xx", service=service, status_code=503)
        return ServiceAnswer(service, {"predictions": [{"color": "red"}]}, 0.01, 200)


def test_a_passing_failure_keeps_the_boxes_before_it_and_the_retry_starts_at_its_box(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection) -> None:
    image_id = merged_image(conn, pool, ("dog", "🐕"))
    first, second = (row[0] for row in conn.execute("SELECT merged_id FROM merged_boxes ORDER BY merged_id"))
    farm = FlakyColors()
    handler = stub_handler(database, pool, farm)
    colors = "SELECT merged_box_id FROM postprocessing WHERE service = 'colors' ORDER BY merged_box_id"
    with pytest.raises(ServiceCallError):
        handler.handle(Job(1, "postprocess_colors", {"image_id": image_id}, image_id, 1, 5), "colors")
    assert conn.execute(colors).fetchall() == [(first,)], "the box before the failure keeps its answer"
    assert handler.handle(Job(1, "postprocess_colors", {"image_id": image_id}, image_id, 2, 5), "colors") == [
        "success"]
    assert conn.execute(colors).fetchall() == [(first,), (second,)]
    assert farm.calls == 3, "the retry sent only the box that failed"


class UndecodingColors:
    """colors answering every crop as the real one answers an upload it cannot decode (spec §2.7)."""

    def __init__(self) -> None:
        self.calls = 0

    def analyze(self, service: str, image: object, **_options: object) -> ServiceAnswer:
        self.calls += 1
        raise ServiceCallError("HTTP 500: Failed to process uploaded image: cannot identify image file",
                               kind="http_5xx", service=service, status_code=500)


def test_a_crop_colors_cannot_decode_is_recorded_after_one_retry_not_the_whole_budget(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection) -> None:
    image_id = merged_image(conn, pool, ("dog", "🐕"))
    handler = stub_handler(database, pool, UndecodingColors())
    with pytest.raises(ServiceCallError):
        handler.handle(Job(1, "postprocess_colors", {"image_id": image_id}, image_id, 1, 5), "colors")
    assert handler.handle(Job(1, "postprocess_colors", {"image_id": image_id}, image_id, 2, 5), "colors") == [
        "error", "error"]
    assert conn.execute("SELECT DISTINCT error_message FROM postprocessing").fetchall() == [
        ("colors: HTTP 500: Failed to process uploaded image: cannot identify image file",)]


class BrokenOnFirstBox:
    """A colors call that fails unexpectedly (a bug, not the service) for the image's first box only."""

    def __init__(self, first_box_width: int) -> None:
        self.first_box_width = first_box_width

    def analyze(self, service: str, image: PreparedImage, **_options: object) -> ServiceAnswer:
        if image.width == self.first_box_width:
            raise RuntimeError("cannot read this crop\nTraceback ...")
        return ServiceAnswer(service, {"predictions": [{"color": "red"}]}, 0.01, 200)


def test_a_box_that_fails_otherwise_holds_up_no_other_box_and_is_recorded_on_the_last_attempt(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection) -> None:
    image_id = merged_image(conn, pool, ("dog", "🐕"))
    first, second = (row[0] for row in conn.execute("SELECT merged_id FROM merged_boxes ORDER BY merged_id"))
    first_x = conn.execute("SELECT (merged_data->'merged_bbox'->>'x')::numeric FROM merged_boxes WHERE merged_id = %s",
                           (first,)).fetchone()[0]
    farm = BrokenOnFirstBox(PERSON["width"] if round(first_x) == PERSON["x"] else CAT["width"])
    handler = stub_handler(database, pool, farm)
    rows = "SELECT merged_box_id, status, error_message, data->'error'->>'kind' FROM postprocessing ORDER BY 1"
    with pytest.raises(RuntimeError):
        handler.handle(Job(1, "postprocess_colors", {"image_id": image_id}, image_id, 1, 5), "colors")
    assert conn.execute(rows).fetchall() == [(second, "success", None, None)], "the other box went on"
    assert handler.handle(Job(1, "postprocess_colors", {"image_id": image_id}, image_id, 5, 5), "colors") == [
        "error"]
    assert conn.execute(rows).fetchall() == [(first, "error", "cannot read this crop", "worker"),
                                             (second, "success", None, None)]


class Colors:
    """A colors service that answers every crop; `during_call(n)` runs inside the n-th call (1-based)."""

    def __init__(self, during_call: dict[int, object] | None = None) -> None:
        self.calls = 0
        self.during_call = during_call or {}

    def analyze(self, service: str, image: object, **_options: object) -> ServiceAnswer:
        self.calls += 1
        action = self.during_call.get(self.calls)
        if callable(action):
            action()
        return ServiceAnswer(service, {"predictions": [{"color": "red"}]}, 0.01, 200)


def test_a_jobs_rows_are_stored_together_in_one_transaction(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection) -> None:
    image_id = merged_image(conn, pool, ("dog", "🐕"))
    handler = stub_handler(database, pool, Colors())
    assert handler.handle(Job(1, "postprocess_colors", {"image_id": image_id}, image_id, 1, 5), "colors") == [
        "success", "success"]
    rows, transactions = conn.execute("SELECT count(*), count(DISTINCT xmin::text) FROM postprocessing "
                                      "WHERE service = 'colors'").fetchone()
    assert (rows, transactions) == (2, 1), "the image's two boxes: one commit"


def test_a_box_replaced_while_its_crop_was_analysed_drops_its_answer_and_the_others_are_stored(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection) -> None:
    image_id = merged_image(conn, pool, ("dog", "🐕"))
    first, second = (row[0] for row in conn.execute("SELECT merged_id FROM merged_boxes ORDER BY merged_id"))
    # A merge replaces the first box while the second is being analysed: the first's answer is in hand.
    farm = Colors({2: lambda: conn.execute("DELETE FROM merged_boxes WHERE merged_id = %s", (first,))})
    handler = stub_handler(database, pool, farm)
    assert handler.handle(Job(1, "postprocess_colors", {"image_id": image_id}, image_id, 1, 5), "colors") == [
        "success"]
    assert conn.execute("SELECT merged_box_id FROM postprocessing").fetchall() == [(second,)]


def test_a_box_deleted_by_a_merge_committing_during_the_store_drops_only_its_row(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection) -> None:
    """The statement's snapshot still sees the box; its foreign-key check waits for the merge, then finds the box
    gone: the rows are written one at a time, that one dropped."""
    image_id = merged_image(conn, pool, ("dog", "🐕"))
    first, second = (row[0] for row in conn.execute("SELECT merged_id FROM merged_boxes ORDER BY merged_id"))
    merge = database.connect()
    merge.autocommit = False
    stored: list[list[str]] = []
    try:
        merge.execute("DELETE FROM merged_boxes WHERE merged_id = %s", (first,))
        handler = stub_handler(database, pool, Colors())
        writer = threading.Thread(target=lambda: stored.append(handler.handle(
            Job(1, "postprocess_colors", {"image_id": image_id}, image_id, 1, 5), "colors")))
        writer.start()
        wait_until(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND query LIKE 'INSERT INTO postprocessing%%'").fetchone()[0],
                   message="the store waiting for the merge's deletion")
        merge.commit()
        writer.join(timeout=30)
    finally:
        merge.close()
    assert stored == [["success"]]
    assert conn.execute("SELECT merged_box_id FROM postprocessing").fetchall() == [(second,)]


class _FaceBeyondTheCrop(http.server.BaseHTTPRequestHandler):
    """A face service that finds a face the crop cut through: its box starts 20 px left of the crop and 10 px above
    it, with an eye out there too (crop pixels; spec §3.11's answer)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"service": "face", "status": "success", "metadata": {"processing_time": 0.01},
                           "predictions": [{"label": "face", "emoji": "🙂", "confidence": 0.9,
                                            "bbox": [-20, -10, 60, 60], "keypoints": {"right_eye": [-5, -1]}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body.encode())))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_args: object) -> None:
        pass


def test_a_face_the_crop_cut_through_is_stored_whole_in_image_coordinates(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog) -> None:
    # The box was clamped to the crop before it was moved into the image: part of the face was lost, and its eye
    # lay outside the box stored.
    image_id = merged_image(conn, pool, ("person", "🧑"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FaceBeyondTheCrop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        faced = Catalog(tuple(replace(service, host="127.0.0.1", port=server.server_address[1])
                              if service.name == "face" else service for service in catalog.services))
        with FarmClient(faced) as farm:
            images = ImageSource(SETTINGS)
            context = RoleContext(settings=SETTINGS, database=database, pool=pool, jobs=JobQueue(pool),
                                  catalog=faced, worker_id="crops-test", farm=farm, images=images)
            assert PostprocessHandler(context, farm, images).handle(
                Job(1, "postprocess_face", {"image_id": image_id}, image_id, 1, 5), "face") == ["success"]
    finally:
        server.shutdown()
        server.server_close()
    face = conn.execute("SELECT data FROM postprocessing WHERE service = 'face'").fetchone()[0]["predictions"][0]
    left, top = PERSON["x"], PERSON["y"]  # the crop's corner in the image (coffee.jpg is 400 × 400 and more)
    assert face["bbox"] == {"x": left - 20, "y": top - 10, "width": 60, "height": 60}
    assert face["keypoints"]["right_eye"] == [left - 5, top - 1]
