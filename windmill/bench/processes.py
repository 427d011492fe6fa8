"""Processes the benchmarks start, measure and crash: who a process's children are, waiting for a process that is
not our child (so cannot be reaped by us) to die, and a command's time and peak memory."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
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


def watched_run(argv: Sequence[str], env: Mapping[str, str], *,
                until: Callable[[], bool] | None = None) -> tuple[float, float, int]:
    """(seconds, peak MiB, exit status) of one command run to its end, its output discarded; with `until`, a
    command that runs until stopped (a watch): the seconds until `until()` held, when it is sent SIGTERM. The peak
    is the high-water mark of the process's own resident memory (VmHWM), read while it runs. Not wait4's
    ru_maxrss: on Linux that also carries the memory of the process that forked it (the exec keeps the larger of
    the two marks), so it would report the benchmark's own size."""
    started = time.perf_counter()
    process = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak_kib = 0
    seconds: float | None = None
    while process.poll() is None:
        peak_kib = max(peak_kib, _high_water_kib(process.pid))
        if seconds is None and until is not None and until():
            seconds = time.perf_counter() - started
            process.send_signal(signal.SIGTERM)
        time.sleep(0.05)
    return seconds if seconds is not None else time.perf_counter() - started, peak_kib / 1024, process.returncode


def peak_memory_mib(pid: int) -> float:
    """The high-water mark of a running process's own resident memory (VmHWM), in MiB (0 once it has exited)."""
    return _high_water_kib(pid) / 1024


def _high_water_kib(pid: int) -> int:
    """VmHWM of a running process, in KiB (0 once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0
