"""CPU-seconds of processes read from /proc, for benchmarks that split a pipeline's cost by who spent it: the
worker processes, the PostgreSQL cluster (its postmaster and every backend it started, including the ones that
exited during the run), the stand-in farm and the RabbitMQ broker.

Reading /proc rather than getrusage lets a benchmark count processes that are still running (workers measured
from submit to the last product, not from start-up to shutdown) and processes that are not its children (the
cluster's backends).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg

from windmill.bench.processes import children_of
from windmill.db.queries import fetch_value

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
# Fields of /proc/<pid>/stat after the command name (index 0 is the state): utime, stime, cutime, cstime.
_UTIME, _STIME, _CUTIME, _CSTIME = 11, 12, 13, 14


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu(pid: int, *, reaped_children: bool = False) -> float:
    """CPU-seconds a live process has used (0 once it is gone); with `reaped_children`, plus those of the children
    it has waited for (a postmaster reaps every backend that exits, so its own and theirs add up)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    fields_used = (_UTIME, _STIME, _CUTIME, _CSTIME) if reaped_children else (_UTIME, _STIME)
    return sum(int(fields[index]) for index in fields_used) / _TICKS_PER_SECOND


def processes_cpu(pids: Iterable[int]) -> float:
    """CPU-seconds of some live processes (worker processes, the stand-in)."""
    return sum(process_cpu(pid) for pid in pids)


def tree_cpu(root: int, attempts: int = 5) -> float:
    """CPU-seconds of a server and every process it started: the root with its reaped children, and each live
    child with its own reaped children. The difference of two readings is what the server spent in between, backends
    that came and went included.

    A child reaped while its siblings are read would be in neither part (gone from /proc, and not yet in the root's
    reading, taken first): the root's count of reaped CPU is read again afterwards, and a reading it changed is
    taken again."""
    for _ in range(attempts):
        reaped = _reaped_cpu(root)
        total = process_cpu(root, reaped_children=True) + sum(
            process_cpu(child, reaped_children=True) for child in children_of(root))
        if _reaped_cpu(root) == reaped:
            break
    return total


def _reaped_cpu(pid: int) -> int:
    """The clock ticks of the children `pid` has waited for (0 once it is gone)."""
    fields = _stat(pid)
    return 0 if fields is None else int(fields[_CUTIME]) + int(fields[_CSTIME])


@dataclass(frozen=True)
class ServerProcesses:
    """A server running on this machine, by the process that started the others (a cluster's postmaster, a RabbitMQ
    node's Erlang VM); None as `root` when it runs elsewhere."""

    root: int | None

    def cpu(self) -> float | None:
        return None if self.root is None else tree_cpu(self.root)


def postgres_processes(conn: psycopg.Connection) -> ServerProcesses:
    """Our backend's parent is the postmaster. A server elsewhere (no such process here, or a process that is
    not PostgreSQL) gives None: its CPU cannot be read from this machine's /proc."""
    backend = fetch_value(conn, "bench_backend_pid")
    fields = _stat(backend)
    try:
        command = Path(f"/proc/{backend}/comm").read_text().strip()
    except OSError:
        command = ""
    if fields is None or not command.startswith("postgres"):
        return ServerProcesses(None)
    return ServerProcesses(int(fields[1]))


_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_LISTEN = "0A"  # the state of a listening socket in /proc/net/tcp


def rabbitmq_processes(amqp_url: str | None) -> ServerProcesses:
    """The RabbitMQ node a URL names when it runs on this machine: the process listening on its port (the node's
    Erlang VM, whose children are counted with it), so that another node here (a test's private one) is not taken
    for it. No root for another host, a port nobody here listens on, or no URL. (The job table's runs read it too:
    the node idles then, and what it spends is its own upkeep.)"""
    if not amqp_url:
        return ServerProcesses(None)
    parts = urlsplit(amqp_url)
    if (parts.hostname or "localhost") not in _LOCAL_HOSTS:
        return ServerProcesses(None)
    return ServerProcesses(_listening_process(parts.port or 5672))


def _listening_process(port: int) -> int | None:
    sockets = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                sockets.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir() if sockets else ():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in sockets for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return None
