"""The machine the embedded server runs on: the unprivileged account root runs it as, whether that account can
reach a directory, which processes are alive or serve a data directory, free ports. Linux first: where there is
no /proc, a pid that answers a signal counts as alive."""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
# PostgreSQL refuses to run as root, so root runs it as this account.
SERVER_ACCOUNT = ("nobody", "nogroup", 65534)


@dataclass(frozen=True)
class ServerAccount:
    uid: int
    gid: int
    name: str
    gids: frozenset[int] = field(default_factory=frozenset)


def _umask() -> int:
    """This process's umask, read without changing it (/proc; 022, the usual one, where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def server_account() -> ServerAccount | None:
    """The account the server runs as when we are root; None otherwise (it runs as us)."""
    if os.geteuid() != 0:
        return None
    user, group, fallback = SERVER_ACCOUNT
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        uid = fallback
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        gid = fallback
    return ServerAccount(uid=uid, gid=gid, name=user, gids=frozenset({gid}))


def traversable_by(path: Path, account: ServerAccount) -> bool:
    """Whether ``account`` can enter ``path`` and every directory above it (mode bits; ACLs ignored). A directory
    not there yet counts as we would create it (ours, the mode our umask leaves), so the answer is the same before
    the home is made as after."""
    path = path.resolve()
    for directory in (path, *path.parents):
        try:
            info = directory.stat()
        except FileNotFoundError:
            if not (0o777 & ~_umask()) & (stat.S_IXGRP if os.getegid() in account.gids else stat.S_IXOTH):
                return False
            continue
        except OSError:
            return False
        if info.st_uid == account.uid:
            bit = stat.S_IXUSR
        elif info.st_gid in account.gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) from /proc, or None where there is no /proc entry."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name before ")" may contain spaces
    return fields[0], fields[19]


def start_time(pid: int) -> str | None:
    info = _proc_stat(pid)
    return info[1] if info is not None else None


def pid_alive(pid: int, started: str | None = None) -> bool:
    """Whether ``pid`` runs (zombies are dead) and, if ``started`` is given, is the process that started then."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, under another user
    info = _proc_stat(pid)
    if info is None:
        return not Path("/proc").is_dir()  # no /proc at all (macOS): kill() is all we know
    state, start_time = info
    if state in ("Z", "X"):
        return False
    return started is None or started == start_time


def is_postmaster_of(pid: int, data_dir: Path) -> bool:
    # A postmaster's working directory is its data directory; a recycled pid's is not.
    try:
        return os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(data_dir)
    except OSError:
        return True  # no /proc, or not ours to inspect: trust the pid


def processes_in(data_dir: Path) -> list[int]:
    """Live processes whose working directory is ``data_dir``: a server's postmaster and backends."""
    target = os.path.realpath(data_dir)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(entry / "cwd") == target and pid_alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL does, so connections lingering in TIME_WAIT do not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True
