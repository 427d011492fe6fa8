"""The chaos run's servers, all its own: a PostgreSQL cluster with production durability that it crashes with
SIGKILL, a RabbitMQ node it crashes the same way (windmill/bench/private_rabbitmq.py), the stand-in farm on free
ports, crashed the same way (every service down at once), and a probe connection that outlives the crashes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from windmill.bench.chaos.plan import FARM, POSTGRES, ChaosPlan
from windmill.bench.private_rabbitmq import PrivateRabbitMQ
from windmill.bench.processes import children_of, wait_gone
from windmill.bench.stage import cli_argv
from windmill.catalog import Catalog, load_catalog
from windmill.db.connect import Database
from windmill.db.embedded import EmbeddedPostgres
from windmill.db.queries import fetch_value, query
from windmill.errors import WindmillError
from windmill.simfarm.ports import restartable_offset

HOST = "127.0.0.1"
# What PostgreSQL's log says when it starts on the data of a server that did not shut down.
CRASH_RECOVERY_MARK = "automatic recovery in progress"
DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")


# -- the stand-in farm ------------------------------------------------------------------------------------------


def write_catalog(catalog: Catalog, path: Path, *, queue_prefix: str, port_offset: int, timeout_s: float,
                  host: str = HOST) -> Catalog:
    """The catalog every process of the run reads: the stand-in's address and ports, private queue names, short
    timeouts."""
    services = {
        service.name: {"host": host, "port": service.port + port_offset, "endpoint": service.endpoint,
                       "queue_prefix": queue_prefix, "category": service.category,
                       "service_type": ",".join(service.service_type), "description": service.description,
                       "enable_triggers": service.enable_triggers,
                       "enable_caption_scoring": service.enable_caption_scoring,
                       "enable_consensus_triggers": service.enable_consensus_triggers,
                       "timeout_s": timeout_s, "request_mode": service.request_mode, "prefetch": service.prefetch}
        for service in catalog.services
    }
    path.write_text(json.dumps({"services": services}, indent=2))
    return load_catalog(path)


class StandIn:
    """`windmill-cli farm serve` with the plan's faults and latency, in its own process (its own GIL), on the ports
    of `catalog`; crashed with SIGKILL and started again on the same ports (a service restarting)."""

    def __init__(self, catalog: Catalog, env: dict[str, str], plan: ChaosPlan, profile: Path, log: Path) -> None:
        self.ports = [service.port for service in catalog.services]
        self.env, self.log = env, log
        self.argv = cli_argv("farm", "serve", "--services", "full_catalog", "--error-rate", f"{plan.error_rate:g}",
                             "--timeout-rate", f"{plan.timeout_rate:g}", "--malformed-rate", f"{plan.malformed_rate:g}",
                             "--latency-profile", str(profile), "--seed", str(plan.seed))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> bool:
        """Serve, and wait until every port takes connections; False when a port was taken (it exited)."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while self.process.poll() is None and time.monotonic() < deadline and not _ports_accept(self.ports):
            time.sleep(0.2)
        if self.process.poll() is not None:
            return False
        if not _ports_accept(self.ports):
            self.crash()
            raise WindmillError(f"the stand-in farm did not open its ports within a minute; see {self.log}")
        return True

    def crash(self) -> None:
        """SIGKILL: every service gone at once, its requests in flight cut off."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.crash()


@contextmanager
def running_farm(catalog: Catalog, catalog_path: Path, env: dict[str, str], plan: ChaosPlan, log_dir: Path, *,
                 queue_prefix: str) -> Iterator[tuple[Catalog, StandIn]]:
    """The stand-in on a free port range; yields the catalog that points at it (already written to
    `catalog_path`) and the stand-in."""
    profile = catalog_path.with_name("latency_profile.json")
    profile.write_text(json.dumps({
        "description": "the chaos run: every service the same lognormal time per request, no capacity limit",
        "default": {"mean_ms": plan.latency_mean_ms, "jitter": plan.latency_jitter}}))
    highest = max(service.port for service in catalog.services)
    for _ in range(10):
        offset = restartable_offset(highest)  # not the plan's seed: two runs may share it; it crashes the farm
        shifted = write_catalog(catalog, catalog_path, queue_prefix=queue_prefix,
                                port_offset=offset, timeout_s=plan.service_timeout_s)
        farm = StandIn(shifted, env, plan, profile, log_dir / "farm.log")
        if not all(_port_free(port) for port in farm.ports) or not farm.start():
            continue  # taken, or lost a port to someone between our check and its bind: another range
        try:
            yield shifted, farm
        finally:
            farm.stop()
        return
    raise WindmillError("no free port range for the stand-in farm")


def _ports_accept(ports: Sequence[int]) -> bool:
    for port in ports:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
        except OSError:
            return False
    return True


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


# -- PostgreSQL -------------------------------------------------------------------------------------------------


@contextmanager
def durable_cluster(home: Path) -> Iterator[EmbeddedPostgres]:
    """A cluster of our own under `home` with production durability: fsync, synchronous_commit and
    full_page_writes on (PostgreSQL's defaults; `fast` would turn them off), so a crash loses no committed row."""
    cluster = EmbeddedPostgres(home, fast=False)
    cluster.acquire()
    try:
        yield cluster
    finally:
        cluster.discard()


def durability(conn: psycopg.Connection) -> dict[str, str]:
    """The server's durability settings as it reports them."""
    return {name: fetch_value(conn, "show_setting", {"name": name}) for name in DURABILITY_SETTINGS}


def crash_postgres(cluster: EmbeddedPostgres) -> None:
    """SIGKILL the postmaster and every process it started, at once: no shutdown checkpoint, no backend finishing
    its statement, as when the machine dies. The next start replays the WAL (crash recovery)."""
    data_dir = cluster.status().data_dir
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError) as error:
        raise WindmillError(f"no running PostgreSQL to crash in {data_dir}") from error
    doomed = [postmaster, *children_of(postmaster)]
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in doomed:
        wait_gone(pid)


def start_postgres(cluster: EmbeddedPostgres, conninfo: str) -> None:
    """Start the cluster again on its data and port (the workers know no other)."""
    if cluster.acquire() != conninfo:
        raise WindmillError("PostgreSQL came back on another port; the workers cannot follow it")


def crash_recoveries(cluster: EmbeddedPostgres) -> int:
    """How many times the server's log says it started with crash recovery."""
    try:
        return cluster.status().log_file.read_text(errors="replace").count(CRASH_RECOVERY_MARK)
    except OSError:
        return 0


class Probe:
    """The runner's own connection for progress queries; it survives the PostgreSQL crashes by reconnecting."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.conn: psycopg.Connection | None = None

    def value(self, name: str) -> Any:
        """The single value of a named query, or None while the database is unreachable."""
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self.database.connect()
            row = self.conn.execute(query(name)).fetchone()
            return None if row is None else row[0]
        except (psycopg.OperationalError, WindmillError):
            self.close()
            return None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                self.conn.close()
            self.conn = None


@dataclass
class Servers:
    """The run's servers and how to crash and start each."""

    cluster: EmbeddedPostgres
    conninfo: str
    rabbitmq: PrivateRabbitMQ
    farm: StandIn
    probe: Probe

    def crash(self, server: str) -> None:
        if server == POSTGRES:
            self.probe.close()
            crash_postgres(self.cluster)
        elif server == FARM:
            self.farm.crash()
        else:
            self.rabbitmq.crash()

    def start(self, server: str) -> None:
        if server == POSTGRES:
            start_postgres(self.cluster, self.conninfo)
        elif server == FARM:
            if not self.farm.start():
                raise WindmillError(f"the stand-in farm could not take its ports again; see {self.farm.log}")
        else:
            self.rabbitmq.start()
