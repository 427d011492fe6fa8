"""The embedded cluster's life cycle: initialised once, started by the first windmill process that needs it,
stopped after the last (the registry of those processes is clients.py; finding the server is binaries.py).

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
import hashlib
import json
import logging
import os
import shlex
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from windmill.db.embedded.binaries import usable_bin_dir
from windmill.db.embedded.clients import ClientRegistry, hold, let_go
from windmill.db.embedded.system import (
    HOST,
    free_port,
    is_postmaster_of,
    pid_alive,
    port_is_free,
    processes_in,
    server_account,
    traversable_by,
)
from windmill.db.queries import query
from windmill.errors import WindmillError

logger = logging.getLogger(__name__)

USER = "windmill"
DATABASE = "windmill"
RELOCATED_PARENT = Path("/var/tmp")  # a module attribute so tests can point it elsewhere

_START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections
_UNIX_SOCKET_MAX = 107  # sun_path holds 108 bytes including the trailing NUL
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_ORPHAN_WAIT = 10.0  # seconds to let backends of a crashed postmaster notice and exit


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
        self._clients = ClientRegistry(self._run_dir / "clients")
        self._account = server_account()
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
            self._clients.register()
            if not self._holds:
                hold(self._run_dir)
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
            if let_go(self._run_dir):
                return  # another EmbeddedPostgres of this process still uses the server
            self._clients.unregister()
            remaining = self._clients.live(prune=True)
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

    def stop(self) -> bool:
        """Stop the server now, whoever still uses it (`windmill-cli db stop`); whether it was running. A home
        with no cluster is left as it is (not created)."""
        if not self._run_dir.exists():
            return False
        with self._locked():
            state = self._load_state()
            running = state is not None and self._running_port(state) is not None
            if running:
                assert state is not None  # (for the type checker: running says so)
                self._stop(state)
            # The registered processes lost their server; a later acquire registers afresh.
            self._clients.clear()
        return running

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
            clients=self._clients.live(prune=False),
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
            state = _State(self._choose_data_root(), free_port())
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
        if account is None or traversable_by(self._run_dir, account):
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

    def _data_dir(self, state: _State) -> Path:
        return state.data_root / "data"

    # -- binaries and server processes --------------------------------------------------------------------

    def _bin_dir(self, state: _State | None) -> Path:
        """The first usable bin directory; once there is data, of the major version that created it."""
        data_dir = self._data_dir(state) if state is not None and state.initialised else None
        return usable_bin_dir(data_dir, self._account)

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
        if not pid_alive(pid) or not is_postmaster_of(pid, data_dir):
            return None
        return port

    def _start(self, state: _State, bin_dir: Path) -> int:
        self._clear_stale_lock_files(state)
        log_file = state.data_root / "postgresql.log"
        if log_file.exists() and log_file.stat().st_size > _LOG_ROTATE_BYTES:
            os.replace(log_file, log_file.with_suffix(".log.1"))
        for attempt in (1, 2):
            if not port_is_free(state.port):
                old, state.port = state.port, free_port()
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
            if attempt == 1 and not port_is_free(state.port):
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
        while orphans := processes_in(data_dir):
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


def _server_environment() -> dict[str, str]:
    # PGPORT, PGDATA and friends from the caller's shell must not steer the private server.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _conninfo(port: int, dbname: str = DATABASE) -> str:
    return f"host={HOST} port={port} user={USER} dbname={dbname}"


def _ensure_database(port: int) -> None:
    with psycopg.connect(_conninfo(port, "postgres"), autocommit=True, connect_timeout=30) as conn:
        if conn.execute(query("database_exists"), {"name": DATABASE}).fetchone() is None:
            # CREATE DATABASE takes no parameters: the names, which the cluster's conninfo uses too, are composed in
            # as identifiers.
            create = sql.SQL(query("create_embedded_database")).format(database=sql.Identifier(DATABASE),
                                                                       owner=sql.Identifier(USER))
            conn.execute(create)
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
