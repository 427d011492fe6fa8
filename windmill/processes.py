"""Questions about processes by pid — what does it run, has it exited, which log line did it leave last — asked
through psutil, so they have the same answers on Linux, macOS and the BSDs (no /proc needed)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Mapping
from pathlib import Path

import psutil

_POLL_S = 0.05


def process_argv(pid: int) -> list[str] | None:
    """The command line of a live process, or None when there is none: gone, a zombie awaiting its parent (it runs
    nothing any more), or another user's process whose command line this user may not read (so not ours)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        argv = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return None
    return argv or None


def exit_status(pid: int) -> tuple[bool, int | None]:
    """(exited, exit code). The exit code is known only for this process's own children, which this also reaps
    (a worker started by this process, e.g. in tests); for others, exited means the pid runs nothing any more."""
    try:
        reaped, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return process_argv(pid) is None, None
    if reaped == 0:
        return False, None
    return True, os.waitstatus_to_exitcode(status)


def wait_for_exits(pids: Mapping[str, int], timeout: float) -> dict[str, int | None]:
    """Watch the processes for up to `timeout` seconds, returning as soon as all have exited; returns those that
    exited, with their exit codes when known."""
    exited: dict[str, int | None] = {}
    deadline = time.monotonic() + timeout
    while True:
        for name, pid in pids.items():
            if name not in exited:
                done, code = exit_status(pid)
                if done:
                    exited[name] = code
        if len(exited) == len(pids) or time.monotonic() >= deadline:
            return exited
        time.sleep(_POLL_S)


def leads_its_group(pid: int) -> bool:
    """Whether `pid` leads its process group (a worker or keeper started in its own session), so a signal to the
    group reaches it and whatever it started."""
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def last_line(path: Path, offset: int) -> str | None:
    """The last non-empty line written to a log after `offset` (what a worker that exited said last); lines of
    Windmill's own notes (`--- …`) do not count."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(offset)
            lines = [line.strip() for line in log_file.read().decode(errors="replace").splitlines()]
    except FileNotFoundError:
        return None
    lines = [line for line in lines if line and not line.startswith("--- ")]
    return lines[-1] if lines else None


# A process started by `workers start` finds here the file to write once it is running (past its settings, its
# database and its role: what fails at once), so the start can report it ready instead of guessing from the time.
READY_FILE_VARIABLE = "WINDMILL_READY_FILE"


def announce_ready() -> None:
    """Write this process's ready file, if whoever started it asked for one: whole, since whoever waits for it may
    read it the moment it exists (a file created, then written, was once read empty)."""
    path = os.environ.get(READY_FILE_VARIABLE)
    if path:
        with contextlib.suppress(OSError):  # the start then waits its full time: nothing worse
            write_atomically(Path(path), f"{os.getpid()}\n")


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it over: a reader sees the old content or the new,
    never a half-written file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
