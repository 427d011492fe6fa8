"""Several hosts: a worker on a host of its own (a network namespace joined to this one by a veth link on a
private test subnet) reaches PostgreSQL and the stand-in farm over the link. Cutting the link makes its leases
expire and its jobs finish on another host; restoring it, the worker reconnects and takes new jobs again.
Workers coordinate only through PostgreSQL (DESIGN: scaling out), so this is all a second machine needs.

Skipped, with the reason, where network namespaces cannot be created (no iproute2, no CAP_NET_ADMIN)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PYTHON, REPOSITORY, wait_until
from windmill.bench.chaos import write_catalog
from windmill.bench.stage import copy_samples
from windmill.broker import JobTableBroker
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.embedded import EmbeddedPostgres
from windmill.db.schema import init_database
from windmill.errors import WindmillError
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.simfarm import SimFarm

SERVICE = "yolov8"
QUEUE = f"queue_{SERVICE}"
LEASE_S = 4
FARM_LATENCY_MS = 1500  # long enough that the remote worker is always holding jobs when its link is cut
# The remote worker's libpq notices a dead link within seconds (keepalives for idle connections, a send timeout
# for busy ones) instead of the kernel's default of many minutes: what any multi-host deployment should set.
LINK_AWARE = "keepalives=1&keepalives_idle=1&keepalives_interval=1&keepalives_count=3&tcp_user_timeout=3000"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass(frozen=True)
class Link:
    """A worker host: network namespace `namespace`, reached over the veth pair host_if ↔ its peer."""

    namespace: str
    host_if: str
    host_address: str
    worker_address: str

    def cut(self) -> None:
        ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        ip("link", "set", self.host_if, "up")

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *args]


def _free_subnet() -> int:
    used = ip("-4", "-o", "addr").stdout
    for _ in range(50):
        third = random.randrange(0, 256)
        if f" 10.213.{third}." not in used:
            return third
    raise RuntimeError("no free 10.213.x.0/30 test subnet")


@pytest.fixture
def worker_host() -> Iterator[Link]:
    """A namespace linked to this host by veth on 10.213.<x>.0/30 (.1 here, .2 there); removed afterwards."""
    if shutil.which("ip") is None:
        pytest.skip("several-hosts test: `ip` (iproute2) is not installed, so no network namespace can be made")
    tag = uuid.uuid4().hex[:6]
    namespace = f"windmill-host-{tag}"
    made = ip("netns", "add", namespace, check=False)
    if made.returncode != 0:
        pytest.skip(f"several-hosts test: cannot create a network namespace here ({made.stderr.strip()}); it needs "
                    "root or CAP_SYS_ADMIN and CAP_NET_ADMIN")
    host_if, peer_if = f"wmh{tag}a", f"wmh{tag}b"
    third = _free_subnet()
    link = Link(namespace, host_if, f"10.213.{third}.1", f"10.213.{third}.2")
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        ip("link", "set", peer_if, "netns", namespace)
        ip("addr", "add", f"{link.host_address}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        for step in (("addr", "add", f"{link.worker_address}/30", "dev", peer_if), ("link", "set", peer_if, "up"),
                     ("link", "set", "lo", "up")):
            ip("netns", "exec", namespace, "ip", *step)
        yield link
    finally:
        ip("link", "del", host_if, check=False)  # removes both ends
        ip("netns", "del", namespace, check=False)


@pytest.fixture
def link_database(worker_host: Link, catalog: Catalog) -> Iterator[str]:
    """A private cluster listening on 127.0.0.1 and on the link's host address, trusting the worker host only.
    (The session's cluster listens on loopback alone; this one is what a server on a network looks like.)"""
    with tempfile.TemporaryDirectory(prefix="windmill-hosts-") as home:
        os.chmod(home, 0o755)  # the server's unprivileged user keeps its data inside, removed with the rest
        settings = {
            "listen_addresses": f"127.0.0.1,{worker_host.host_address}",
            # A client cut off mid-transaction must not hold its locks until the kernel gives up on it. Keepalives
            # are not sent while sent data waits for an acknowledgement (a claim's rows sent just before the cut,
            # its Sync lost): only the send timeout frees the claimed jobs then (the suite saw them held for 90 s).
            "idle_in_transaction_session_timeout": "10s",
            "tcp_keepalives_idle": "2", "tcp_keepalives_interval": "1", "tcp_keepalives_count": "3",
            "tcp_user_timeout": "3000",
        }
        cluster = EmbeddedPostgres(Path(home), fast=True, settings=settings)
        conninfo = cluster.acquire()
        try:
            hba = cluster.status().data_dir / "pg_hba.conf"
            with hba.open("a") as rules:
                rules.write(f"host all all {worker_host.worker_address}/32 trust\n")
            with Database(conninfo).connect() as conn:
                conn.execute("SELECT pg_reload_conf()")
                init_database(conn, catalog)
            yield conninfo
        finally:
            cluster.discard()


def worker_environment(database_url: str, catalog_path: Path, home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WINDMILL_", "DB_", "QUEUE_"))}
    env.update({"WINDMILL_DATABASE_URL": database_url, "WINDMILL_SERVICE_CONFIG": str(catalog_path),
                "WINDMILL_HOME": str(home), "LOG_LEVEL": "INFO",
                "PYTHONPATH": os.pathsep.join([str(REPOSITORY), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    return env


def service_worker(worker_id: str, env: dict[str, str], log: Path, prefix: tuple[str, ...] = ()
                   ) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:
        return subprocess.Popen([*prefix, PYTHON, "-m", "windmill", "worker", "--role", "service", "--service", SERVICE,
                                 "--broker", "postgres", "--concurrency", "2", "--batch-size", "4",
                                 "--lease-seconds", str(LEASE_S)],
                                env={**env, "WORKER_ID": worker_id}, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def submit_images(conn: psycopg.Connection, database: Database, catalog: Catalog, folder: Path, count: int) -> None:
    """Add `count` more photographs and queue one task each for the service in the job table."""
    folder.mkdir()
    copy_samples(folder, count)
    add_paths(conn, [folder])
    with database.connect() as reader, database.pool(max_size=1, name="submit") as pool:
        submit(reader, conn, JobTableBroker(JobQueue(pool)), [catalog[SERVICE]])


def wait_for_every_job(conn: psycopg.Connection, message: str, timeout: float) -> None:
    """Wait until every task of the service is done (nobody here runs the merge and consensus jobs its answers
    cause); on timeout, fail with the unfinished ones (what each waits for says why)."""
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT count(*) FROM jobs WHERE state <> 'done' AND queue = %s", (QUEUE,)).fetchone()[0]:
        if time.monotonic() > deadline:
            unfinished = conn.execute("SELECT id, state::text, attempts, lease_owner, lease_expires_at - now(), "
                                      "run_after - now(), last_error FROM jobs WHERE state <> 'done' AND queue = %s",
                                      (QUEUE,)).fetchall()
            pytest.fail(f"timed out after {timeout}s waiting for {message}; unfinished: {unfinished}")
        time.sleep(0.2)


def test_a_cut_off_worker_host_loses_its_jobs_to_another_host_and_rejoins_when_the_link_returns(
        worker_host: Link, link_database: str, catalog: Catalog, tmp_path: Path) -> None:
    database = Database(link_database, application_name="hosts-test")
    conn = database.connect()
    local_catalog, remote_catalog = tmp_path / "local.json", tmp_path / "remote.json"
    farms: list[SimFarm] = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        # The stand-in answers on both sides of the link, slowly, on the same ports.
        for _ in range(20):
            offset = random.randrange(10_000, 50_000, 100)
            try:
                for host in ("127.0.0.1", worker_host.host_address):
                    farms.append(SimFarm(catalog, services=[SERVICE], host=host, port_offset=offset,
                                         latency_ms=FARM_LATENCY_MS))
                    farms[-1].start()
                break
            except WindmillError:  # a port of this offset is taken on one side: try another
                for farm in farms:
                    farm.stop()
                farms.clear()
        assert farms, "no free port range for the stand-in farm"
        shifted = write_catalog(catalog, local_catalog, queue_prefix="queue_", port_offset=offset, timeout_s=5)
        write_catalog(catalog, remote_catalog, queue_prefix="queue_", port_offset=offset, timeout_s=5,
                      host=worker_host.host_address)
        url = conninfo_to_url(link_database)
        remote_url = url.replace("127.0.0.1", worker_host.host_address, 1) + "?" + LINK_AWARE
        remote_env = worker_environment(remote_url, remote_catalog, tmp_path / "remote-home")
        local_env = worker_environment(url, local_catalog, tmp_path / "local-home")

        # 1. The worker on the other host claims jobs and answers them over the link.
        submit_images(conn, database, shifted, tmp_path / "first", 16)
        remote = service_worker("remote-worker", remote_env, tmp_path / "remote.log", worker_host.command())
        processes.append(remote)

        def remote_is_working() -> bool:
            answered, holding = conn.execute(
                """SELECT (SELECT count(*) FROM results WHERE worker_id = 'remote-worker'),
                          (SELECT count(*) FROM jobs WHERE state = 'running' AND lease_owner = 'remote-worker')"""
            ).fetchone()
            return answered >= 1 and holding >= 1

        wait_until(remote_is_working, timeout=60, interval=0.05, message="the remote worker to answer over the link")
        peers = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s",
                             (worker_host.worker_address,)).fetchone()[0]
        assert peers >= 1, "the remote worker's connections come over the link"

        # 2. Cut the link while it holds leased jobs: they finish on this host once the leases expire.
        worker_host.cut()
        # A statement that reached the server before the cut still runs to its end: a completion on the wire then
        # commits after the cut (once seen as a job taken for held, done with no expired lease). Held are the jobs
        # still running once no backend of the remote worker runs a statement (one done but for sending its
        # answer waits in ClientWrite: its work is committed).
        wait_until(lambda: conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s AND state = 'active' "
            "AND wait_event IS DISTINCT FROM 'ClientWrite'", (worker_host.worker_address,)).fetchone()[0] == 0,
            timeout=30, interval=0.05, message="the remote worker's statements that reached the server to end")
        held = [row[0] for row in conn.execute(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_owner = 'remote-worker'")]
        assert held
        local = service_worker("local-worker", local_env, tmp_path / "local.log")
        processes.append(local)
        wait_for_every_job(conn, "every job to finish on this host", timeout=90)
        stop(local)
        for job_id, last_error, state in conn.execute(
                "SELECT id, last_error, state::text FROM jobs WHERE id = ANY(%s)", (held,)):
            assert state == "done" and "lease of worker remote-worker expired" in (last_error or ""), (job_id,
                                                                                                     last_error)
        writers = [row[0] for row in conn.execute(
            "SELECT r.worker_id FROM jobs j JOIN results r ON r.task_id = (j.payload->>'task_id')::uuid "
            "WHERE j.id = ANY(%s)", (held,))]
        assert len(writers) == len(held) and "local-worker" in writers
        # Nothing lost, nothing twice: one answer per task, whoever wrote it.
        assert conn.execute("SELECT count(*), count(DISTINCT image_id) FROM results").fetchone() == (16, 16)

        # 3. Restore the link: the same remote worker process reconnects and takes new work.
        restored_at = conn.execute("SELECT now()").fetchone()[0]
        worker_host.restore()
        submit_images(conn, database, shifted, tmp_path / "second", 6)
        wait_until(lambda: conn.execute("SELECT count(*) FROM results WHERE worker_id = 'remote-worker' "
                                        "AND result_created > %s", (restored_at,)).fetchone()[0] >= 1,
                   timeout=90, interval=0.2, message="the remote worker to rejoin")
        assert remote.poll() is None, "the remote worker rode out the cut without exiting"
        wait_for_every_job(conn, "the new jobs to finish", timeout=60)
        assert conn.execute("SELECT count(*), count(DISTINCT image_id) FROM results").fetchone() == (22, 22)
        assert conn.execute("SELECT heartbeat_at > %s FROM workers WHERE worker_id = 'remote-worker'",
                            (restored_at,)).fetchone()[0]
    finally:
        for process in processes:
            stop(process)
        for farm in farms:
            farm.stop()
        conn.close()
