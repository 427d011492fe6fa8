"""The stand-in farm of a benchmark in its own process, started on ports that nothing else takes, and known to be up
before the benchmark sends it anything.

The farm serves each catalog service on its port plus an offset. Offsets used to come from the benchmark's process
id alone and reached past 32,768, where Linux hands out the local ports of outgoing connections (PostgreSQL's and
RabbitMQ's clients among them): a port taken that way made the farm exit at start, with its output discarded, and the
workers retried connecting for as long as anyone let them. Now the offsets keep every port below that range, the
farm's output is kept, and a farm that exits at start is started again on another offset; one that cannot start
at all is a one-sentence error.
"""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from windmill.errors import WindmillError

LOCAL_PORTS_START = 32_768  # Linux's default first port for outgoing connections (net.ipv4.ip_local_port_range)
HIGHEST_SERVICE_PORT = 7_799  # the catalog's highest port; the stand-in serves each port + offset
OFFSET_STEP = 10
FIRST_OFFSET = 10_000
OFFSET_SLOTS = (LOCAL_PORTS_START - HIGHEST_SERVICE_PORT - FIRST_OFFSET) // OFFSET_STEP
ATTEMPTS = 5
READY_TIMEOUT_S = 60.0
READY_LINE = "simulating "  # `farm serve` prints it once every port listens (windmill/simfarm/command.py)


def offsets_to_try(seed: int = 0) -> list[int]:
    """Port offsets for the stand-in: the first from the process id (two benchmarks at once get different ones),
    then random ones; every port they give stays below the range of outgoing connections."""
    first = FIRST_OFFSET + (os.getpid() + seed) % OFFSET_SLOTS * OFFSET_STEP
    rng = random.Random(os.getpid() + seed)
    return [first, *(FIRST_OFFSET + rng.randrange(OFFSET_SLOTS) * OFFSET_STEP for _ in range(ATTEMPTS - 1))]


@contextmanager
def running_stand_in(argv: Callable[[int], list[str]], *, offsets: Iterable[int] | None = None,
                     cwd: str | Path | None = None, ready_timeout_s: float = READY_TIMEOUT_S
                     ) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The farm process `argv(offset)` and its port offset, once it listens; stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="windmill-stand-in-") as folder:
        process, offset = _start(argv, list(offsets) if offsets is not None else offsets_to_try(), Path(folder),
                                 cwd, ready_timeout_s)
        try:
            yield process, offset
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _start(argv: Callable[[int], list[str]], offsets: list[int], folder: Path, cwd: str | Path | None,
           ready_timeout_s: float) -> tuple[subprocess.Popen[bytes], int]:
    reason = "it was given no port offset"
    for attempt, offset in enumerate(offsets):
        output, errors = folder / f"stdout-{attempt}", folder / f"stderr-{attempt}"
        with output.open("wb") as out, errors.open("wb") as err:
            process = subprocess.Popen(argv(offset), stdout=out, stderr=err, cwd=cwd)
        deadline = time.monotonic() + ready_timeout_s
        while READY_LINE not in output.read_text(errors="replace"):
            if process.poll() is not None:
                lines = errors.read_text(errors="replace").strip().splitlines() or ["(no output)"]
                reason = f"it exited with code {process.returncode}: {lines[-1]}"
                break
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise WindmillError(f"the stand-in did not listen within {ready_timeout_s:.0f} s")
            time.sleep(0.05)
        else:
            return process, offset
    raise WindmillError(f"the stand-in could not start on {len(offsets)} port offsets; last time {reason}")
