"""A submit killed between entering a page of RabbitMQ tasks in its ledger and RabbitMQ's confirms loses nothing: the
page stays named as unconfirmed with the session that entered it (sql/0133), and once that session is gone the
scheduler publishes its tasks again at once, however full their queues (a steady stream's queue never runs empty, and
the rule for what RabbitMQ itself lost waits for an empty one). A live submit's unconfirmed tasks are left alone.
The submits here are real processes (tests/support/halting_submit.py), halted by a signal at a chosen point."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pika
import psycopg
import pytest
from psycopg_pool import ConnectionPool

import windmill.roles.scheduler  # noqa: F401  (registers the role until windmill.roles imports it)
from tests.conftest import PYTHON, wait_until
from tests.farm_fixtures import running_farm
from tests.test_lost_tasks import lose
from tests.test_service_rabbitmq import start_worker
from tests.test_service_role import SAMPLES
from tests.test_submit_idempotent import task_for
from windmill.bench.chaos import write_catalog
from windmill.broker.ledger import enter_in_flight, resend_unconfirmed
from windmill.broker.rabbitmq import RabbitMQBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.jobs import JobQueue
from windmill.monitor import collect_status, format_status
from windmill.settings import settings_from_mapping
from windmill.worker.group import WorkerGroup
from windmill.worker.layout import RoleSpec
from windmill.worker.runtime import WorkerOptions

SERVICES = ("blip", "clip")
PAGE = 2  # images per page of the submits here: 4 tasks


def register(conn: psycopg.Connection, tmp_path: Path, group: str, count: int) -> None:
    """`count` sample pictures, copied into a folder of their own, registered in `group`."""
    folder = tmp_path / group
    folder.mkdir()
    for sample in sorted(SAMPLES.glob("*.jpg"))[:count]:
        shutil.copy(sample, folder / sample.name)
    assert add_paths(conn, [folder], group=group).added == count


def submit_env(worker_env: dict[str, str], amqp_url: str, catalog: Catalog, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "service_config.json"  # the queues' names (the test's own) come from the catalog
    write_catalog(catalog, config, queue_prefix=catalog["blip"].queue_prefix, port_offset=0, timeout_s=1.0)
    return {**worker_env, "WINDMILL_AMQP_URL": amqp_url, "WINDMILL_SERVICE_CONFIG": str(config)}


def halting_submit(env: dict[str, str], group: str, at: str, signal_name: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PYTHON, "-m", "tests.support.halting_submit", "--services", ",".join(SERVICES), "--group", group,
         "--page-size", str(PAGE)],
        env={**env, "HALTING_SUBMIT_AT": at, "HALTING_SUBMIT_SIGNAL": signal_name}, cwd=cwd, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def ready(amqp_url: str, queue: str) -> int:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        connection.close()


def take_pairs(amqp_url: str, catalog: Catalog) -> Counter[tuple[int, str]]:
    """Every task the services' queues hold, as (image id, service), taken off them."""
    taken: Counter[tuple[int, str]] = Counter()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        for service in SERVICES:
            while (message := channel.basic_get(catalog[service].queue_name, auto_ack=True))[0] is not None:
                task = json.loads(message[2])
                taken[(task["image_id"], task["service_name"])] += 1
    finally:
        connection.close()
    return taken


def pairs(image_ids: range) -> Counter[tuple[int, str]]:
    return Counter({(image_id, service): 1 for image_id in image_ids for service in SERVICES})


def age_ledger(conn: psycopg.Connection) -> None:
    """Every entry an hour old: by the rule for what RabbitMQ lost, old enough to be resent once its queue is empty."""
    conn.execute("UPDATE service_tasks_in_flight SET submitted_at = now() - interval '1 hour'")


def ticks_done(pool: ConnectionPool) -> int:
    with pool.connection() as conn:
        return conn.execute("SELECT count(*) FROM jobs WHERE queue = 'scheduler' AND state = 'done'").fetchone()[0]


def run_a_scheduler_tick(database: Database, pool: ConnectionPool, amqp_url: str, catalog: Catalog) -> None:
    """A scheduler's first tick (the periodic pass and the resend), then stop it."""
    settings = settings_from_mapping({"WORKER_ID": "scheduler-unconfirmed", "WINDMILL_AMQP_URL": amqp_url,
                                      "WINDMILL_LOST_TASK_AFTER_S": "600", "WINDMILL_BACKFILL_INTERVAL_S": "3600"})
    group = WorkerGroup(settings, database, pool, catalog, [RoleSpec("scheduler", concurrency=1)],
                        jobs=JobQueue(pool), options=WorkerOptions(poll_interval_s=0.05))
    before = ticks_done(pool)
    group.start()
    try:
        wait_until(lambda: ticks_done(pool) > before, timeout=30, message="the scheduler's first tick")
    finally:
        group.request_stop()
        group.join(timeout=30)


def test_a_submit_killed_while_it_publishes_loses_nothing_though_its_queues_never_run_empty(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, amqp_url: str, private_queues: Catalog,
        worker_env: dict[str, str], tmp_path: Path) -> None:
    register(conn, tmp_path, "killed", 6)  # images 1–6: three pages
    register(conn, tmp_path, "confirmed", 2)  # images 7–8: one page
    with running_farm(private_queues, services=list(SERVICES)) as (farm, catalog):
        env = submit_env(worker_env, amqp_url, catalog, tmp_path)
        # Killed in its second page: the first (images 1–2) is confirmed; the second (3–4) is entered and committed,
        # two of its messages waiting in the client's buffer, two not published; the third never entered.
        killed = halting_submit(env, "killed", "messages:6", "SIGKILL", tmp_path)
        # Killed once RabbitMQ had confirmed its one page (7–8), before it could record that.
        confirmed = halting_submit(env, "confirmed", "publishes:1", "SIGKILL", tmp_path)
        for process in (killed, confirmed):
            out, err = process.communicate(timeout=120)
            assert process.returncode == -signal.SIGKILL, (out, err)
        assert conn.execute("SELECT array_agg(DISTINCT image_id ORDER BY image_id) FROM service_tasks_in_flight"
                            ).fetchone()[0] == [1, 2, 3, 4, 7, 8]
        # Every queue holds messages (as under a steady stream), and every entry is old: only a queue's messages hold
        # back the resend of what RabbitMQ lost.
        age_ledger(conn)
        for service in SERVICES:
            assert ready(amqp_url, catalog[service].queue_name) == 4  # images 1, 2, 7 and 8
        run_a_scheduler_tick(database, pool, amqp_url, catalog)
        for service in SERVICES:  # images 3 and 4 resent, and 7 and 8 again (RabbitMQ had confirmed those)
            assert ready(amqp_url, catalog[service].queue_name) == 8, f"{service}: the killed submit's tasks resent"
        # The killed submit run again, as its service manager would: it sends what it never reached, nothing twice.
        rerun = subprocess.run([PYTHON, "-m", "windmill", "submit", "--services", ",".join(SERVICES), "--group",
                                "killed", "--page-size", str(PAGE)], env=env, cwd=tmp_path, text=True,
                               capture_output=True, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        assert rerun.stdout.startswith("Submitted 4 task(s)") and "8 already in flight" in rerun.stdout, rerun.stdout
        # One thread per queue: a copy of a task is handled once the one before it wrote its row.
        worker, thread = start_worker(amqp_url, database, pool, catalog, ",".join(SERVICES), concurrency=1)
        try:
            wait_until(lambda: conn.execute("SELECT count(*) FROM results").fetchone()[0] >= 16, timeout=60,
                       message=lambda: "every image × service answered: " + str(conn.execute(
                           "SELECT array_agg(image_id || ' ' || service ORDER BY image_id, service) FROM results"
                       ).fetchone()[0]))
            wait_until(lambda: all(ready(amqp_url, catalog[service].queue_name) == 0 for service in SERVICES),
                       message="every copy handled")
        finally:
            worker.request_stop()
            thread.join(timeout=60)
        asked = {service: farm.loads[service].stats().requests for service in SERVICES}
    answered = Counter(conn.execute("SELECT image_id, service FROM results WHERE status = 'success'").fetchall())
    assert answered == pairs(range(1, 9)), "each pair answered once"
    assert conn.execute("SELECT count(*) FROM results").fetchone()[0] == 16
    # A resent copy of a task answered already looks for its row first: no service was asked twice.
    assert asked == dict.fromkeys(SERVICES, 8)
    assert conn.execute("SELECT count(*) FROM service_tasks_in_flight").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM service_tasks_unconfirmed").fetchone()[0] == 0


def test_a_live_submits_unconfirmed_tasks_are_left_alone_however_old_and_however_empty_their_queue(
        run, monkeypatch: pytest.MonkeyPatch, conn: psycopg.Connection, amqp_url: str, private_queues: Catalog,
        worker_env: dict[str, str], tmp_path: Path) -> None:
    register(conn, tmp_path, "live", 4)
    env = submit_env(worker_env, amqp_url, private_queues, tmp_path)
    for key in ("WINDMILL_AMQP_URL", "WINDMILL_SERVICE_CONFIG"):
        monkeypatch.setenv(key, env[key])
    # Stopped in its second page: images 1–2 confirmed, 3–4 entered and not yet published. Its session lives.
    process = halting_submit(env, "live", "messages:4", "SIGSTOP", tmp_path)
    try:
        wait_until(lambda: Path(f"/proc/{process.pid}/stat").read_text().split(")")[-1].split()[0] == "T",
                   timeout=60, message="the submit to stop itself")
        assert conn.execute("SELECT count(*) FROM service_tasks_in_flight").fetchone()[0] == 8
        # Its queues empty and every entry old: the rule for what RabbitMQ lost now holds for all eight.
        assert take_pairs(amqp_url, private_queues) == pairs(range(1, 3))
        age_ledger(conn)
        output = run("tasks", "resend", "--older-than", "600").output
        assert "resent 2 task(s) its queue no longer held" in output, output
        assert "before RabbitMQ confirmed" not in output, output
        assert take_pairs(amqp_url, private_queues) == pairs(range(1, 3)), "only the confirmed ones resent"
        assert collect_status(conn)["orphaned_in_flight"] == 0
    finally:
        process.send_signal(signal.SIGCONT)
        _out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    # The submit went on and published its second page itself: each of its tasks once.
    assert take_pairs(amqp_url, private_queues) == pairs(range(3, 5))
    assert conn.execute("SELECT count(*) FROM service_tasks_unconfirmed").fetchone()[0] == 0


def test_a_page_is_resent_once_its_session_has_ended_or_its_pid_is_a_later_sessions(
        database: Database, conn: psycopg.Connection, amqp_url: str, private_queues: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg", SAMPLES / "coffee.jpg"])
    first, second = (task_for(conn, image_id, "blip", private_queues) for image_id in (1, 2))
    queue = private_queues["blip"].queue_name
    with RabbitMQBroker(amqp_url) as broker:
        with database.connect() as submitter:
            page = enter_in_flight(submitter, [first]).page
            assert resend_unconfirmed(conn, broker) == {}, "its session lives"
            # The same pid, started at another time: the submitter's session ended and a later one has its pid.
            conn.execute("UPDATE service_tasks_unconfirmed SET submitter_started_at = submitter_started_at "
                         "- interval '1 s' WHERE id = %s", (page,))
            assert resend_unconfirmed(conn, broker) == {queue: 1}
            assert resend_unconfirmed(conn, broker) == {}, "a page resent is confirmed"
            assert enter_in_flight(submitter, [second]).tasks == [second]
            pid = submitter.info.backend_pid
            status = format_status(collect_status(conn))
            assert "entered by a submit that ended" not in status
        wait_until(lambda: conn.execute("SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)",
                                        (pid,)).fetchone()[0], message="the submitter's backend to end")
        assert collect_status(conn)["orphaned_in_flight"] == 1
        assert "1 of them entered by a submit that ended" in format_status(collect_status(conn))
        assert resend_unconfirmed(conn, broker) == {queue: 1}
    assert sorted(lose(amqp_url, queue)) == sorted([first.task_id, second.task_id])
    assert conn.execute("SELECT count(*) FROM service_tasks_unconfirmed").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM service_tasks_in_flight").fetchone()[0] == 2, "still in flight"
