"""The monitoring views and `status` on known data: rows written by hand with chosen states and ages, and a short
real pipeline run; plan guards keep the views on their indexes; RabbitMQ's management API, up or down."""

from __future__ import annotations

import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from windmill.broker import JobTableBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database, DatabaseUnavailable
from windmill.emoji import PERSON
from windmill.jobs import JobQueue
from windmill.monitor import (
    RabbitMQManagement,
    collect_status,
    fold_answer_counts,
    format_status,
    image_status,
    watch_status,
)
from windmill.producer import submit
from windmill.settings import settings_from_mapping
from windmill.worker.group import WorkerGroup, pipeline_idle
from windmill.worker.layout import SINGLE_MACHINE
from windmill.worker.runtime import WorkerOptions

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
PRIMARY = ["blip", "clip", "colors", "detectron2", "metadata", "nsfw2", "ocr", "ollama", "rtdetr", "xception", "yolov8"]


# -- rows written by hand ----------------------------------------------------------------------------------------


def add_image(conn: psycopg.Connection, name: str) -> int:
    return conn.execute("INSERT INTO images (image_filename, image_path) VALUES (%s, %s) RETURNING image_id",
                        (name, f"/data/{name}")).fetchone()[0]


def add_result(conn: psycopg.Connection, image_id: int, service: str, status: str = "success",
               seconds_ago: float = 0.0) -> int:
    return conn.execute(
        """INSERT INTO results (image_id, service, task_id, data, status, error_message, result_created)
           VALUES (%s, %s, %s, %s, %s, %s, now() - make_interval(secs => %s)) RETURNING result_id""",
        (image_id, service, uuid.uuid4(), Jsonb({"predictions": []}), status,
         None if status == "success" else f"{service} {status}", seconds_ago)).fetchone()[0]


def add_box(conn: psycopg.Connection, image_id: int, emoji: str, key: str) -> int:
    return conn.execute(
        """INSERT INTO merged_boxes (image_id, source_result_ids, merged_data, crop_key)
           VALUES (%s, '{1}', %s, %s) RETURNING merged_id""",
        (image_id, Jsonb({"emoji": emoji, "labels": [], "merged_bbox": {"x": 0, "y": 0, "width": 9, "height": 9}}),
         key)).fetchone()[0]


def add_postprocessing(conn: psycopg.Connection, image_id: int, box: int | None, service: str,
                       status: str = "success") -> None:
    conn.execute("""INSERT INTO postprocessing (image_id, merged_box_id, service, data, status, error_message)
                    VALUES (%s, %s, %s, '{}', %s, %s)""",
                 (image_id, box, service, status, None if status == "success" else f"{service} {status}"))


def add_job(conn: psycopg.Connection, queue: str, state: str, *, image_id: int | None = None, owner: str | None = None,
            lease_s: float | None = None, seconds_ago: float = 0.0, error: str | None = None) -> int:
    return conn.execute(
        """INSERT INTO jobs (queue, image_id, state, attempts, lease_owner, lease_expires_at, last_error, created_at,
                             updated_at)
           VALUES (%s, %s, %s, 1, %s, now() + make_interval(secs => %s), %s, now() - make_interval(secs => %s),
                   now() - make_interval(secs => %s))
           RETURNING id""",
        (queue, image_id, state, owner, lease_s, error, seconds_ago, seconds_ago)).fetchone()[0]


def view(conn: psycopg.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(sql, params).fetchall()


@pytest.fixture
def known(conn: psycopg.Connection) -> dict[str, int]:
    """Three images with answers, failures, boxes, jobs and workers of known ages."""
    a, b, c = add_image(conn, "a.jpg"), add_image(conn, "b.jpg"), add_image(conn, "c.jpg")
    # blip: three images answered, one within the last minute, two within the hour.
    add_result(conn, a, "blip")
    add_result(conn, b, "blip", seconds_ago=1800)
    add_result(conn, c, "blip", seconds_ago=7200)
    # ocr: a failed then succeeded (done, not failed); b succeeded then timed out (both); c only failed.
    add_result(conn, a, "ocr", "error", seconds_ago=600)
    add_result(conn, a, "ocr", seconds_ago=300)
    add_result(conn, b, "ocr", seconds_ago=1200)
    add_result(conn, b, "ocr", "timeout", seconds_ago=180)
    add_result(conn, c, "ocr", "error", seconds_ago=60)
    add_result(conn, c, "yolov8", "error", seconds_ago=30 * 3600)  # older than a day: not recent
    person, dog = add_box(conn, a, PERSON, f"{PERSON}:0,0,9,9"), add_box(conn, a, "🐕", "🐕:5,5,9,9")
    add_postprocessing(conn, a, person, "colors")
    add_postprocessing(conn, a, dog, "colors")
    add_postprocessing(conn, a, person, "face")
    add_postprocessing(conn, a, person, "pose", "error")
    add_postprocessing(conn, a, None, "caption_score_blip")
    conn.execute("INSERT INTO consensus (image_id, consensus_data) VALUES (%s, '{}')", (a,))
    conn.execute("DELETE FROM jobs")  # what the triggers queued: this test chooses its own jobs
    add_job(conn, "queue_blip", "queued", image_id=c, seconds_ago=90)
    add_job(conn, "queue_blip", "queued", image_id=c, seconds_ago=30)
    add_job(conn, "queue_blip", "failed", image_id=b, seconds_ago=20, error="blip answered HTTP 500")
    add_job(conn, "queue_blip", "running", image_id=a, owner="w1", lease_s=30)
    add_job(conn, "queue_blip", "done", image_id=a, seconds_ago=4000)
    add_job(conn, "queue_blip", "dead", image_id=c, seconds_ago=10, error="gave up after 5 attempts")
    add_job(conn, "merge", "running", image_id=b, owner="w2", lease_s=-5)
    conn.execute("""INSERT INTO workers (worker_id, role, service, hostname, pid, heartbeat_at, stopped_at) VALUES
                    ('w1', 'service', 'blip', 'h1', 11, now(), NULL),
                    ('w2', 'merger', NULL, 'h2', 12, now() - interval '2 minutes', NULL),
                    ('w3', 'consensus', NULL, 'h3', 13, now() - interval '1 hour', now() - interval '1 hour'),
                    ('w4', 'merger', NULL, 'h4', 14, now() - interval '2 days', NULL)""")
    fold_answer_counts(conn)  # what the periodic pass or status does before the view is read
    return {"a": a, "b": b, "c": c, "person": person, "dog": dog}


def test_service_progress_counts_tasks_images_failures_and_rates(conn: psycopg.Connection,
                                                                 known: dict[str, int]) -> None:
    rows = {row["service"]: row for row in view(conn, "SELECT * FROM service_progress")}
    assert set(rows) == {*PRIMARY, "face", "pose", "caption_score"}
    blip, ocr = rows["blip"], rows["ocr"]
    assert (blip["queued"], blip["running"], blip["done"], blip["failed"]) == (3, 1, 3, 0)
    assert (blip["rate_1m"], float(blip["rate_1h"])) == (1, round(2 / 60, 2))
    assert (ocr["queued"], ocr["running"], ocr["done"], ocr["failed"]) == (0, 0, 2, 2)
    assert (ocr["rate_1m"], float(ocr["rate_1h"])) == (0, round(2 / 60, 2))
    # The merge job is not a service's task; yolov8's only answer failed long ago.
    assert (rows["yolov8"]["queued"], rows["yolov8"]["running"], rows["yolov8"]["done"]) == (0, 0, 0)
    assert rows["yolov8"]["failed"] == 1
    assert rows["clip"]["last_success_at"] is None


def test_queue_depths_per_state_with_the_oldest_waiting_job(conn: psycopg.Connection, known: dict[str, int]) -> None:
    rows = {row["queue"]: row for row in view(conn, "SELECT * FROM queue_depths")}
    assert set(rows) == {"queue_blip", "merge"}
    blip, merge = rows["queue_blip"], rows["merge"]
    states = ("queued", "scheduled", "retrying", "running", "expired_leases", "dead")
    assert [blip[k] for k in states] == [2, 0, 1, 1, 0, 1]
    assert 89 <= blip["oldest_age_s"] <= 120
    assert [merge[k] for k in states] == [0, 0, 0, 1, 1, 0]
    assert merge["oldest_age_s"] is None
    # A job due later (the scheduler's next tick) is not waiting: it does not age the queue.
    conn.execute("INSERT INTO jobs (queue, run_after, created_at) VALUES ('scheduler', now() + interval '1 minute', "
                 "now() - interval '1 hour')")
    [tick] = view(conn, "SELECT * FROM queue_depths WHERE queue = 'scheduler'")
    assert (tick["queued"], tick["scheduled"], tick["oldest_age_s"]) == (0, 1, None)


def test_image_completeness_of_one_image(conn: psycopg.Connection, known: dict[str, int]) -> None:
    [a] = view(conn, "SELECT * FROM image_completeness WHERE image_id = %s", (known["a"],))
    assert (a["answered"], a["failed"]) == (["blip", "ocr"], [])
    assert a["missing"] == [s for s in PRIMARY if s not in ("blip", "ocr")]
    assert (a["boxes"], a["person_boxes"], a["colors"], a["face"], a["pose"]) == (2, 1, 2, 1, 1)
    assert a["postprocessing_missing"] == 0  # the pose answer is an error row: answered, not missing
    assert (a["caption_scores"], a["consensus"], a["pending_jobs"], a["complete"]) == (
        ["caption_score_blip"], True, 1, False)
    [b] = view(conn, "SELECT * FROM image_completeness WHERE image_id = %s", (known["b"],))
    assert (b["answered"], b["failed"], b["boxes"], b["consensus"], b["pending_jobs"]) == (
        ["blip", "ocr"], ["ocr"], 0, False, 2)
    conn.execute("DELETE FROM postprocessing WHERE merged_box_id = %s AND service = 'pose'", (known["person"],))
    conn.execute("DELETE FROM postprocessing WHERE merged_box_id = %s AND service = 'colors'", (known["dog"],))
    assert image_status(conn, known["a"])["postprocessing_missing"] == 2
    assert image_status(conn, 999_999) is None


def test_recent_failures_newest_first_with_reasons(conn: psycopg.Connection, known: dict[str, int]) -> None:
    rows = view(conn, "SELECT kind, source, image_id, state, reason FROM recent_failures")
    a, b, c = known["a"], known["b"], known["c"]
    assert rows == [
        {"kind": "postprocessing", "source": "pose", "image_id": a, "state": "error", "reason": "pose error"},
        {"kind": "job", "source": "queue_blip", "image_id": c, "state": "dead",
         "reason": "gave up after 5 attempts"},
        {"kind": "job", "source": "queue_blip", "image_id": b, "state": "failed", "reason": "blip answered HTTP 500"},
        {"kind": "result", "source": "ocr", "image_id": c, "state": "error", "reason": "ocr error"},
        {"kind": "result", "source": "ocr", "image_id": b, "state": "timeout", "reason": "ocr timeout"},
    ]  # a's ocr error was put right by a later success: it needs no one any more, and is not listed


def test_live_workers_with_heartbeat_age_and_held_jobs(conn: psycopg.Connection, known: dict[str, int]) -> None:
    rows = view(conn, "SELECT worker_id, alive, running_jobs, heartbeat_age_s FROM live_workers ORDER BY worker_id")
    assert [(r["worker_id"], r["alive"], r["running_jobs"]) for r in rows] == [("w1", True, 1), ("w2", False, 1)]
    assert rows[0]["heartbeat_age_s"] < 5 and 119 <= rows[1]["heartbeat_age_s"] < 180


def test_status_report_and_its_text(conn: psycopg.Connection, known: dict[str, int]) -> None:
    report = collect_status(conn)
    assert report["totals"] == {"images": 3, "results": 9, "merged_boxes": 2, "consensus": 1, "postprocessing": 5}
    assert [row["queue"] for row in report["queues"]] == ["merge", "queue_blip"]
    assert report["rabbitmq"] is None and len(report["failures"]) == 5  # not a's ocr error, put right since
    json.dumps(report, default=str)  # the --json output
    text = format_status(report)
    for expected in ("Services", "queue_blip", "RabbitMQ: not configured", "blip answered HTTP 500",
                     "Workers (1 alive of 2 not stopped)"):
        assert expected in text


# -- cost: the views read through indexes ------------------------------------------------------------------------


def plan_scans(conn: psycopg.Connection, sql: str, params: tuple[Any, ...] = ()) -> set[tuple[str, str]]:
    """(node type, relation) of every scan in the query's plan."""
    [[plan]] = conn.execute("EXPLAIN (FORMAT JSON) " + sql, params).fetchall()
    found: set[tuple[str, str]] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node:
            found.add((node["Node Type"], node["Relation Name"]))
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


@pytest.fixture
def seeded(conn: psycopg.Connection) -> None:
    """Enough rows (2,000 images) that the planner's choices are those of a real collection."""
    conn.execute("SET session_replication_role = replica")  # a bulk load: no triggers
    conn.execute("INSERT INTO images (image_filename, image_path) "
                 "SELECT 'i' || g || '.jpg', '/data/i' || g || '.jpg' FROM generate_series(1, 2000) g")
    conn.execute("""INSERT INTO results (image_id, service, task_id, data, status, error_message)
                    SELECT i.image_id, s.name, gen_random_uuid(), '{}',
                           CASE WHEN i.image_id % 50 = 0 THEN 'error' ELSE 'success' END,
                           CASE WHEN i.image_id % 50 = 0 THEN 'x' END
                      FROM images i CROSS JOIN services s WHERE s.category = 'primary'""")
    conn.execute("""INSERT INTO merged_boxes (image_id, source_result_ids, merged_data, crop_key)
                    SELECT i.image_id, '{1}', '{"emoji": "🐕"}', k || ':' FROM images i, generate_series(1, 3) k""")
    conn.execute("""INSERT INTO postprocessing (image_id, merged_box_id, service, data)
                    SELECT image_id, merged_id, 'colors', '{}' FROM merged_boxes""")
    conn.execute("""INSERT INTO jobs (queue, image_id, state)
                    SELECT 'queue_' || s.name, i.image_id, 'done' FROM images i CROSS JOIN services s""")
    conn.execute("INSERT INTO consensus (image_id, consensus_data) SELECT image_id, '{}' FROM images")
    conn.execute("RESET session_replication_role")
    conn.execute("VACUUM ANALYZE images, results, merged_boxes, postprocessing, jobs, consensus")


BIG_TABLES = {"results", "merged_boxes", "postprocessing", "jobs", "consensus", "images"}


def test_one_image_completeness_reads_only_that_image(conn: psycopg.Connection, seeded: None) -> None:
    scans = plan_scans(conn, "SELECT * FROM image_completeness WHERE image_id = %s", (1234,))
    assert not {table for kind, table in scans if kind == "Seq Scan"} & BIG_TABLES, scans


@pytest.mark.parametrize("name", ["service_progress", "queue_depths", "recent_failures", "live_workers"])
def test_status_views_never_scan_answers_or_jobs_in_full(conn: psycopg.Connection, seeded: None, name: str) -> None:
    scans = plan_scans(conn, f"SELECT * FROM {name}")
    assert not {table for kind, table in scans if kind == "Seq Scan"} & {"results", "jobs", "postprocessing"}, scans


# -- a real run ------------------------------------------------------------------------------------------------------


def test_the_views_after_a_real_run_of_two_images(database: Database, pool: ConnectionPool,
                                                  conn: psycopg.Connection, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "ascent.jpg", SAMPLES / "coffee.jpg"])
    with running_farm(catalog) as (_, farm_catalog):
        with database.connect() as reader:
            submit(reader, conn, JobTableBroker(JobQueue(pool)), farm_catalog.select("primary"))
        settings = settings_from_mapping({"WORKER_ID": "monitor-test"})
        group = WorkerGroup(settings, database, pool, farm_catalog, SINGLE_MACHINE,
                            jobs=JobQueue(pool, retry_base_s=0.05), options=WorkerOptions(poll_interval_s=0.1))
        with group:
            wait_until(lambda: pipeline_idle(pool), timeout=120, interval=0.1, message="the pipeline to go idle")
            workers = view(conn, "SELECT * FROM live_workers")
    assert len(workers) == len(SINGLE_MACHINE) and all(worker["alive"] for worker in workers)
    fold_answer_counts(conn)
    progress = {row["service"]: row for row in view(conn, "SELECT * FROM service_progress")}
    for service in PRIMARY:
        row = progress[service]
        assert (row["queued"], row["running"], row["done"], row["failed"], row["rate_1m"]) == (0, 0, 2, 0, 2), row
    assert view(conn, "SELECT * FROM queue_depths") == []
    assert view(conn, "SELECT * FROM recent_failures") == []
    assert view(conn, "SELECT * FROM live_workers") == []  # the group stopped and said so
    images = view(conn, "SELECT * FROM image_completeness ORDER BY image_id")
    assert [image["complete"] for image in images] == [True, True]
    for image in images:
        assert image["answered"] == PRIMARY and image["failed"] == [] and image["missing"] == []
        assert image["caption_scores"] == ["caption_score_blip", "caption_score_ollama"]
        boxes = conn.execute("SELECT count(*) FROM merged_boxes WHERE image_id = %s", (image["image_id"],)).fetchone()
        assert image["boxes"] == boxes[0] and image["colors"] == boxes[0]
    ascent = images[0]
    assert ascent["person_boxes"] >= 2 and ascent["face"] == ascent["pose"] == ascent["person_boxes"]
    postprocessing = {row["service"]: (row["done"], row["failed"], row["queued"], row["running"])
                      for row in view(conn, "SELECT * FROM postprocessing_progress")}
    boxes = sum(image["boxes"] for image in images)
    persons = sum(image["person_boxes"] for image in images)
    assert postprocessing == {"colors": (boxes, 0, 0, 0), "face": (persons, 0, 0, 0), "pose": (persons, 0, 0, 0),
                              "caption_score": (4, 0, 0, 0)}  # two captions of each image scored


# -- RabbitMQ's management API ---------------------------------------------------------------------------------------

# The shape of GET /api/queues/<vhost> (RabbitMQ 3.10), trimmed to the columns asked for.
MANAGEMENT_ANSWER = [
    {"name": "queue_blip", "messages": 7, "messages_ready": 5, "messages_unacknowledged": 2, "consumers": 1,
     "message_stats": {"publish": 120, "publish_details": {"rate": 3.5},
                       "deliver_get": 113, "deliver_get_details": {"rate": 3.25}}},
    {"name": "queue_blip.dlq", "messages": 1, "messages_ready": 1, "messages_unacknowledged": 0, "consumers": 0},
    {"name": "someone_elses_queue", "messages": 9, "messages_ready": 9, "messages_unacknowledged": 0,
     "consumers": 0},
]


@pytest.fixture
def management_api() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in of the management API on a free port: answers /api/queues/%2F for guest:guest only."""
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the http.server API names it
            seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
            if self.headers.get("Authorization") != "Basic Z3Vlc3Q6Z3Vlc3Q=":
                self.send_response(401)
                self.end_headers()
                return
            body = json.dumps(MANAGEMENT_ANSWER).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_rabbitmq_depths_come_from_the_management_api(management_api: tuple[str, list[dict[str, Any]]],
                                                      conn: psycopg.Connection) -> None:
    url, seen = management_api
    management = RabbitMQManagement.configured("amqp://guest:guest@broker:5672/%2F", url, ["queue_blip"])
    assert management is not None
    report = collect_status(conn, rabbitmq=management)["rabbitmq"]
    assert report["available"] and report["url"] == url
    assert report["queues"] == [
        {"queue": "queue_blip", "ready": 5, "unacked": 2, "consumers": 1, "publish_per_s": 3.5,
         "deliver_per_s": 3.25, "oldest_age_s": None},
        {"queue": "queue_blip.dlq", "ready": 1, "unacked": 0, "consumers": 0, "publish_per_s": None,
         "deliver_per_s": None, "oldest_age_s": None},
    ]
    assert seen[0]["path"].startswith("/api/queues/%2F?columns=")
    assert "queue_blip.dlq" in format_status(collect_status(conn, rabbitmq=management))


def test_an_unreachable_or_refusing_management_api_is_a_line_not_an_error(
        management_api: tuple[str, list[dict[str, Any]]], conn: psycopg.Connection) -> None:
    url, _ = management_api
    wrong_login = RabbitMQManagement.configured("amqp://guest:wrong@broker:5672/", url)
    assert wrong_login is not None
    refused = wrong_login.queue_depths().as_dict()
    assert (refused["available"], refused["error"]) == (False, "HTTP 401")
    closed = RabbitMQManagement.configured("amqp://guest:guest@127.0.0.1:1/")
    assert closed is not None and closed.base_url == "http://127.0.0.1:15672"
    text = format_status(collect_status(conn, rabbitmq=RabbitMQManagement("http://127.0.0.1:1", "/", None, None)))
    assert "RabbitMQ queues: management API unavailable at http://127.0.0.1:1 (" in text


def test_management_url_is_derived_from_the_amqp_url() -> None:
    derived = RabbitMQManagement.configured("amqps://u%40x:p%2Fw@mq.example.org:5671/prod", None, ["queue_ocr"])
    assert derived == RabbitMQManagement("https://mq.example.org:15671", "prod", "u@x", "p/w",
                                         ("queue_ocr", "queue_ocr.dlq"))
    explicit = RabbitMQManagement.configured("amqp://u:p@mq:5672/", "http://admin:secret@mq-admin:8080/")
    assert explicit == RabbitMQManagement("http://mq-admin:8080", "/", "admin", "secret")
    assert RabbitMQManagement.configured(None, None) is None


def test_watch_redraws_until_interrupted_and_survives_a_lost_database() -> None:
    screens: list[str] = []
    renders = iter(["first", psycopg.OperationalError("server closed the connection"),
                    DatabaseUnavailable("cannot connect to PostgreSQL at db:5432/windmill: refused"), "fourth"])

    def render() -> str:
        value = next(renders)
        if isinstance(value, Exception):
            raise value
        return value

    def sleep(_: float) -> None:
        if len(screens) >= 12:
            raise KeyboardInterrupt

    watch_status(render, interval=0.5, echo=screens.append, clear=lambda: screens.append("<clear>"), sleep=sleep)
    assert screens[0::3] == ["<clear>"] * 4
    assert screens[1] == "first" and screens[10] == "fourth"
    assert screens[4].startswith("database unavailable: server closed the connection")
    assert screens[7].startswith("database unavailable: cannot connect to PostgreSQL at db:5432/windmill")


def test_a_twin_of_the_same_worker_id_neither_stops_nor_hides_the_live_worker(pool: ConnectionPool,
                                                                              conn: psycopg.Connection) -> None:
    # Two processes with one WORKER_ID (a `workers run NAME` beside the same name from `workers start`) share a row,
    # the last to register naming itself in it. When one left, it marked the row stopped while the other beat on,
    # and `workers health` called the live one unhealthy.
    from windmill.worker.presence import WorkerPresence

    this = WorkerPresence(pool, "twin@test", "merger", None)
    this.announce()
    twin = os.getpid() + 1  # the pid of the twin, which registered after this process
    conn.execute("UPDATE workers SET pid = %s WHERE worker_id = 'twin@test'", (twin,))
    this.stopped(0, 0)  # this process leaves: the twin, named in the row, stays alive
    assert conn.execute("SELECT stopped_at FROM workers WHERE worker_id = 'twin@test'").fetchone() == (None,)
    conn.execute("UPDATE workers SET stopped_at = now() WHERE worker_id = 'twin@test'")  # the twin left
    this.beat(3, 0)  # this process beats on: the row says it lives
    assert conn.execute("SELECT stopped_at, pid FROM workers WHERE worker_id = 'twin@test'").fetchone() == (
        None, os.getpid())
    assert "twin@test" in {worker_id for (worker_id,) in conn.execute("SELECT worker_id FROM live_workers")}


def test_a_worker_that_starts_beside_a_live_twin_of_its_id_says_so(pool: ConnectionPool, conn: psycopg.Connection,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    # Two machines of one host name (Raspberry Pi OS names every Pi `raspberrypi`) each ran `workers start yolov8`:
    # both were yolov8@raspberrypi, one row, and `workers health` on either said healthy while the other beat.
    import logging

    from windmill.worker.presence import WorkerPresence

    conn.execute("INSERT INTO workers (worker_id, role, hostname, pid) VALUES ('yolov8@pi', 'service', 'other-pi', 7)")
    caplog.set_level(logging.WARNING, logger="windmill.worker.presence")
    WorkerPresence(pool, "yolov8@pi", "service", "yolov8").announce()
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and said[0].startswith(
        "another worker with the id yolov8@pi is alive (pid 7 on other-pi, its last heartbeat 0"), said
    assert said[0].endswith("s ago): the two share one row of the workers table, so `status` and `workers health` "
                            "show one of them and either may hide the other's death; give each its own WORKER_ID")
    caplog.clear()
    conn.execute("UPDATE workers SET pid = %s, hostname = %s WHERE worker_id = 'yolov8@pi'",
                 (_a_pid_no_process_has(), socket.gethostname()))  # this host's worker that died: restarted
    WorkerPresence(pool, "yolov8@pi", "service", "yolov8").announce()
    conn.execute("UPDATE workers SET stopped_at = now(), hostname = 'other-pi' WHERE worker_id = 'yolov8@pi'")
    WorkerPresence(pool, "yolov8@pi", "service", "yolov8").announce()  # the twin stopped
    assert caplog.records == []


def _a_pid_no_process_has() -> int:
    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid -= 1
    return pid
