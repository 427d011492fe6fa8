"""Per-service concurrency limits (catalog `max_concurrency`): real worker processes against the stand-in, which
counts how many requests of each service it holds at once. Pose never receives two requests at once from a
postprocess worker with 8 threads; the same run without the limit does send it several (the control)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
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
from windmill.db.queries import query
from windmill.farm import FarmClient
from windmill.farm.fleet import FleetSlots
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


def catalog_file(folder: Path, *, pose_limit: bool, pose_fleet_limit: bool = False) -> Path:
    """The bundled catalog (pose: one request at a time per process and across the fleet), with pose's per-process
    and fleet-wide limits kept or removed."""
    document = json.loads(bundled_catalog_path().read_text())
    pose = document["services"]["pose"]
    if not pose_limit:
        del pose["max_concurrency"]
    if not pose_fleet_limit:
        del pose["fleet_max_concurrency"]
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
        calls = [pool.submit(client.score, "caption_score", image, "a cup of coffee",
                             image_path=str(SAMPLES_DIR / "coffee.jpg")) for _ in range(12)]
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


# -- fleet-wide places (catalog fleet_max_concurrency, held in PostgreSQL) ---------------------------------------------


def slots_held(conn: psycopg.Connection, service: str) -> int:
    return conn.execute(query("service_slots_held"), {"service": service}).fetchone()[0]


def test_a_fleet_place_is_taken_once_across_sessions_and_freed_when_its_holder_dies(
        database: Database, conn: psycopg.Connection) -> None:
    first, second = FleetSlots(database.connect), FleetSlots(database.connect)
    got: list[int] = []
    done = threading.Event()

    def third_call() -> None:
        with second.place("pose", 2) as slot:
            got.append(slot)
            done.wait(30)

    waiter = threading.Thread(target=third_call)
    try:
        with first.place("pose", 2) as one, first.place("pose", 2) as two:
            assert {one, two} == {0, 1}, "one session takes each place once, not the same lock twice"
            waiter.start()
            wait_until(lambda: slots_held(conn, "pose") == 2, message="both places held")
            assert got == [], "a third call waits while both places are held"
            first.close()  # the holder's connection ends, as when its process dies
            wait_until(lambda: got, message="the waiting call to get a freed place")
        assert got in ([0], [1]) and slots_held(conn, "pose") == 1
    finally:
        done.set()
        if waiter.is_alive():
            waiter.join(timeout=10)
        first.close()
        second.close()
    # A backend ends (and frees its locks) just after its client hangs up.
    wait_until(lambda: slots_held(conn, "pose") == 0, message="every place freed")


@pytest.mark.parametrize("fleet_limit", [True, False], ids=["fleet-limit", "control-per-process-limit-only"])
def test_pose_never_gets_two_requests_at_once_from_three_worker_processes(
        conn: psycopg.Connection, pool: ConnectionPool, catalog: Catalog, worker_env: dict[str, str],
        tmp_path: Path, fleet_limit: bool) -> None:
    config = catalog_file(tmp_path, pose_limit=True, pose_fleet_limit=fleet_limit)
    with running_farm(catalog, services=["pose"], latency_profile=slow({"pose": 60})) as (farm, shifted):
        env = {**worker_env, "WINDMILL_SERVICE_CONFIG": str(config),
               "WINDMILL_PORT_OFFSET": str(shifted["pose"].port - catalog["pose"].port)}
        workers = [subprocess.Popen([PYTHON, "-m", "windmill", "worker", "--role", "postprocess", "--service", "pose",
                                     "--concurrency", "4", "--batch-size", "1"],
                                    env={**env, "WORKER_ID": f"fleet-pose-{n}"}, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for n in range(3)]
        try:
            # The jobs come once all three listen, so all three take some of them at the same moment.
            wait_until(lambda: conn.execute("SELECT count(*) FROM workers WHERE worker_id LIKE 'fleet-pose-%%'")
                       .fetchone()[0] == 3, timeout=60, interval=0.1, message="three pose workers to start")
            queue_person_boxes(conn, pool)
            wait_until(lambda: conn.execute("SELECT count(*) FROM postprocessing WHERE service = 'pose'").fetchone()[0]
                       == BOXES, timeout=90, interval=0.1, message="a pose answer for every box")
            takers = conn.execute("SELECT count(DISTINCT worker_id) FROM postprocessing").fetchone()[0]
            # Each place went back after its call (before the row was stored), not when the processes end.
            held_after = slots_held(conn, "pose")
        finally:
            for worker in workers:
                worker.terminate()
            assert [worker.wait(timeout=60) for worker in workers] == [0, 0, 0]
        pose = farm.load_stats()["pose"]
    assert pose.requests == BOXES and takers > 1, "the boxes were shared out between the processes"
    if fleet_limit:
        assert pose.peak_held == 1, f"pose held {pose.peak_held} requests at once"
        assert held_after == 0
    else:
        assert pose.peak_held > 1, "three processes with one place each overlap: the test can see a violation"


def test_farm_check_probes_pose_only_in_a_fleet_wide_place(database: Database, catalog: Catalog,
                                                            worker_env: dict[str, str]) -> None:
    """Pose's /health runs an inference on the one model its requests share (spec §2.7): `farm check` probed it
    whatever the workers were sending. With the database configured, it waits for one of pose's places."""
    assert catalog["pose"].fleet_max_concurrency == 1
    holder = FleetSlots(database.connect)
    with running_farm(catalog, services=["pose"]) as (_, shifted):
        env = {**worker_env, "WINDMILL_PORT_OFFSET": str(shifted["pose"].port - catalog["pose"].port)}
        with holder.place("pose", 1):  # a worker's call to pose in flight
            check = subprocess.Popen([PYTHON, "-m", "windmill", "farm", "check", "--services", "pose"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                check.wait(timeout=6)
            waited = check.poll() is None
        output, _ = check.communicate(timeout=60)
        holder.close()
    assert waited, f"farm check probed pose while its one place was held:\n{output}"
    assert check.returncode == 0 and "1 of 1 services healthy" in output, output
