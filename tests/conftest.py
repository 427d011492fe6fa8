"""Shared fixtures: a real PostgreSQL (a private cluster started for the session, or
WINDMILL_TEST_DATABASE_URL), a migrated test database, and a clean slate per test."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from windmill.catalog import Catalog, load_catalog
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.embedded import EmbeddedPostgres
from windmill.db.schema import init_database

pytest_plugins = ["tests.rabbitmq_fixtures", "tests.browser_fixtures"]
TEST_DATABASE = "windmill_test"
REPOSITORY = Path(__file__).resolve().parent.parent
# Everything a test writes and commits lives in these tables; services stay (synced from the catalog).
_WRITABLE_TABLES = ("images, results, merged_boxes, consensus, postprocessing, jobs, workers, service_tasks_in_flight, "
                    "service_tasks_unconfirmed, service_answer_counts, service_answer_count_deltas, "
                    "service_answer_minutes, follow_positions, postprocessing_counts, postprocessing_count_deltas")


# Where the tests' commands look for the system's settings file: nowhere, so a host with an
# /etc/windmill/windmill.env (a deployed one) does not hand its settings to the tests.
NO_SYSTEM_ENV_FILE = str(Path(tempfile.gettempdir()) / "windmill-tests-no-system.env")


@pytest.fixture(scope="session", autouse=True)
def no_system_env_file() -> Iterator[None]:
    previous = os.environ.get("WINDMILL_SYSTEM_ENV_FILE")
    os.environ["WINDMILL_SYSTEM_ENV_FILE"] = NO_SYSTEM_ENV_FILE
    yield
    if previous is None:
        os.environ.pop("WINDMILL_SYSTEM_ENV_FILE", None)
    else:
        os.environ["WINDMILL_SYSTEM_ENV_FILE"] = previous


@pytest.fixture(scope="session")
def server_conninfo() -> Iterator[str]:
    """A PostgreSQL server for the whole session: configured, or a private cluster we start and stop."""
    configured = os.environ.get("WINDMILL_TEST_DATABASE_URL")
    if configured:
        if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
            # The tests' databases and roles have fixed names: on one server, test processes would take each
            # other's. Each process's own private cluster is what lets them run side by side.
            pytest.fail("WINDMILL_TEST_DATABASE_URL is one server for every test process; run the tests in one "
                        "process (-n 0)", pytrace=False)
        yield configured
        return
    from windmill.db.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="windmill-test-") as home:
        cluster = EmbeddedPostgres(Path(home), fast=True)
        conninfo = cluster.acquire()
        try:
            yield conninfo
        finally:
            cluster.discard()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


def _fresh_database(server_conninfo: str, name: str) -> str:
    with psycopg.connect(server_conninfo, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(server_conninfo, dbname=name)


@pytest.fixture(scope="session")
def database_url(server_conninfo: str, catalog: Catalog) -> str:
    """A migrated test database; its libpq URL is what worker subprocesses get as WINDMILL_DATABASE_URL."""
    conninfo = _fresh_database(server_conninfo, TEST_DATABASE)
    with Database(conninfo).connect() as conn:
        init_database(conn, catalog)
    return conninfo_to_url(conninfo)


@pytest.fixture
def empty_database(server_conninfo: str) -> str:
    """A database with no schema at all (for migration tests)."""
    return _fresh_database(server_conninfo, "windmill_migrations_test")


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The test database, emptied before each test (TRUNCATE: these tests commit, notify and lock)."""
    db = Database(database_url, application_name="windmill-tests")
    with db.connect() as conn:
        conn.execute(f"TRUNCATE {_WRITABLE_TABLES} RESTART IDENTITY CASCADE")
        conn.execute("UPDATE backfill_state SET after_image_id = 0, laps = 0")  # one row, kept: the walk restarts
    yield db


@pytest.fixture
def conn(database: Database) -> Iterator[psycopg.Connection]:
    with database.connect() as connection:
        yield connection


@pytest.fixture
def pool(database: Database) -> Iterator:
    with database.pool(max_size=4, name="tests") as connection_pool:
        yield connection_pool


@pytest.fixture
def away_cluster(tmp_path: Path, catalog: Catalog) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A migrated cluster of the test's own, and its conninfo; the test crashes and starts it. Each commit is
    written to the WAL before it returns (a fast cluster's asynchronous commits, written a fifth of a second later,
    were lost with the crash: the migrations themselves, at times), though not flushed to disk: the machine stays up."""
    cluster = EmbeddedPostgres(tmp_path / "pg", fast=True, settings={"synchronous_commit": "on"})
    conninfo = cluster.acquire()
    with Database(conninfo).connect() as conn:
        init_database(conn, catalog)
    yield cluster, conninfo
    cluster.discard()


@pytest.fixture
def worker_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for windmill subprocesses: the test database, no broker, a private home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WINDMILL_", "DB_", "QUEUE_"))}
    env.update({
        "WINDMILL_DATABASE_URL": database_url,
        "WINDMILL_HOME": str(tmp_path / "home"),
        "PYTHONPATH": os.pathsep.join([str(REPOSITORY), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "LOG_LEVEL": "INFO",
        "WINDMILL_SYSTEM_ENV_FILE": NO_SYSTEM_ENV_FILE,
    })
    return env


@pytest.fixture
def run(database: Database, worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`windmill-cli` in this process against the test database, from an empty working directory."""
    from click.testing import CliRunner

    from windmill.commands import main

    monkeypatch.chdir(tmp_path)
    for key in ("WINDMILL_DATABASE_URL", "WINDMILL_HOME"):
        monkeypatch.setenv(key, worker_env[key])

    def invoke(*args: str):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    return invoke


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02,
               message: str | Callable[[], str] = "condition") -> object:
    """Poll a predicate until it is truthy; fail the test with `message` after `timeout` seconds (a callable
    message is called then, so it can say how far things got)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message() if callable(message) else message}")
        time.sleep(interval)


PYTHON = sys.executable


def signal_a_thread_not_main(pid: int, signum: int) -> None:
    """Send `signum` to one of process `pid`'s threads other than its main thread (tgkill), as the kernel sometimes
    hands a process's signal to whichever thread it finds ready: Python's handler still has to run in the main one."""
    import ctypes

    tgkill = ctypes.CDLL(None, use_errno=True).tgkill  # glibc 2.30 and newer
    for _ in range(50):  # a thread may end between the listing and the signal
        others = sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task") if int(tid) != pid)
        if others and tgkill(pid, others[-1], signum) == 0:
            return
        time.sleep(0.1)
    pytest.fail(f"process {pid} has no thread besides its main one to signal")
