"""Processes of servers the benchmarks start and crash: who a process's children are, and waiting for a process
that is not our child (so cannot be reaped by us) to die."""

from __future__ import annotations

import time
from pathlib import Path

from windmill.errors import WindmillError


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may contain spaces), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children_of(parent: int) -> list[int]:
    """The pids whose parent is `parent`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == parent:
                found.append(int(entry.name))
    return found


def wait_gone(pid: int, timeout_s: float = 30.0) -> None:
    """Until `pid` has exited. A zombie counts as gone: its parent, killed with it, no longer reaps it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fields = _stat_fields(pid)
        if fields is None or fields[0] in ("Z", "X"):
            return
        time.sleep(0.02)
    raise WindmillError(f"process {pid} did not exit within {timeout_s:.0f} s")
