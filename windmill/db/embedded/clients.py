"""The registry of processes using the embedded cluster: one file per pid under ``<home>/postgres/clients``, holding
the process's start time so a recycled pid does not keep a dead client "alive". The last client to leave stops
the server; within one process, several users of the same cluster share one registration."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from windmill.db.embedded.system import pid_alive, start_time

logger = logging.getLogger(__name__)

# Registrations of this process, counted per run directory: several EmbeddedPostgres objects in one
# process share one pid file, which must stay until the last of them releases.
_holders: dict[str, int] = {}
_holders_lock = threading.Lock()


def _holder_key(run_dir: Path) -> str:
    # The pid is part of the key so that a forked child does not inherit its parent's count.
    return f"{os.getpid()}:{run_dir}"


def hold(run_dir: Path) -> None:
    """Count one more user of the cluster in this process."""
    with _holders_lock:
        key = _holder_key(run_dir)
        _holders[key] = _holders.get(key, 0) + 1


def let_go(run_dir: Path) -> int:
    """Count one user fewer in this process; returns how many other users of the cluster this process still has."""
    with _holders_lock:
        key = _holder_key(run_dir)
        _holders[key] -= 1
        others = _holders[key]
        if not others:
            del _holders[key]
    return others


class ClientRegistry:
    """The registrations of one cluster's client processes."""

    def __init__(self, clients_dir: Path) -> None:
        self.clients_dir = clients_dir

    def registrations(self) -> list[Path]:
        try:
            return [p for p in self.clients_dir.iterdir() if p.name.isdigit()]
        except FileNotFoundError:
            return []

    def register(self) -> None:
        """Register this process."""
        self.clients_dir.mkdir(exist_ok=True)
        pid = os.getpid()
        # The start time guards against a recycled pid keeping a dead client "alive".
        (self.clients_dir / str(pid)).write_text(start_time(pid) or "")
        logger.debug(
            "registered pid %d as an embedded PostgreSQL client", pid, extra={"action": "embedded_client_registered"}
        )

    def unregister(self) -> None:
        """Remove this process's registration."""
        (self.clients_dir / str(os.getpid())).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every registration (the server was stopped under them)."""
        for registration in self.registrations():
            registration.unlink(missing_ok=True)

    def live(self, *, prune: bool) -> list[int]:
        """The pids of registered processes still alive; with ``prune``, dead ones' registrations are removed."""
        live = []
        for registration in self.registrations():
            pid = int(registration.name)
            try:
                started = registration.read_text().strip() or None
            except FileNotFoundError:
                continue
            if pid_alive(pid, started):
                live.append(pid)
            elif prune:
                registration.unlink(missing_ok=True)
                logger.info("removed the registration of dead pid %d", pid, extra={"action": "embedded_client_pruned"})
        return sorted(live)
