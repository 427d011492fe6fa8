"""A RabbitMQ task whose handling kills its worker process (tests/support/poison_worker.py: SIGKILL on one image, as a
decoder's segfault or the OOM killer would) is bounded: restarted as systemd's `Restart=always` would, the worker
dies on it a bounded number of times, then the task's error row says so and it is dead-lettered, while the tasks
around it, which died with it the first time and ran beside it, are answered. Before, a delivery lost with its
worker was redelivered uncounted, for ever."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest
from pika.adapters.blocking_connection import BlockingChannel
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, REPOSITORY, wait_until
from tests.farm_fixtures import running_farm
from tests.test_rabbitmq import depth
from tests.test_service_role import SAMPLES
from windmill.bench.private_rabbitmq import PrivateRabbitMQ
from windmill.bench.stage import bench_environment
from windmill.broker import Task
from windmill.broker.deliveries import Delivery, Outcome
from windmill.broker.ledger import DeathsInLedger, enter_in_flight, publish_in_flight
from windmill.broker.poison import PoisonWatch
from windmill.broker.queues import queue_depth
from windmill.broker.rabbitmq import RabbitMQBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.errors import PoisonInput

SERVICE = "yolov8"
STARTS = 8  # more than a bounded poison input needs (three deaths and a start to record it)


def task_rows(conn: psycopg.Connection, tasks: list[Task]) -> dict[str, list[tuple[Any, ...]]]:
    rows: dict[str, list[tuple[Any, ...]]] = {task.task_id: [] for task in tasks}
    for task_id, status, error_message, data in conn.execute(
            "SELECT task_id::text, status, error_message, data FROM results WHERE task_id = ANY(%s::uuid[])",
            ([task.task_id for task in tasks],)):
        rows[task_id].append((status, error_message, data))
    return rows


def until_dead_or_answered(process: subprocess.Popen, conn: psycopg.Connection, tasks: list[Task], log: Path) -> None:
    """Wait until the worker process dies or every task has its row; then stop it if it lives."""
    try:
        wait_until(lambda: process.poll() is not None or all(task_rows(conn, tasks).values()), timeout=60,
                   message=lambda: f"the worker to die or every task to be answered\n{log.read_text()}")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_a_task_that_kills_its_worker_each_time_ends_as_its_error_row_in_the_dlq_and_the_others_are_answered(
        amqp_url: str, database_url: str, conn: psycopg.Connection, catalog: Catalog, admin: BlockingChannel,
        tmp_path: Path) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    shutil.copy(SAMPLES / "coffee.jpg", pictures / "poison.jpg")
    for number in range(3):
        shutil.copy(SAMPLES / "chelsea.jpg", pictures / f"good-{number}.jpg")
    add_paths(conn, [pictures / "poison.jpg", *(pictures / f"good-{number}.jpg" for number in range(3))])
    images = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images ORDER BY image_id")
    columns = ("image_id", "image_filename", "image_path", "image_url")
    # A stand-in slow enough that a good task is still running beside the poison when it kills the worker.
    with running_farm(catalog, services=[SERVICE], latency_ms=300) as (_, shifted), \
            bench_environment(shifted, database_url, amqp_url) as environment:
        queue = next(name for name in environment.queue_names if name.endswith(SERVICE))
        tasks = [Task(**{**Task.for_image(dict(zip(columns, image, strict=True)), shifted[SERVICE]).to_message(),
                         "queue_name": queue}) for image in images.fetchall()]
        poison, goods = tasks[0], tasks[1:]
        assert "poison" in (poison.image_path or "")
        with RabbitMQBroker(amqp_url) as broker:
            assert publish_in_flight(conn, broker, tasks, unless_answered=False) == tasks
        env = {**environment.env, "PYTHONPATH": str(REPOSITORY), "LOG_LEVEL": "INFO",
               "WINDMILL_AMQP_TASK_ATTEMPTS": "2"}
        log = tmp_path / "worker.log"
        deaths = 0
        for start in range(STARTS):
            with log.open("ab") as output:
                process = subprocess.Popen(
                    [PYTHON, "-m", "tests.support.poison_worker", "--role", "service", "--service", SERVICE,
                     "--broker", "rabbitmq", "--concurrency", "2"],
                    env={**env, "WORKER_ID": f"poisoned-{start}"}, stdout=output, stderr=output, cwd=REPOSITORY)
            until_dead_or_answered(process, conn, tasks, log)
            if process.returncode == -signal.SIGKILL:
                deaths += 1
            elif all(task_rows(conn, tasks).values()):
                break
        rows = task_rows(conn, tasks)
        assert rows[poison.task_id], f"the poison task is unanswered after {deaths} deaths of its worker:\n" + \
            "\n".join(log.read_text().splitlines()[-40:])
        dead_lettered = depth(admin, queue + ".dlq")
    # The first delivery's loss is not counted (nothing was written for it: the hot path); each later one that died
    # while it ran is, and after the task's attempts (2) of those it is recorded instead of run again.
    assert deaths == 3, log.read_text()
    [(status, error_message, data)] = rows[poison.task_id]
    assert status == "error"
    assert error_message.startswith("the worker died handling it twice"), error_message
    assert data["error"]["kind"] == "worker_died"
    assert dead_lettered == 1
    for good in goods:
        assert [row[0] for row in rows[good.task_id]] == ["success"], (good, rows[good.task_id])
    assert conn.execute("SELECT count(*) FROM service_tasks_in_flight").fetchone() == (0,), "ledger entries left"


def test_only_a_redelivered_start_that_never_finished_counts_as_a_death(conn: psycopg.Connection,
                                                                        pool: ConnectionPool, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images").fetchone()
    columns = ("image_id", "image_filename", "image_path", "image_url")
    task, other = (Task.for_image(dict(zip(columns, image, strict=True)), catalog[name]) for name in ("yolov8", "ocr"))
    assert enter_in_flight(conn, [task]).tasks == [task]
    deaths = DeathsInLedger(pool, ["yolov8", "ocr"])
    assert deaths.starts(task) == 0, "a first delivery writes nothing: its loss is not counted"
    assert deaths.starts(task) == 1, "the redelivery before started and never finished: it died running"
    deaths.hands_on(task)  # a retry, a task given back: it did not die
    assert deaths.starts(task) == 1
    assert deaths.starts(other) == 0, "a task without an entry (another producer's) is entered"
    for done in (task, other):
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, %s, %s, '{}', "
                     "'success')", (done.image_id, done.service_name, done.task_id))
    assert conn.execute("SELECT count(*) FROM service_tasks_in_flight").fetchone() == (0,), "the rows remove them"
    assert deaths.starts(task) is None, "an answered task is not counted, nor entered again"
    assert conn.execute("SELECT count(*) FROM service_tasks_in_flight").fetchone() == (0,)


class CountedDeaths:
    """DeliveryDeaths in memory, as the ledger counts them (one task's record; `clean` as clean_delivery_starts)."""

    def __init__(self, deaths: int = 0) -> None:
        self.deaths, self.running, self.starts_recorded = deaths, False, 0

    def starts_clean(self, task: Task) -> int | None:
        if self.deaths or self.running:
            return None
        self.running, self.starts_recorded = True, self.starts_recorded + 1
        return 0

    def starts(self, task: Task) -> int | None:
        self.deaths += self.running
        self.running, self.starts_recorded = True, self.starts_recorded + 1
        return self.deaths

    def hands_on(self, task: Task) -> None:
        self.running = False


def redelivered(task: Task) -> Delivery:
    return Delivery(connection=None, mailbox=None, channel=None, queue=task.queue_name, tag=1,  # type: ignore[arg-type]
                    body=b"", properties=pika.BasicProperties(), attempt=1, redelivered=True, task=task)


def test_a_redelivered_task_given_back_or_retried_is_no_death_and_at_the_bound_it_is_not_run() -> None:
    task = Task("7c6f1bde-1f5a-4b8e-9f67-0d4f0b7f5a11", 1, "a.jpg", "/a.jpg", None, "now", "yolov8", "queue_yolov8")
    deaths = CountedDeaths()
    watch = PoisonWatch(deaths, 2, threading.Event())
    for outcome in (Outcome.REQUEUE, Outcome.RETRY, Outcome.REQUEUE):
        assert watch.run(redelivered(task), task, lambda outcome=outcome: outcome) is outcome
    assert (deaths.deaths, deaths.running) == (0, False)
    ran: list[int] = []
    for _ in range(2):  # started, and never finished: the worker died under it
        watch.run(redelivered(task), task, lambda: ran.append(1) or Outcome.ACK)
        deaths.running = True
    with pytest.raises(PoisonInput, match="the worker died handling it twice"):
        watch.run(redelivered(task), task, lambda: ran.append(1) or Outcome.ACK)
    assert len(ran) == 2, "at the bound the task is not run again"


def test_a_redelivered_task_waiting_for_another_to_run_alone_is_given_back_unstarted_when_the_worker_stops() -> None:
    task = Task("7c6f1bde-1f5a-4b8e-9f67-0d4f0b7f5a12", 1, "a.jpg", "/a.jpg", None, "now", "yolov8", "queue_yolov8")
    deaths, stopping = CountedDeaths(deaths=1), threading.Event()  # a suspect: it runs alone
    watch = PoisonWatch(deaths, 5, stopping)
    running, release = threading.Event(), threading.Event()

    def first() -> Outcome:
        running.set()
        release.wait(10)
        return Outcome.ACK

    thread = threading.Thread(target=watch.run, args=(redelivered(task), task, first))
    thread.start()
    running.wait(10)
    stopping.set()
    assert watch.run(redelivered(task), task, lambda: Outcome.ACK) is Outcome.REQUEUE
    assert deaths.starts_recorded == 1, "the second waited, was not started, and is not counted"
    release.set()
    thread.join(10)


def test_redelivered_tasks_with_a_clean_record_run_side_by_side_and_suspects_alone() -> None:
    """A crash of the RabbitMQ node flags every message it recovers as redelivered; run one at a time, a whole
    backlog went at one task per worker process (the chaos run via RabbitMQ took twice as long and more)."""
    tasks = [Task(f"7c6f1bde-1f5a-4b8e-9f67-0d4f0b7f5a2{n}", n, "a.jpg", "/a.jpg", None, "now", "yolov8",
                  "queue_yolov8") for n in range(4)]
    records = {task.task_id: CountedDeaths() for task in tasks}

    class PerTask:
        def starts_clean(self, task: Task) -> int | None:
            return records[task.task_id].starts_clean(task)

        def starts(self, task: Task) -> int | None:
            return records[task.task_id].starts(task)

        def hands_on(self, task: Task) -> None:
            records[task.task_id].hands_on(task)

    watch = PoisonWatch(PerTask(), 5, threading.Event())

    def together(chosen: list[Task]) -> list[bool]:
        """Each task's handler waits up to 3 s for all of them to be running at once."""
        barrier = threading.Barrier(len(chosen), timeout=3)
        met: list[bool] = []

        def handle() -> Outcome:
            try:
                barrier.wait()
                met.append(True)
            except threading.BrokenBarrierError:
                met.append(False)
            return Outcome.ACK

        threads = [threading.Thread(target=watch.run, args=(redelivered(task), task, handle)) for task in chosen]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(40)
        return met

    assert together(tasks[:3]) == [True, True, True], "clean records wait for one another"
    suspect = records[tasks[3].task_id]
    suspect.deaths = 1  # one of its deliveries died running
    # tasks[0] is marked running from above, as a delivery the worker died under leaves it: both are suspects
    assert together([tasks[0], tasks[3]]) == [False, False], "two suspects ran side by side"
    assert suspect.deaths == 1 and suspect.starts_recorded == 1


def test_only_a_task_with_a_clean_record_starts_as_clean(conn: psycopg.Connection, pool: ConnectionPool,
                                                         catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "chelsea.jpg"])
    image = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images").fetchone()
    columns = ("image_id", "image_filename", "image_path", "image_url")
    task, other = (Task.for_image(dict(zip(columns, image, strict=True)), catalog[name]) for name in ("yolov8", "ocr"))
    enter_in_flight(conn, [task])
    deaths = DeathsInLedger(pool, ["yolov8", "ocr"])
    assert deaths.starts_clean(task) == 0, "a clean record: marked running"
    assert deaths.starts_clean(task) is None, "the mark of a delivery that never finished: a suspect"
    assert deaths.starts(task) == 1
    deaths.hands_on(task)
    assert deaths.starts_clean(task) is None, "a death on record: a suspect"
    assert conn.execute("SELECT deaths, running_since IS NULL FROM service_tasks_in_flight WHERE task_id = %s",
                        (task.task_id,)).fetchone() == (1, True), "a suspect's look marks nothing"
    assert deaths.starts_clean(other) == 0, "a task without an entry (another producer's) is entered"


def recovered(amqp_url: str, queue: str) -> bool:
    """Whether the node has `queue` again after a crash (NOT_FOUND until it recovered it)."""
    with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
        return queue_depth(connection.channel(), queue)[0] is not None


def test_after_a_crash_of_the_rabbitmq_node_its_backlog_runs_side_by_side(
        private_rabbitmq: PrivateRabbitMQ, database_url: str, conn: psycopg.Connection, catalog: Catalog,
        tmp_path: Path) -> None:
    """The node flags every message it recovers after a crash as redelivered (not only those delivered before): run
    one at a time as suspects, a backlog went at one task per worker process (the chaos run took twice as long)."""
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for number in range(8):
        shutil.copy(SAMPLES / "chelsea.jpg", pictures / f"backlog-{number}.jpg")
    add_paths(conn, [pictures])
    columns = ("image_id", "image_filename", "image_path", "image_url")
    images = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images ORDER BY image_id")
    amqp_url = private_rabbitmq.amqp_url
    with running_farm(catalog, services=[SERVICE], latency_ms=300) as (farm, shifted), \
            bench_environment(shifted, database_url, amqp_url) as environment:
        queue = next(name for name in environment.queue_names if name.endswith(SERVICE))
        tasks = [Task(**{**Task.for_image(dict(zip(columns, image, strict=True)), shifted[SERVICE]).to_message(),
                         "queue_name": queue}) for image in images.fetchall()]
        private_rabbitmq.declare_for_good([queue])
        with RabbitMQBroker(amqp_url) as broker:
            assert publish_in_flight(conn, broker, tasks, unless_answered=False) == tasks
        private_rabbitmq.restart(crash=True)  # SIGKILL, then a start on the same data: nothing was ever delivered
        wait_until(lambda: recovered(amqp_url, queue), timeout=60, message=lambda: f"{queue} back after the crash")
        with pika.BlockingConnection(pika.URLParameters(amqp_url)) as connection:
            method, _, _ = connection.channel().basic_get(queue, auto_ack=False)
            assert method is not None and method.redelivered, "the node no longer flags what it recovers"
        log = tmp_path / "worker.log"
        with log.open("ab") as output:
            worker = subprocess.Popen([PYTHON, "-m", "windmill", "worker", "--role", "service", "--service", SERVICE,
                                       "--broker", "rabbitmq", "--concurrency", "4"],
                                      env={**environment.env, "PYTHONPATH": str(REPOSITORY),
                                           "WORKER_ID": "after-the-crash", "LOG_LEVEL": "INFO"},
                                      stdout=output, stderr=output)
        try:
            wait_until(lambda: all(task_rows(conn, tasks).values()), timeout=60,
                       message=lambda: f"every task answered\n{log.read_text()}")
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        peak = farm.load_stats()[SERVICE].peak_held
    assert peak >= 2, f"the service held at most {peak} of the backlog's requests at once (4 handler threads)"
