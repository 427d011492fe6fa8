"""Tasks RabbitMQ lost (a queue recovered empty after a crash of its node, a purge) are sent again from submit's
ledger of tasks in flight, under their own ids: by `tasks resend` and by every scheduler tick."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import psycopg
from pika.adapters.blocking_connection import BlockingConnection
from psycopg_pool import ConnectionPool

import windmill.roles.scheduler  # noqa: F401  (registers the role until windmill.roles imports it)
from tests.conftest import wait_until
from tests.test_monitoring import plan_scans
from tests.test_service_role import SAMPLES
from tests.test_submit_idempotent import task_for
from windmill.bench.chaos import write_catalog
from windmill.broker.ledger import publish_in_flight
from windmill.broker.rabbitmq import RabbitMQBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.db.queries import query
from windmill.jobs import JobQueue
from windmill.settings import settings_from_mapping
from windmill.worker.group import WorkerGroup
from windmill.worker.layout import RoleSpec
from windmill.worker.runtime import WorkerOptions

IMAGES = ("chelsea.jpg", "coffee.jpg", "astronaut.jpg")


def publish_two_services(conn: psycopg.Connection, amqp_url: str, catalog: Catalog) -> dict[str, list[str]]:
    """A task per image for blip and clip, published through the ledger as submit does; their ids by service."""
    add_paths(conn, [SAMPLES / name for name in IMAGES])
    tasks = [task_for(conn, image_id, service, catalog) for image_id in (1, 2, 3) for service in ("blip", "clip")]
    with RabbitMQBroker(amqp_url) as broker:
        publish_in_flight(conn, broker, tasks, unless_answered=False)
    return {service: [task.task_id for task in tasks if task.service_name == service] for service in ("blip", "clip")}


def lose(amqp_url: str, queue: str) -> list[str]:
    """Empty `queue` as a broker that lost its messages would leave it; the task ids it held."""
    connection = BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        ids = []
        while (message := channel.basic_get(queue, auto_ack=True))[0] is not None:
            ids.append(json.loads(message[2])["task_id"])
        return ids
    finally:
        connection.close()


def age_ledger(conn: psycopg.Connection, task_ids: list[str], seconds: int) -> None:
    conn.execute("UPDATE service_tasks_in_flight SET submitted_at = now() - make_interval(secs => %s) "
                 "WHERE task_id = ANY(%s::uuid[])", (seconds, task_ids))


def test_tasks_resend_sends_what_an_empty_queue_lost_and_leaves_a_queue_with_messages_alone(
        run, monkeypatch, conn: psycopg.Connection, amqp_url: str, private_queues: Catalog, tmp_path: Path) -> None:
    monkeypatch.setenv("WINDMILL_AMQP_URL", amqp_url)
    config = tmp_path / "service_config.json"  # the command reads the queues' names from the catalog
    write_catalog(private_queues, config, queue_prefix=private_queues["blip"].queue_prefix, port_offset=0,
                  timeout_s=1.0)
    monkeypatch.setenv("WINDMILL_SERVICE_CONFIG", str(config))
    ids = publish_two_services(conn, amqp_url, private_queues)
    blip, clip = private_queues["blip"].queue_name, private_queues["clip"].queue_name
    assert sorted(lose(amqp_url, clip)) == sorted(ids["clip"])
    age_ledger(conn, ids["blip"] + ids["clip"][:2], 3600)  # the third clip task was submitted just now
    assert "Nothing to resend" in run("tasks", "resend", "--older-than", "7200").output
    output = run("tasks", "resend", "--older-than", "600").output
    assert f"{clip}: resent 2 task(s)" in output and f"{blip}: left alone, it holds 3" in output
    # The lost tasks are back under their own ids (a second delivery of one that was not lost writes nothing);
    # the recent one is not resent yet, and the queue that held its messages got no copies.
    assert sorted(lose(amqp_url, clip)) == sorted(ids["clip"][:2])
    assert sorted(lose(amqp_url, blip)) == sorted(ids["blip"])


def test_a_scheduler_tick_resends_the_tasks_rabbitmq_lost(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, amqp_url: str,
        private_queues: Catalog) -> None:
    ids = publish_two_services(conn, amqp_url, private_queues)
    clip = private_queues["clip"].queue_name
    lose(amqp_url, clip)
    age_ledger(conn, ids["clip"], 120)
    settings = settings_from_mapping({"WORKER_ID": "scheduler-resend", "WINDMILL_AMQP_URL": amqp_url,
                                      "WINDMILL_LOST_TASK_AFTER_S": "60", "WINDMILL_BACKFILL_INTERVAL_S": "3600"})
    group = WorkerGroup(settings, database, pool, private_queues, [RoleSpec("scheduler", concurrency=1)],
                        jobs=JobQueue(pool), options=WorkerOptions(poll_interval_s=0.05))
    group.start()
    resent: list[str] = []
    try:
        wait_until(lambda: resent.extend(lose(amqp_url, clip)) or len(resent) >= 3, timeout=20,
                   message=lambda: f"the scheduler's first tick to resend clip's 3 tasks (got {len(resent)})")
    finally:
        group.request_stop()
        group.join(timeout=30)
    assert sorted(resent) == sorted(ids["clip"])


def test_the_resend_look_up_reads_the_ledger_by_queue_and_age(conn: psycopg.Connection) -> None:
    # A large submit's ledger: 22,000 entries of two queues; the scheduler asks about a third, empty one each tick.
    conn.execute("INSERT INTO images (image_filename, image_path) "
                 "SELECT 'i' || g || '.jpg', '/data/i' || g || '.jpg' FROM generate_series(1, 11000) g")
    conn.execute("INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id) "
                 "SELECT image_id, s, 'queue_' || s, gen_random_uuid() FROM images, unnest(ARRAY['blip', 'clip']) s")
    conn.execute("ANALYZE images, service_tasks_in_flight")
    scans = plan_scans(conn, query("tasks_in_flight_to_resend").replace("%(queue)s", "'queue_yolov8'")
                       .replace("%(older_than)s", "'600 s'").replace("%(limit)s", "10000"))
    assert ("Seq Scan", "service_tasks_in_flight") not in scans, scans
    assert any(relation == "service_tasks_in_flight" for _, relation in scans)


def test_tasks_list_reads_each_queues_oldest_entries_not_the_whole_ledger(conn: psycopg.Connection) -> None:
    # Ten million images in flight are a hundred million entries: `tasks list` must not sort them all.
    conn.execute("INSERT INTO images (image_filename, image_path) "
                 "SELECT 'i' || g || '.jpg', '/data/i' || g || '.jpg' FROM generate_series(1, 11000) g")
    conn.execute("INSERT INTO service_tasks_in_flight (image_id, service, queue, task_id, submitted_at) "
                 "SELECT image_id, s, 'queue_' || s, gen_random_uuid(), "
                 "       now() - interval '2 hours' + ((image_id * 7919) % 11000) * interval '1 s' "
                 "  FROM images, unnest(ARRAY['blip', 'clip', 'ocr']) s")
    conn.execute("ANALYZE images, service_tasks_in_flight")
    listing = query("list_tasks_in_flight")
    scans = plan_scans(conn, listing.replace("%(service)s", "NULL").replace("%(older_than)s", "'600 s'")
                       .replace("%(limit)s", "50"))
    assert ("Seq Scan", "service_tasks_in_flight") not in scans, scans

    every_entry = ("SELECT service, queue, image_id, task_id, submitted_at FROM service_tasks_in_flight "
                   "WHERE (%(service)s::text IS NULL OR service = %(service)s) "
                   "AND submitted_at <= now() - %(older_than)s::interval "
                   "ORDER BY submitted_at, image_id, service LIMIT %(limit)s")
    for params in ({"service": None, "older_than": "600 s", "limit": 50},
                   {"service": "clip", "older_than": "3600 s", "limit": 7}):
        listed = [row[:5] for row in conn.execute(listing, params).fetchall()]
        assert listed == conn.execute(every_entry, params).fetchall()
        assert len(listed) == params["limit"]
