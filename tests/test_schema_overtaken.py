"""A worker that is running when a newer Windmill migrates its database stops with one sentence, instead of going on
with a contract it no longer knows (an upgrade's workers of the previous version failed every postprocess job of
the new payload, sql/0115, until each went dead with the error `'merged_box_id'`)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.conftest import PYTHON, wait_until
from windmill.bench.chaos import write_catalog
from windmill.catalog import Catalog
from windmill.db.connect import Database

SENTENCE = ("a newer Windmill migrated this database while this worker ran (migration 9999, which this one does not "
            "have); it stopped taking work: upgrade Windmill here to the version that ran `init-db`")


def _worker_overtaken(conn: psycopg.Connection, command: list[str], env: dict[str, str], log_path: Path) -> str:
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([PYTHON, "-m", "windmill", *command], env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: conn.execute("SELECT count(*) FROM workers WHERE worker_id = %s AND heartbeat_at > "
                                        "started_at", (env["WORKER_ID"],)).fetchone()[0],
                   timeout=60, message="the worker's first heartbeat")
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')")
        try:
            status: int | None = worker.wait(30)  # a heartbeat (5 s) notices, then the worker drains
        except subprocess.TimeoutExpired:
            status = None  # it went on taking work
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        conn.execute("DELETE FROM schema_migrations WHERE version = 9999")
    output = log_path.read_text()
    assert status == 1, output
    assert "Traceback" not in output
    return output


def _command_overtaken(conn: psycopg.Connection, command: list[str], env: dict[str, str],
                       started: Callable[[], bool], then: Callable[[], None] = lambda: None) -> str:
    """Run `windmill-cli COMMAND` until `started()`, migrate a newer Windmill's migration 9999 in, call `then` (give
    it something to write), and return its stderr once it has stopped by itself: status 1, no traceback."""
    process = subprocess.Popen([PYTHON, "-m", "windmill", *command], env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    try:
        wait_until(started, timeout=60, message=f"{' '.join(command[:2])} at work before the upgrade")
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')")
        then()
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()  # it went on: returncode -9
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        conn.execute("DELETE FROM schema_migrations WHERE version = 9999")
    assert process.returncode == 1, err
    assert "Traceback" not in err, err
    return err


def test_a_job_table_worker_stops_when_a_newer_windmill_migrates_its_database(
        database: Database, conn: psycopg.Connection, worker_env: dict[str, str], tmp_path: Path) -> None:
    env = {**worker_env, "WORKER_ID": "overtaken-merger"}
    output = _worker_overtaken(conn, ["worker", "--role", "merger"], env, tmp_path / "merger.log")
    assert SENTENCE in output


def test_a_rabbitmq_worker_stops_when_a_newer_windmill_migrates_its_database(
        amqp_url: str, database: Database, conn: psycopg.Connection, private_queues: Catalog,
        worker_env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "service_config.json"
    write_catalog(private_queues, config, port_offset=0, queue_prefix=private_queues["metadata"].queue_prefix,
                  timeout_s=1.0)
    env = {**worker_env, "WORKER_ID": "overtaken-metadata", "WINDMILL_AMQP_URL": amqp_url,
           "WINDMILL_SERVICE_CONFIG": str(config)}
    output = _worker_overtaken(conn, ["worker", "--role", "service", "--service", "metadata", "--broker", "rabbitmq"],
                               env, tmp_path / "metadata.log")
    assert SENTENCE in output


def test_submit_follow_stops_queueing_when_a_newer_windmill_migrates_its_database(
        conn: psycopg.Connection, worker_env: dict[str, str]) -> None:
    """A follow left running through an upgrade would queue jobs of the payload the new workers no longer read."""
    def register(name: str) -> None:
        conn.execute("INSERT INTO images (image_filename, image_path) VALUES (%s, %s)", (name, f"/stream/{name}"))

    def queued() -> set[int]:
        return {row[0] for row in conn.execute("SELECT image_id FROM jobs WHERE queue = 'queue_nsfw2'")}

    register("before.jpg")
    err = _command_overtaken(conn, ["submit", "--follow", "--services", "nsfw2", "--broker", "postgres",
                                    "--poll-interval", "1"], worker_env, lambda: queued() == {1},
                             then=lambda: register("after.jpg"))  # queued at the next walk, or its notification
    assert ("a newer Windmill migrated this database while submit --follow ran (migration 9999, which this one does "
            "not have); it stopped queueing: upgrade Windmill here to the version that ran `init-db`") in err, err
    assert queued() == {1}, "the image registered after the upgrade was queued by the old version"


def test_run_says_once_that_a_newer_windmill_migrated_its_database(
        conn: psycopg.Connection, worker_env: dict[str, str], tmp_path: Path) -> None:
    """`run` holds every role in one process; each role's heartbeat finds the migration, and the sentence was said
    once per role (six times, within milliseconds)."""
    env = {**worker_env, "WORKER_ID": "overtaken-run"}
    with open(tmp_path / "run.log", "wb") as log:
        machine = subprocess.Popen([PYTHON, "-m", "windmill", "run", "--broker", "postgres"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: conn.execute("SELECT count(*) FROM workers WHERE worker_id LIKE 'overtaken-run-%%' AND "
                                        "heartbeat_at > started_at").fetchone()[0] >= 2,
                   timeout=60, message="the roles' first heartbeats")
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')")
        status = machine.wait(30)
    finally:
        if machine.poll() is None:
            machine.kill()
            machine.wait()
        conn.execute("DELETE FROM schema_migrations WHERE version = 9999")
    output = (tmp_path / "run.log").read_text()
    assert status == 1, output
    assert output.count(SENTENCE) == 1, output


def test_a_long_submit_stops_queueing_when_a_newer_windmill_migrates_its_database(
        conn: psycopg.Connection, worker_env: dict[str, str]) -> None:
    """A submit of millions of images runs for hours; an upgrade in its middle stops it before the next page."""
    images = 5000
    conn.execute("INSERT INTO images (image_filename, image_path) SELECT 'i' || n || '.jpg', '/many/i' || n || '.jpg' "
                 "FROM generate_series(1, %s) AS n", (images,))

    def queued() -> int:
        return conn.execute("SELECT count(*) FROM jobs WHERE queue = 'queue_nsfw2'").fetchone()[0]

    err = _command_overtaken(conn, ["submit", "--services", "nsfw2", "--broker", "postgres", "--page-size", "1"],
                             worker_env, lambda: queued() > 0)
    assert "while submit ran (migration 9999, which this one does not have); it stopped queueing" in err, err
    assert queued() < images


def test_images_watch_stops_registering_when_a_newer_windmill_migrates_its_database(
        conn: psycopg.Connection, worker_env: dict[str, str], tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parent.parent / "windmill" / "samples" / "chelsea.jpg"
    folder = tmp_path / "uploads"
    folder.mkdir()

    def registered() -> set[str]:
        return {row[0] for row in conn.execute("SELECT image_filename FROM images")}

    (folder / "before.jpg").write_bytes(sample.read_bytes())
    err = _command_overtaken(conn, ["images", "watch", str(folder), "--settle", "0.2"], worker_env,
                             lambda: registered() == {"before.jpg"},
                             then=lambda: (folder / "after.jpg").write_bytes(sample.read_bytes()))
    assert ("a newer Windmill migrated this database while images watch ran (migration 9999, which this one does not "
            "have); it stopped registering") in err, err
    assert registered() == {"before.jpg"}
