"""Submit by pages (issue 13 item 3): the images are walked by keyset on image_id, each page read in a short
transaction of its own; an interrupted submit resumes with --after-id and, with the ledger of tasks in flight,
queues every image × service pair exactly once, in either broker."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator

import pika
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, wait_until
from windmill.broker import Broker, JobTableBroker
from windmill.broker.rabbitmq import RabbitMQBroker
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.jobs import JobQueue
from windmill.producer import FIRST_PAGE, SubmitReport, page_sizes, submit

SERVICES = "nsfw2,metadata"


def register(conn: psycopg.Connection, count: int, *, first: int = 1) -> None:
    """`count` image rows (their files need not exist: nothing here fetches them)."""
    conn.execute("INSERT INTO images (image_filename, image_path) "
                 "SELECT format('p%%s.jpg', n), format('/pages/p%%s.jpg', n) "
                 "  FROM generate_series(%s::int, %s::int) AS n", (first, first + count - 1))


class Interrupted(Exception):
    """Stands for Ctrl-C after some pages (a KeyboardInterrupt would stop pytest itself)."""


def interrupt_after(pages: int) -> object:
    done = 0

    def progress(_images: int) -> None:
        nonlocal done
        done += 1
        if done == pages:
            raise Interrupted

    return progress


@pytest.fixture(params=["postgres", "rabbitmq"])
def broker_and_catalog(request: pytest.FixtureRequest, catalog: Catalog,
                       pool: ConnectionPool) -> Iterator[tuple[str, Catalog]]:
    if request.param == "postgres":
        yield "postgres", catalog
    else:
        amqp_url = request.getfixturevalue("amqp_url")
        yield amqp_url, request.getfixturevalue("private_queues")


def open_broker(where: str, pool: ConnectionPool) -> Broker:
    return JobTableBroker(JobQueue(pool)) if where == "postgres" else RabbitMQBroker(where)


def queued_pairs(where: str, conn: psycopg.Connection, catalog: Catalog) -> Counter[tuple[int, str]]:
    """Every task queued for SERVICES, as (image id, service); RabbitMQ's are taken off their queues."""
    services = catalog.select(SERVICES)
    if where == "postgres":
        return Counter(conn.execute(
            "SELECT image_id, payload ->> 'service_name' FROM jobs WHERE queue = ANY(%s)",
            ([service.queue_name for service in services],)).fetchall())
    pairs: Counter[tuple[int, str]] = Counter()
    connection = pika.BlockingConnection(pika.URLParameters(where))
    channel = connection.channel()
    for service in services:
        while (message := channel.basic_get(service.queue_name, auto_ack=True))[0] is not None:
            task = json.loads(message[2])
            pairs[(task["image_id"], task["service_name"])] += 1
    connection.close()
    return pairs


def test_an_interrupted_submit_resumed_after_its_last_id_queues_every_pair_once(
        broker_and_catalog: tuple[str, Catalog], database: Database, conn: psycopg.Connection,
        pool: ConnectionPool) -> None:
    where, catalog = broker_and_catalog
    services = catalog.select(SERVICES)
    register(conn, 7)
    report = SubmitReport()
    broker = open_broker(where, pool)
    with database.connect() as reader:
        # Three pages of two go out; the interruption comes before the third is reported done, as when the
        # process is killed between publishing a page and printing where it got.
        with pytest.raises(Interrupted):
            submit(reader, conn, broker, services, page_size=2, progress=interrupt_after(3), report=report)
        assert report.last_image_id == 6 and report.published == 12
        resumed = submit(reader, conn, broker, services, page_size=2, after_id=4)
    broker.close()
    assert (resumed.images, resumed.published, resumed.skipped_in_flight) == (3, 2, 4)
    assert resumed.last_image_id == 7
    assert queued_pairs(where, conn, catalog) == Counter(
        {(image_id, service.name): 1 for image_id in range(1, 8) for service in services})


def test_no_transaction_stays_open_between_pages_and_later_images_are_seen(
        database: Database, conn: psycopg.Connection, pool: ConnectionPool, catalog: Catalog) -> None:
    register(conn, 3)
    between_pages: list[tuple[str, object]] = []
    with database.connect() as reader, database.connect() as lookup:

        def progress(_images: int) -> None:
            # Every connection of the submit, between two pages: idle, outside any transaction.
            between_pages.extend(conn.execute(
                "SELECT state, xact_start FROM pg_stat_activity WHERE pid = ANY(%s)",
                ([reader.info.backend_pid, lookup.info.backend_pid],)).fetchall())
            if len(between_pages) == 2:  # after the first page: an image registered while the submit runs
                register(conn, 1, first=4)

        report = submit(reader, lookup, JobTableBroker(JobQueue(pool)), catalog.select("nsfw2"), page_size=1,
                        progress=progress)
    assert between_pages and all(state == "idle" and started is None for state, started in between_pages), \
        between_pages
    assert (report.images, report.published, report.last_image_id) == (4, 4, 4)


def test_pages_start_small_and_double_up_to_the_page_size() -> None:
    sizes = page_sizes(2000)
    assert [next(sizes) for _ in range(9)] == [16, 32, 64, 128, 256, 512, 1024, 2000, 2000]
    smaller = page_sizes(5)
    assert [next(smaller) for _ in range(3)] == [5, 5, 5]


def test_the_first_pages_tasks_are_queued_before_the_rest_is_read(
        database: Database, conn: psycopg.Connection, pool: ConnectionPool, catalog: Catalog) -> None:
    """A submit of thousands of images used to queue nothing until its first page of 2,000 was published: the
    workers sat idle for the first second. Now they can start on the first FIRST_PAGE images at once."""
    register(conn, 100)
    pages: list[int] = []
    queued_after_the_first_page: list[int] = []

    def progress(images: int) -> None:
        pages.append(images)
        if len(pages) == 1:
            queued_after_the_first_page.append(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])

    with database.connect() as reader, database.connect() as lookup:
        report = submit(reader, lookup, JobTableBroker(JobQueue(pool)), catalog.select("nsfw2"), progress=progress)
    assert pages == [FIRST_PAGE, 2 * FIRST_PAGE, 100 - 3 * FIRST_PAGE]
    assert queued_after_the_first_page == [FIRST_PAGE]
    assert report.published == 100


def test_submit_after_an_id_takes_only_later_images_and_says_where_it_got(run, conn: psycopg.Connection) -> None:
    register(conn, 5)
    done = run("submit", "--services", "nsfw2", "--broker", "postgres", "--after-id", "2", "--page-size", "2",
               "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert (report["images"], report["published"], report["last_image_id"]) == (3, 3, 5)
    assert conn.execute("SELECT array_agg(image_id ORDER BY image_id) FROM jobs").fetchone()[0] == [3, 4, 5]
    nothing = run("submit", "--services", "nsfw2", "--broker", "postgres", "--after-id", "5")
    assert nothing.exit_code == 1 and "no images to submit after id 5" in nothing.output


def test_submit_stopped_by_sigterm_names_the_id_to_resume_after_and_the_resumed_one_completes_it(
        conn: psycopg.Connection, worker_env: dict[str, str]) -> None:
    register(conn, 5000)
    argv = [PYTHON, "-m", "windmill", "submit", "--services", "nsfw2", "--broker", "postgres", "--page-size", "1"]
    process = subprocess.Popen(argv, env=worker_env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: conn.execute("SELECT count(*) FROM jobs").fetchone()[0], timeout=60,
                   message="the first page queued")
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1 and out == "" and "Traceback" not in err, err
    resume_after = int(err.rsplit("Resume with --after-id ", 1)[1].rstrip(".\n"))
    assert 0 < resume_after < 5000
    assert conn.execute("SELECT max(image_id) FROM jobs").fetchone()[0] == resume_after

    resumed = subprocess.run([*argv[:-1], "2000", "--after-id", str(resume_after)], env=worker_env, text=True,
                             capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Last image id done: 5000." in resumed.stdout
    assert conn.execute("SELECT count(*), count(DISTINCT image_id) FROM jobs").fetchone() == (5000, 5000)


def test_submit_asked_to_stop_while_rabbitmq_is_away_stops_at_once_instead_of_waiting_out_its_retries(
        conn: psycopg.Connection, worker_env: dict[str, str]) -> None:
    register(conn, 3)
    with socket.socket() as unused:  # a port nothing listens on: every connection is refused
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    env = {**worker_env, "WINDMILL_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{port}/%2F"}
    process = subprocess.Popen([PYTHON, "-m", "windmill", "submit", "--services", "nsfw2"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        while "will try to declare queues again" not in (line := process.stderr.readline()):
            assert line, "submit ended before it retried"
        process.send_signal(signal.SIGTERM)
        # Its retries would go on (for a broker never reached, three attempts over a second and a half; for one that
        # went away, ten, up to 30 s apart): the stop ends the wait at once.
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1 and out == "" and "Traceback" not in err, err
    assert f"Error: could not declare queues: stopped while RabbitMQ at 127.0.0.1:{port}/%2F was away" in err, err
