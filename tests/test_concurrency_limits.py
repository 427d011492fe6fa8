"""Per-service concurrency limits (catalog `max_concurrency`): real worker processes against the stand-in, which
counts how many requests of each service it holds at once. Pose never receives two requests at once from a
postprocess worker with 8 threads; the same run without the limit does send it several (the control)."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, wait_until
from tests.farm_fixtures import running_farm
from windmill.broker import JobTableBroker
from windmill.catalog import Catalog, bundled_catalog_path, load_catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.farm import FarmClient
from windmill.farm.limits import ConcurrencyLimits
from windmill.images import prepare_image
from windmill.jobs import JobQueue, NewJob
from windmill.producer import submit
from windmill.settings import settings_from_mapping
from windmill.simfarm.contract import PROFILES
from windmill.simfarm.latency import parse_profile
from windmill.simfarm.server import SAMPLES_DIR
from windmill.worker.group import RoleSpec, WorkerGroup, pipeline_idle
from windmill.worker.runtime import WorkerOptions

PERSON = "🧑"
BOXES = 24


def slow(services: dict[str, float]):
    """Each service takes this many ms per request, with no capacity limit: the stand-in never serialises, so what
    it holds at once is what the client sends at once."""
    return parse_profile({"services": {name: {"mean_ms": ms} for name, ms in services.items()}}, name="slow",
                         source="test", known_services=PROFILES)


def queue_person_boxes(conn: psycopg.Connection, pool: ConnectionPool, service: str = "pose") -> None:
    """BOXES person boxes on the astronaut photograph, each with its postprocessing job for the service."""
    add_paths(conn, [SAMPLES_DIR / "astronaut.jpg"])
    image_id = conn.execute("SELECT image_id FROM images WHERE image_filename = 'astronaut.jpg'").fetchone()[0]
    jobs = []
    for n in range(BOXES):
        bbox = {"x": 8 * n, "y": 40 + 4 * n, "width": 120, "height": 200}
        box = conn.execute(
            "INSERT INTO merged_boxes (image_id, source_result_ids, merged_data, crop_key) VALUES (%s, '{1}', %s, %s)"
            " RETURNING merged_id",
            (image_id, Jsonb({"emoji": PERSON, "labels": ["person"], "merged_bbox": bbox}),
             f"{PERSON}:{bbox['x']},{bbox['y']},120,200")).fetchone()[0]
        jobs.append(NewJob(f"postprocess_{service}", {"merged_box_id": box, "image_id": image_id}, image_id,
                           f"{service}:{box}"))
    JobQueue(pool).enqueue_many(jobs)


def catalog_file(folder: Path, *, pose_limit: bool) -> Path:
    document = json.loads(bundled_catalog_path().read_text())
    if not pose_limit:
        del document["services"]["pose"]["max_concurrency"]
    path = folder / "service_config.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("pose_limit", [True, False], ids=["catalog-limit", "control-without-limit"])
def test_pose_never_gets_two_requests_at_once_from_a_postprocess_worker_with_8_threads(
        conn: psycopg.Connection, pool: ConnectionPool, catalog: Catalog, worker_env: dict[str, str],
        tmp_path: Path, pose_limit: bool) -> None:
    queue_person_boxes(conn, pool)
    with running_farm(catalog, services=["pose"], latency_profile=slow({"pose": 40})) as (farm, shifted):
        env = {**worker_env, "WINDMILL_SERVICE_CONFIG": str(catalog_file(tmp_path, pose_limit=pose_limit)),
               "WINDMILL_PORT_OFFSET": str(shifted["pose"].port - catalog["pose"].port), "WORKER_ID": "pose-limit"}
        worker = subprocess.Popen([PYTHON, "-m", "windmill", "worker", "--role", "postprocess", "--service", "pose",
                                   "--concurrency", "8"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            wait_until(lambda: conn.execute("SELECT count(*) FROM postprocessing WHERE service = 'pose'").fetchone()[0]
                       == BOXES, timeout=90, interval=0.1, message="a pose answer for every box")
        finally:
            worker.terminate()
            assert worker.wait(timeout=60) == 0
        pose = farm.load_stats()["pose"]
    assert pose.requests == BOXES
    if pose_limit:
        assert pose.peak_held == 1, f"pose held {pose.peak_held} requests at once"
    else:
        assert pose.peak_held > 1, "without the limit the 8 threads overlap: the test can see a violation"


def test_roles_of_one_process_share_the_limit(database: Database, conn: psycopg.Connection, pool: ConnectionPool,
                                             catalog: Catalog) -> None:
    """colors is called by the service role (whole images) and by postprocessing (crops): in one process
    (`windmill-cli run`) both count against the same places."""
    limited = Catalog(tuple(replace(service, max_concurrency=1) if service.name == "colors" else service
                            for service in catalog.services))
    queue_person_boxes(conn, pool, "colors")
    add_paths(conn, [SAMPLES_DIR])
    images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    with running_farm(limited, services=["colors"], latency_profile=slow({"colors": 30})) as (farm, shifted):
        with database.connect() as reader:
            submit(reader, conn, JobTableBroker(JobQueue(pool)), shifted.select("colors"))
        group = WorkerGroup(settings_from_mapping({"WORKER_ID": "shared-limit"}), database, pool, shifted,
                            [RoleSpec("service", "colors", concurrency=4), RoleSpec("postprocess", "colors",
                                                                                     concurrency=4)],
                            options=WorkerOptions(poll_interval_s=0.1))
        with group:
            wait_until(lambda: pipeline_idle(pool, ["queue_colors", "postprocess_colors"]), timeout=90,
                       interval=0.1, message="every colors task and crop")
        colors = farm.load_stats()["colors"]
    stored = conn.execute("SELECT (SELECT count(*) FROM results WHERE service = 'colors'),"
                          " (SELECT count(*) FROM postprocessing WHERE service = 'colors')").fetchone()
    assert stored == (images, BOXES) and colors.requests == images + BOXES
    assert colors.peak_held == 1, f"colors held {colors.peak_held} requests at once"


def test_every_caller_of_one_client_shares_the_services_places(catalog: Catalog) -> None:
    """Every thread calling through one client counts against the same places: 9 threads, 2 at a time."""
    limited = Catalog(tuple(replace(service, max_concurrency=2) if service.name == "caption_score" else service
                            for service in catalog.services))
    image = prepare_image((SAMPLES_DIR / "coffee.jpg").read_bytes())
    with running_farm(limited, services=["caption_score"], latency_profile=slow({"caption_score": 40})) as (
            farm, shifted), FarmClient(shifted) as client, ThreadPoolExecutor(9) as pool:
        calls = [pool.submit(client.score, "caption_score", image, "a cup of coffee") for _ in range(12)]
        probes = [pool.submit(client.health, "caption_score") for _ in range(3)]
        assert [call.result() > 0 for call in calls] == [True] * 12
        assert all(probe.result().ok for probe in probes)
        assert client.limits.in_flight("caption_score") == 0
    assert farm.load_stats()["caption_score"].peak_held == 2


def test_a_place_is_given_back_when_the_call_fails() -> None:
    limits = ConcurrencyLimits(load_catalog().services)
    for _ in range(3):
        with pytest.raises(RuntimeError), limits.place("pose"):
            assert limits.available("pose") == 0
            raise RuntimeError("the call failed")
        assert limits.available("pose") == 1
    assert limits.available("yolov8") is None, "an unlimited service has no places to count"
