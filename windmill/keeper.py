"""The keeper of one worker (`windmill-cli workers start --restart on-failure`): a small parent process that runs
the worker as its child and starts it again when it fails, with backoff.

    python -m windmill.keeper --name merger --state RUN/merger.state.json --log LOGS/merger.log -- ARGV...

Why a parent per worker rather than a daemon watching them all: it needs no new long-lived service, `workers
stop` keeps working by pid (the pid file names the keeper; SIGTERM is passed on to the worker, which drains, and
the keeper exits with the worker's status), and a keeper that is killed takes nothing else down. The worker runs
in the keeper's process group, so `stop`'s last resort (SIGKILL to the group) ends both; on Linux the worker also
gets SIGTERM if the keeper dies first.

Policy, as systemd's Restart=on-failure: a worker that exits with a non-zero status or by a signal it was not sent
by the keeper is started again after a backoff that starts at `--backoff` seconds and doubles up to
`--max-backoff`; a worker that ran at least RESET_AFTER_S before failing starts the doubling over. A worker that
exits with status 0 of its own accord is not restarted. Each failure is a `---` line in the worker's log, and the
state file (read by `workers status`) holds the restarts, the worker's pid and its last exits with their last log
lines."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from windmill.processes import last_line

RESTART_POLICIES = ("no", "on-failure")  # `workers start --restart`: as systemd's Restart= of the same names
RESET_AFTER_S = 60.0  # a worker that ran this long before failing is restarted after the base backoff again
EXITS_KEPT = 5
_SLEEP_STEP_S = 0.05


@dataclass
class KeeperState:
    """What `workers status` reads about a kept worker."""

    name: str
    keeper_pid: int
    worker_pid: int | None = None
    state: str = "starting"  # running, backing_off, stopping
    restarts: int = 0
    backoff_s: float | None = None  # the wait before the next start, while backing off
    next_start_at: str | None = None
    exits: list[dict[str, object]] = field(default_factory=list)  # newest last: at, status, ran_s, last_line

    @classmethod
    def read(cls, path: Path) -> KeeperState | None:
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (FileNotFoundError, ValueError, TypeError):
            return None

    def last_exit(self, *, when: bool = False) -> str | None:
        """The worker's last failure: `status 1: <its last log line>` (with `when`, `status 1 at <time>: …`). A
        worker killed by a signal said nothing of it: its last line is whatever it logged before (`worker started`),
        so only the signal is given."""
        if not self.exits:
            return None
        last = self.exits[-1]
        status = int(str(last["status"]))
        at = f" at {last['at']}" if when else ""
        if status < 0:
            return f"{describe_exit(status)}{at}"
        said = _LOG_STAMP.sub("", str(last["last_line"] or "")) or "nothing logged"
        return f"{describe_exit(status)}{at}: {said}"

    def write(self, path: Path) -> None:
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(self)) + "\n", encoding="utf-8")
        os.replace(temporary, path)  # readers see the old state or the new one, never half of one


# A log line's time (windmill.settings.configure_logging), which the exit's own time makes redundant.
_LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def describe_exit(status: int) -> str:
    return f"signal {signal.Signals(-status).name}" if status < 0 else f"status {status}"


def next_backoff(previous: float | None, ran_s: float, base: float, most: float) -> float:
    """The wait before the next start: `base` after the first failure or after a run of RESET_AFTER_S or more,
    otherwise twice the previous wait, at most `most`."""
    if previous is None or ran_s >= RESET_AFTER_S:
        return min(base, most)
    return min(previous * 2, most)


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _die_with_parent() -> None:
    """In the worker, before exec: on Linux, SIGTERM (a drain) when the keeper dies, so a killed keeper leaves no
    worker nobody keeps or stops. Elsewhere the group kill of `workers stop` is what ends both."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Keeper:
    def __init__(self, name: str, argv: list[str], state_file: Path, log_file: Path, *, backoff_s: float,
                 max_backoff_s: float) -> None:
        self.argv = argv
        self.state_file = state_file
        self.log_file = log_file
        self.base = backoff_s
        self.most = max_backoff_s
        self.state = KeeperState(name=name, keeper_pid=os.getpid())
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.last_backoff: float | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """SIGTERM/SIGINT: stop for good; every such signal goes on to the worker (once: drain; twice: leave)."""
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def _note(self, text: str) -> None:
        print(f"--- {_stamp()} windmill-cli workers (keeper of {self.state.name}): {text}", file=sys.stderr,
              flush=True)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            return self._keep()
        finally:
            self.state_file.unlink(missing_ok=True)

    def _keep(self) -> int:
        while True:
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            started = time.monotonic()
            self.child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            self.state.worker_pid, self.state.state = self.child.pid, "running"
            self.state.backoff_s = self.state.next_start_at = None
            self.state.write(self.state_file)
            status = self.child.wait()
            ran_s = time.monotonic() - started
            if self.stopping:
                return status
            if status == 0:  # a worker leaves with status 0 only when told to: a signal not from `workers stop`
                self._note(f"the worker exited with status 0 after {ran_s:.1f} s, stopped by a signal that did not "
                           "come through its keeper (not `workers stop`); not started again: --restart on-failure "
                           "restarts failures")
                return status
            backoff = self.last_backoff = next_backoff(self.last_backoff, ran_s, self.base, self.most)
            exited: dict[str, object] = {"at": _stamp(), "status": status, "ran_s": round(ran_s, 3),
                                         "last_line": last_line(self.log_file, offset), "backoff_s": backoff}
            self.state.exits = [*self.state.exits, exited][-EXITS_KEPT:]
            self.state.restarts += 1
            self.state.worker_pid, self.state.state, self.state.backoff_s = None, "backing_off", backoff
            self.state.next_start_at = datetime.fromtimestamp(time.time() + backoff, UTC).isoformat(timespec="seconds")
            self.state.write(self.state_file)
            self._note(f"the worker exited with {describe_exit(status)} after {ran_s:.1f} s; restart "
                       f"{self.state.restarts} in {backoff:g} s")
            deadline = time.monotonic() + backoff
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(_SLEEP_STEP_S)
            if self.stopping:
                return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m windmill.keeper", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--backoff", type=float, default=1.0)
    parser.add_argument("--max-backoff", type=float, default=60.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("give the worker's command line after --")
    return Keeper(options.name, command, options.state, options.log, backoff_s=options.backoff,
                  max_backoff_s=options.max_backoff).run()


if __name__ == "__main__":
    sys.exit(main())
