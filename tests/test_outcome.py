"""Calling a service, for every role: which failures the queue retries, which become a row, and the one shape of
that row (roles/outcome.py) in results and postprocessing alike."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.farm_fixtures import running_farm
from windmill.broker import Task
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.farm import FarmClient, ServiceCallError
from windmill.image_cache import ImageSource
from windmill.images import BadImage, ImageUnavailable
from windmill.jobs import Job, JobQueue
from windmill.roles.caption_score import CaptionScorer
from windmill.roles.merger import merge_image
from windmill.roles.outcome import Failure, call_service
from windmill.roles.postprocess import PostprocessHandler
from windmill.roles.registry import RoleContext
from windmill.roles.service import ServiceTaskHandler
from windmill.settings import settings_from_mapping

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
SETTINGS = settings_from_mapping({"WORKER_ID": "outcome-test"})


def failing(error: BaseException):
    def call() -> None:
        raise error

    return call


PASSING = [ServiceCallError("no answer within 30 s", kind="timeout", service="blip"),
           ServiceCallError("HTTP 503: busy", kind="http_5xx", service="blip", status_code=503),
           ImageUnavailable("the image answered HTTP 503")]
PERMANENT = [ServiceCallError("HTTP 400: bad request", kind="http_4xx", service="blip", status_code=400),
             BadImage("truncated JPEG")]


@pytest.mark.parametrize("error", PASSING, ids=lambda error: type(error).__name__)
def test_a_passing_failure_is_retried_until_the_final_attempt_records_it(error: BaseException) -> None:
    with pytest.raises(type(error)):
        call_service(failing(error), final_attempt=False)
    assert isinstance(call_service(failing(error), final_attempt=True), Failure)


@pytest.mark.parametrize("error", PERMANENT, ids=lambda error: type(error).__name__)
def test_a_permanent_failure_is_recorded_at_once(error: BaseException) -> None:
    assert isinstance(call_service(failing(error), final_attempt=False), Failure)


REFUSED_UPLOAD = ServiceCallError("HTTP 500: Failed to process uploaded image: cannot identify image file",
                                  kind="http_5xx", service="colors", status_code=500)


def test_a_service_that_still_cannot_decode_windmills_own_pixels_on_a_retry_is_recorded() -> None:
    """Spec §2.7: after one retry, colors' and face's 500 for an upload they cannot decode is permanent."""
    with pytest.raises(ServiceCallError):
        call_service(failing(REFUSED_UPLOAD), final_attempt=False)  # the first try: it may have been passing
    failure = call_service(failing(REFUSED_UPLOAD), final_attempt=False, retrying_own_pixels=True)
    assert isinstance(failure, Failure) and failure.kind == "http_5xx"
    with pytest.raises(ServiceCallError):  # the image is not Windmill's own: the service may be right to refuse
        call_service(failing(REFUSED_UPLOAD), final_attempt=False)
    with pytest.raises(ServiceCallError):  # another 500 stays passing on a retry
        call_service(failing(PASSING[1]), final_attempt=False, retrying_own_pixels=True)


@pytest.mark.parametrize("final_attempt", [False, True])
def test_the_database_away_is_left_to_the_queue_which_does_not_count_it(final_attempt: bool) -> None:
    with pytest.raises(psycopg.OperationalError):
        call_service(failing(psycopg.OperationalError("server closed the connection")), final_attempt=final_attempt)


@pytest.mark.parametrize(("error", "status", "kind", "error_message", "status_code"), [
    (ServiceCallError("no answer within 30 s", kind="timeout", service="blip"), "timeout", "timeout",
     "blip: no answer within 30 s", None),
    (ServiceCallError("HTTP 503: busy", kind="http_5xx", service="blip", status_code=503), "error", "http_5xx",
     "blip: HTTP 503: busy", 503),
    (BadImage("truncated JPEG"), "error", "bad_image", "truncated JPEG", None),
    (ImageUnavailable("the image answered HTTP 503"), "error", "image_unavailable", "the image answered HTTP 503",
     None),
    (RuntimeError("handler broke\ntraceback"), "error", "worker", "handler broke", None),
])
def test_every_failure_becomes_the_one_row_shape(error: BaseException, status: str, kind: str, error_message: str,
                                                 status_code: int | None) -> None:
    failure = Failure.of(error)
    assert (failure.status, failure.error_message) == (status, error_message)
    assert failure.data() == {"error": {"kind": kind, "message": error_message.removeprefix("blip: "),
                                        "status_code": status_code}}


def test_the_service_postprocess_and_caption_roles_record_their_failures_alike(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    image = dict(zip(("image_id", "image_filename", "image_path", "image_url"),
                     conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images").fetchone(),
                     strict=True))
    image_id = image["image_id"]
    for service, data in (("blip", {"predictions": [{"text": "a cat on a chair"}]}),
                          ("yolov8", {"predictions": [{"label": "cat", "emoji": "🐈", "confidence": 0.9,
                                                       "bbox": {"x": 10, "y": 10, "width": 200, "height": 150}}]})):
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, %s, %s, %s, "
                     "'success')", (image_id, service, uuid.uuid4(), Jsonb(data)))
    with pool.connection() as worker_conn:
        merge_image(worker_conn, image_id, SETTINGS.harmony, "outcome-test")
    box_id = conn.execute("SELECT merged_id FROM merged_boxes WHERE image_id = %s", (image_id,)).fetchone()[0]

    # Only blip listens: rtdetr, colors and caption_score refuse the connection.
    with running_farm(catalog, services=["blip"]) as (_, shifted), FarmClient(shifted) as farm:
        context = RoleContext(settings=SETTINGS, database=database, pool=pool, jobs=JobQueue(pool), catalog=shifted,
                              worker_id="outcome-test", farm=farm, images=ImageSource(SETTINGS))
        last_attempt = Job(0, "postprocess_colors", {"merged_box_id": box_id}, image_id, 5, 5)
        ServiceTaskHandler(pool, farm, context.images, shifted, "outcome-test").handle(
            Task.for_image(image, shifted["rtdetr"]), final_attempt=True)
        PostprocessHandler(context, farm, context.images).handle(last_attempt, "colors")
        scorer = CaptionScorer(context, farm, context.images)
        scored = scorer.score(image_id, "blip", final_attempt=True)
        assert scored is not None and scorer.store(scored) == "error"

    failed = conn.execute("SELECT service, status, error_message, data->'error' FROM results WHERE status <> 'success' "
                          "UNION ALL SELECT service, status, error_message, data->'error' FROM postprocessing "
                          "WHERE status <> 'success' ORDER BY service").fetchall()
    assert [row[0] for row in failed] == ["caption_score_blip", "colors", "rtdetr"]
    for service, status, error_message, error in failed:
        assert status == "error"
        assert set(error) == {"kind", "message", "status_code"}, service
        assert (error["kind"], error["status_code"]) == ("connect", None)
        assert error_message.endswith(error["message"])
    caption = conn.execute("SELECT data->>'caption' FROM postprocessing WHERE service = 'caption_score_blip'")
    assert caption.fetchone() == ("a cat on a chair",), "a failed caption score keeps the caption it scored"
