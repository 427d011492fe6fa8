"""Detached worker processes on one machine (`windmill-cli workers start|stop|restart|status`): which workers
there are, their command lines, pid files under `<WINDMILL_HOME>/run` and logs appended under `<WINDMILL_HOME>/logs`.

What the seed's workers.sh got wrong is what this module exists to get right (reference-behaviour §11–13): a
worker is stopped by the pid it was started with, never by a `pkill -f` pattern that also hits other people's
processes; it gets SIGTERM and its drain timeout before anything harsher; a pid file whose process is gone, or
now belongs to something else, is removed and its pid never signalled; logs are appended, so the evidence of
the last outage survives a restart; an unknown name is refused with the list of valid ones. A pid is matched to
its worker through its command line (psutil: Linux, macOS, the BSDs). With `restart="on-failure"` each worker runs
under a keeper (windmill/keeper.py) that starts it again when it fails, with backoff.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from windmill.catalog import Catalog
from windmill.db.queries import query
from windmill.errors import WindmillError, first_line
from windmill.keeper import RESTART_POLICIES, KeeperState
from windmill.metrics_targets import worker_port
from windmill.processes import (
    READY_FILE_VARIABLE,
    last_line,
    leads_its_group,
    process_argv,
    wait_for_exits,
    write_atomically,
)
from windmill.settings import Settings
from windmill.worker.layout import machine_workers

log = logging.getLogger(__name__)

DEFAULT_DRAIN_TIMEOUT_S = 30.0  # the worker's own --drain-timeout default: stop waits at least that long
LEAVE_NOW_GRACE_S = 5.0  # after the second SIGTERM ("leave now"), before SIGKILL
# How long start waits at most for new workers to be ready (READY_FILE_VARIABLE) or to fail (a bad setting, no
# schema): twenty starting at once on two cores take several seconds before any of them can fail.
START_SETTLE_S = 30.0
# What becomes of a worker's work when it leaves without draining.
UNFINISHED = ("its unfinished work goes back to the queue: a job when its lease expires, a RabbitMQ task at once "
              "(redelivered)")
DEFAULT_RESTART_BACKOFF_S = 1.0  # a kept worker's first wait before it is started again; it doubles …
MAX_RESTART_BACKOFF_S = 60.0  # … up to this
# A name becomes a file name (pid file, log): no separators, no leading dot.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class WorkerSpec:
    """One named worker: its command line after `python -m windmill` (no credentials: those stay in the
    environment the process inherits)."""

    name: str
    argv_tail: tuple[str, ...]


def worker_specs(catalog: Catalog) -> dict[str, WorkerSpec]:
    """Every worker a machine can run, by name (windmill.worker.layout.machine_workers), each with the worker
    command's default thread count."""
    specs = {name: WorkerSpec(name, ("worker", *role.worker_arguments()))
             for name, role in machine_workers(catalog).items()}
    unsafe = [name for name in specs if not _SAFE_NAME.match(name)]
    if unsafe:
        raise WindmillError(f"worker names must be letters, digits, '_', '.' or '-': {', '.join(map(repr, unsafe))}")
    return specs


def select_workers(specs: Mapping[str, WorkerSpec], names: Iterable[str]) -> list[WorkerSpec]:
    """The named workers in the order given (no names: all of them); an unknown name is refused with the list."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return list(specs.values())
    unknown = [name for name in wanted if name not in specs]
    if unknown:
        raise WindmillError(f"unknown worker {', '.join(map(repr, unknown))}; valid workers: {', '.join(specs)}")
    return [specs[name] for name in wanted]


def worker_id_for(name: str, hostname: str | None = None) -> str:
    """`<name>@<hostname>`: the worker's row in the `workers` table, the same whoever started it (this module or
    the systemd unit), so `workers status` finds its heartbeat."""
    return f"{name}@{hostname or socket.gethostname()}"


def runs_worker(argv: list[str] | None, spec: WorkerSpec) -> bool:
    """Whether a command line is Windmill running this worker; anything else under a recycled pid is not."""
    tail = list(spec.argv_tail)
    return argv is not None and "windmill" in argv and argv[-len(tail):] == tail


@dataclass(frozen=True)
class Outcome:
    """What start or stop did to one worker; `ok` is False when the operator must look (it did not start, or
    it had to be killed)."""

    name: str
    action: str  # started, running, exited, restarting, stopped, killed, not_running, failed
    message: str
    pid: int | None = None
    exit_code: int | None = None  # known when this process is the worker's parent
    ok: bool = True


@dataclass(frozen=True)
class WorkerStatus:
    name: str
    worker_id: str
    pid: int | None  # the live worker's pid; None when it does not run
    running: bool
    pid_file: str  # "ok", "none" or "stale" (its process is gone or is not this worker)
    heartbeat_age_s: float | None  # from the workers table; None when it has no live row
    alive: bool | None  # a heartbeat in the last 30 s (the live_workers view's rule)
    log: str
    # Under a keeper (`start --restart on-failure`): the pid above is the keeper's; these say how its worker does.
    kept: bool = False
    worker_pid: int | None = None  # None while the keeper waits to start it again
    restarts: int | None = None
    last_exit: str | None = None  # "status 1 at …: <its last log line>"
    next_start_at: str | None = None  # while the keeper backs off: when it starts the worker again

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Supervisor:
    """Starts, stops and inspects the named workers of this machine.

    Start and stop take a lock file in the run directory, so two operators (or a start racing a stop) take
    turns instead of both spawning the same worker. Status only reads.
    """

    def __init__(self, home: Path, specs: Mapping[str, WorkerSpec], *, env_file: Path | None = None,
                 python: str = sys.executable, environ: Mapping[str, str] | None = None,
                 hostname: str | None = None, leave_now_grace_s: float = LEAVE_NOW_GRACE_S,
                 metrics_base_port: int | None = None,
                 restart_backoff_s: float = DEFAULT_RESTART_BACKOFF_S) -> None:
        if os.name != "posix":
            raise WindmillError("`windmill-cli workers` needs a POSIX system (Linux, macOS, a BSD); elsewhere run "
                                "`windmill-cli run`, or `workers run NAME` under the system's service manager")
        self.home = home
        self.metrics_base_port = metrics_base_port
        self.restart_backoff_s = restart_backoff_s
        self.specs = dict(specs)
        self.env_file = env_file.resolve() if env_file is not None else None
        self.python = python
        self.environ = dict(os.environ if environ is None else environ)
        self.hostname = hostname or socket.gethostname()
        self.leave_now_grace_s = leave_now_grace_s

    @classmethod
    def configured(cls, settings: Settings, catalog: Catalog, *, env_file: Path | None = None) -> Supervisor:
        return cls(settings.home, worker_specs(catalog), env_file=env_file, metrics_base_port=settings.metrics_port)

    # -- where things are ------------------------------------------------------------------------
    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def ready_file(self, name: str) -> Path:
        """What a worker started here writes once it is running (windmill.processes.announce_ready)."""
        return self.run_dir / f"{name}.ready"

    def state_file(self, name: str) -> Path:
        """Where the keeper of a worker started with `restart="on-failure"` keeps its state."""
        return self.run_dir / f"{name}.state.json"

    def worker_id(self, name: str) -> str:
        return worker_id_for(name, self.hostname)

    def command(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of a worker: what `start` spawns and `workers run NAME` (systemd) execs."""
        spec = select_workers(self.specs, [name])[0]
        global_options = ["--env-file", str(self.env_file)] if self.env_file is not None else []
        argv = [self.python, "-m", "windmill", *global_options, *spec.argv_tail]
        env = {**self.environ, "WORKER_ID": self.worker_id(name), READY_FILE_VARIABLE: str(self.ready_file(name))}
        if self.metrics_base_port is not None:  # each worker its own port (they may share one host, or one netns)
            env["WINDMILL_METRICS_PORT"] = str(worker_port(self.metrics_base_port, list(self.specs), name))
        return argv, env

    def kept_command(self, name: str) -> tuple[list[str], dict[str, str]]:
        """The worker's command under its keeper: the keeper's options, then the worker's own argv (so the keeper's
        command line ends as the worker's does, and a pid file naming it is recognised as this worker's)."""
        argv, env = self.command(name)
        keeper = [self.python, "-m", "windmill.keeper", "--name", name, "--state", str(self.state_file(name)),
                  "--log", str(self.log_file(name)), "--backoff", f"{self.restart_backoff_s:g}",
                  "--max-backoff", f"{max(MAX_RESTART_BACKOFF_S, self.restart_backoff_s):g}", "--"]
        return [*keeper, *argv], env

    # -- the operations --------------------------------------------------------------------------
    def start(self, names: Iterable[str] = (), *, settle_s: float = START_SETTLE_S,
              restart: str = "no") -> list[Outcome]:
        """Start each named worker that does not run, detached (own session, stdin from /dev/null, output
        appended to its log), then watch them for `settle_s` so one that exits at once is reported with the
        last line it logged rather than announced as started. `restart="on-failure"` runs each under a keeper
        that starts it again after a failure, with backoff (windmill/keeper.py)."""
        if restart not in RESTART_POLICIES:
            raise WindmillError(f"unknown restart policy {restart!r}; valid policies: {', '.join(RESTART_POLICIES)}")
        specs = select_workers(self.specs, names)
        outcomes: dict[str, Outcome] = {}
        spawned: dict[str, tuple[int, int]] = {}  # name → pid, log size before the start
        with self._locked():
            for spec in specs:
                pid = self._running_pid(spec, clean=True)
                if pid is not None:
                    outcomes[spec.name] = Outcome(spec.name, "running", f"already running (pid {pid})", pid)
                    continue
                log_file = self.log_file(spec.name)
                offset = log_file.stat().st_size if log_file.exists() else 0
                self.ready_file(spec.name).unlink(missing_ok=True)
                pid = self._spawn(spec, kept=restart == "on-failure")
                write_atomically(self.pid_file(spec.name), f"{pid}\n")
                spawned[spec.name] = (pid, offset)
                log.debug("started worker %s (pid %d)", spec.name, pid, extra={"action": "worker_started"})
            exited = self._settle({name: pid for name, (pid, _) in spawned.items()}, settle_s)
            for name, (pid, offset) in spawned.items():
                kept = KeeperState.read(self.state_file(name)) if name not in exited else None
                if kept is not None and kept.exits:
                    outcomes[name] = Outcome(name, "restarting", f"exited at once with {kept.last_exit()}; its keeper "
                                             f"(pid {pid}) starts it again with backoff (log: {self.log_file(name)})",
                                             pid, ok=False)
                elif name in exited:
                    self._remove_pid_file(name, pid)
                    code = exited[name]
                    last = last_line(self.log_file(name), offset) or "nothing logged"
                    status = f"status {code}" if code is not None else "an unknown status"
                    outcomes[name] = Outcome(name, "exited", f"exited at once with {status}: {last} "
                                             f"(log: {self.log_file(name)})", pid, code, ok=False)
                else:
                    outcomes[name] = Outcome(name, "started", f"started (pid {pid}, log {self.log_file(name)})", pid)
        return [outcomes[spec.name] for spec in specs]

    def stop(self, names: Iterable[str] = (), *, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S) -> list[Outcome]:
        """SIGTERM every named running worker at once (each stops claiming and finishes its in-flight jobs), wait
        up to `drain_timeout` for them to exit; a worker still there gets a second SIGTERM (leave now: its
        unfinished jobs return to the queue when their leases expire) and, LEAVE_NOW_GRACE_S later, SIGKILL."""
        specs = select_workers(self.specs, names)
        outcomes: dict[str, Outcome] = {}
        signalled: dict[str, int] = {}
        started = time.monotonic()
        with self._locked():
            for spec in specs:
                pid = self._running_pid(spec, clean=True)
                if pid is None:
                    outcomes[spec.name] = Outcome(spec.name, "not_running", "not running")
                    continue
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    self._remove_pid_file(spec.name, pid)
                    outcomes[spec.name] = Outcome(spec.name, "not_running", "not running (exited meanwhile)")
                    continue
                except PermissionError:
                    outcomes[spec.name] = Outcome(spec.name, "failed", f"may not signal pid {pid} (another user's "
                                                  "worker?)", pid, ok=False)
                    continue
                signalled[spec.name] = pid
            exited = wait_for_exits(signalled, drain_timeout)
            for name, pid in signalled.items():
                if name in exited:
                    outcomes[name] = Outcome(name, "stopped", f"stopped (pid {pid}, drained in "
                                             f"{time.monotonic() - started:.1f} s)", pid, exited[name])
            stubborn = {name: pid for name, pid in signalled.items() if name not in exited}
            killed = self._force(stubborn, drain_timeout)
            outcomes.update(killed)
            for name, pid in signalled.items():
                self._remove_pid_file(name, pid)
        return [outcomes[spec.name] for spec in specs]

    def restart(self, names: Iterable[str] = (), *, drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_S,
                settle_s: float = START_SETTLE_S, restart: str | None = None) -> list[Outcome]:
        """Stop (draining) then start the named workers; a worker that did not run is simply started. Without a
        `restart` policy, a worker keeps the one it ran with (kept or not)."""
        specs = select_workers(self.specs, names)
        plan = {spec.name: restart or ("on-failure" if self._kept(spec.name) else "no") for spec in specs}
        stopped = [outcome for outcome in self.stop(list(plan), drain_timeout=drain_timeout)
                   if outcome.action != "not_running"]
        started: dict[str, Outcome] = {}
        for policy in RESTART_POLICIES:
            group = [name for name, chosen in plan.items() if chosen == policy]
            if group:  # (no names would mean every worker)
                started.update((o.name, o) for o in self.start(group, settle_s=settle_s, restart=policy))
        return stopped + [started[name] for name in plan]

    def status(self, names: Iterable[str] = (), conn: psycopg.Connection | None = None) -> list[WorkerStatus]:
        """Per worker: its pid when it runs, the pid file's state, the age of its last heartbeat in the workers
        table (with a connection), its log. Read-only: stale pid files are cleaned by start and stop."""
        specs = select_workers(self.specs, names)
        heartbeats: dict[str, dict[str, Any]] = {}
        if conn is not None:
            with conn.cursor(row_factory=dict_row) as cursor:
                heartbeats = {row["worker_id"]: row for row in cursor.execute(query("monitor_live_workers"))}
        report = []
        for spec in specs:
            recorded = _read_pid(self.pid_file(spec.name))
            running = recorded is not None and runs_worker(process_argv(recorded), spec)
            beat = heartbeats.get(self.worker_id(spec.name))
            keeper = KeeperState.read(self.state_file(spec.name)) if running else None
            kept = keeper is not None and keeper.keeper_pid == recorded
            report.append(WorkerStatus(
                name=spec.name, worker_id=self.worker_id(spec.name), pid=recorded if running else None,
                running=running, pid_file="ok" if running else "stale" if self.pid_file(spec.name).exists() else "none",
                heartbeat_age_s=None if beat is None else float(beat["heartbeat_age_s"]),
                alive=None if beat is None else bool(beat["alive"]), log=str(self.log_file(spec.name)),
                kept=kept, worker_pid=keeper.worker_pid if kept and keeper is not None else None,
                restarts=keeper.restarts if kept and keeper is not None else None,
                last_exit=keeper.last_exit(when=True) if kept and keeper is not None else None,
                next_start_at=keeper.next_start_at if kept and keeper is not None and keeper.worker_pid is None
                else None))
        return report

    def health(self, names: Iterable[str], conn: psycopg.Connection) -> list[tuple[str, bool, str]]:
        """(name, healthy, why) per named worker, for a container's health check or a probe: healthy when the
        worker's row in the workers table (`<name>@<hostname>`, whoever started it) has a heartbeat of the last 30 s.
        Only the database is asked: a worker in a container has no pid file."""
        specs = select_workers(self.specs, names)
        with conn.cursor(row_factory=dict_row) as cursor:
            beats = {row["worker_id"]: row for row in cursor.execute(query("monitor_live_workers"))}
        report = []
        for spec in specs:
            beat = beats.get(self.worker_id(spec.name))
            if beat is None:
                report.append((spec.name, False, f"no heartbeat from {self.worker_id(spec.name)} (not started, "
                                                 "stopped, or not yet connected)"))
            else:
                age = float(beat["heartbeat_age_s"])
                report.append((spec.name, bool(beat["alive"]), f"last heartbeat {age:.1f} s ago"))
        return report

    def status_with_heartbeats(self, names: Iterable[str], settings: Settings,
                               connect: Callable[[], AbstractContextManager[psycopg.Connection]],
                               ) -> tuple[list[WorkerStatus], str | None]:
        """`status` with heartbeats when the database can tell them, and a note when it cannot. Unknown names are
        refused before any connection is made; the embedded database is not started only to find no heartbeat."""
        rows = self.status(names)
        if settings.uses_embedded_database and not any(row.running for row in rows):
            return rows, ("heartbeats not read: no worker started here runs, and the embedded database is not "
                          "started for this")
        try:
            with connect() as conn:
                return self.status(names, conn), None
        except (psycopg.OperationalError, WindmillError) as error:
            return rows, f"heartbeats unavailable: {first_line(error)}"

    # -- helpers ---------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _running_pid(self, spec: WorkerSpec, *, clean: bool) -> int | None:
        """The pid of the worker when its pid file names a live process running it. A pid file naming a
        process that is gone or runs something else is stale: removed (with `clean`), its pid never touched."""
        path = self.pid_file(spec.name)
        pid = _read_pid(path)
        if pid is not None and runs_worker(process_argv(pid), spec):
            return pid
        if clean and path.exists():
            path.unlink(missing_ok=True)
            self.state_file(spec.name).unlink(missing_ok=True)  # a killed keeper's last state
            why = "is not this worker" if pid is not None and process_argv(pid) is not None else "has exited"
            log.info("removed the stale pid file of %s (pid %s %s)", spec.name, pid, why,
                     extra={"action": "stale_pid_file"})
        return None

    def _settle(self, pids: Mapping[str, int], settle_s: float) -> dict[str, int | None]:
        """Watch new workers until each is ready, has exited or (under a keeper) failed once, for `settle_s` at
        most; returns those that exited, with their exit codes when known."""
        deadline = time.monotonic() + settle_s
        exited: dict[str, int | None] = {}
        while True:  # (a child's exit code can be read once: it is reaped then)
            exited.update(wait_for_exits({name: pid for name, pid in pids.items() if name not in exited}, 0))
            failed = {name for name in pids if (state := KeeperState.read(self.state_file(name))) and state.exits}
            ready = {name for name in pids if self.ready_file(name).exists()}
            if set(pids) <= set(exited) | failed | ready or time.monotonic() >= deadline:
                return exited
            time.sleep(0.05)

    def _kept(self, name: str) -> bool:
        """Whether the worker runs under a keeper (its pid file names the keeper of its state file)."""
        state = KeeperState.read(self.state_file(name))
        return state is not None and state.keeper_pid == _read_pid(self.pid_file(name))

    def _spawn(self, spec: WorkerSpec, *, kept: bool) -> int:
        argv, env = self.kept_command(spec.name) if kept else self.command(spec.name)
        log_file = self.log_file(spec.name)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        policy = ", restarted on failure" if kept else ""
        with open(log_file, "a", encoding="utf-8") as header:
            header.write(f"--- {stamp} windmill-cli workers start: {' '.join(spec.argv_tail)} "
                         f"as {self.worker_id(spec.name)}{policy}\n")
        # posix_spawn rather than Popen: the worker outlives this process, and a Popen object dropped while its
        # child runs warns and is reaped behind our back. Our own descriptors are close-on-exec (PEP 446).
        return os.posix_spawn(argv[0], argv, env, setsid=True, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(log_file), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ])

    def _force(self, stubborn: dict[str, int], drain_timeout: float) -> dict[str, Outcome]:
        """Workers that did not drain in time: a second SIGTERM (leave now), then SIGKILL."""
        outcomes: dict[str, Outcome] = {}
        for pid in stubborn.values():
            _signal(pid, signal.SIGTERM)
        left = wait_for_exits(stubborn, self.leave_now_grace_s)
        for name, pid in stubborn.items():
            if name in left:
                outcomes[name] = Outcome(name, "stopped", f"stopped (pid {pid}) without draining: still busy after "
                                         f"{drain_timeout:g} s, told to leave now; {UNFINISHED}", pid, left[name],
                                         ok=False)
                continue
            waited = drain_timeout + self.leave_now_grace_s
            log.warning("worker %s (pid %d) did not stop within %g s; killing it", name, pid, waited,
                        extra={"action": "worker_killed"})
            if leads_its_group(pid):  # started in its own session: its group holds a keeper's worker too
                with suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            else:
                _signal(pid, signal.SIGKILL)
            with open(self.log_file(name), "a", encoding="utf-8") as note:
                note.write(f"--- {datetime.now(UTC).isoformat(timespec='seconds')} windmill-cli workers stop: "
                           f"killed (SIGKILL) after {waited:g} s without exiting\n")
            killed = wait_for_exits({name: pid}, LEAVE_NOW_GRACE_S)
            outcomes[name] = Outcome(name, "killed", f"KILLED (pid {pid}): did not exit within {waited:g} s of "
                                     f"SIGTERM; {UNFINISHED}", pid, killed.get(name), ok=False)
        return outcomes

    def _remove_pid_file(self, name: str, pid: int) -> None:
        """Remove the pid file only if it still names this pid (a concurrent start may have replaced it)."""
        path = self.pid_file(name)
        if _read_pid(path) == pid:
            path.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def _signal(pid: int, signum: int) -> None:
    with suppress(ProcessLookupError):  # it exited meanwhile: what the signal asked for
        os.kill(pid, signum)
