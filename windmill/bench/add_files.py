"""`windmill-cli bench add`: `images add DIR --recursive` over a tree of N files (issue 13: ten million images):
files per second and the command's peak memory, for a first run (every file new) and a second (every file already
known, as a rerun after an interruption), in a throwaway cluster with production durability. With `--watch`, the
start of `images watch DIR --recursive` on the same tree instead (files that landed while no watch ran): the time
until every file is registered, when it is sent SIGTERM, and its peak memory.

The files hold a byte and were last written an hour ago (complete, for the watch): registering reads names, not
pixels (the service workers read the images). The tree is
`cam<N>/<year>/<month>/` directories of `--per-directory` files each, as camera traps and upload folders are laid
out. With `--baseline-tree DIR` (another checkout, e.g. `git worktree add DIR REV`), the runs alternate with that
tree's command (`PYTHONPATH=DIR`) on the same cluster, and the summary gives each side's medians and the ratio.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from windmill.bench.processes import watched_run
from windmill.bench.stage import BENCH_GROUP
from windmill.bench.throwaway import Throwaway
from windmill.db.queries import fetch_value, query

THIS_TREE = Path(__file__).resolve().parents[2]  # the checkout this module runs from


@dataclass(frozen=True)
class AddRun:
    seconds: float
    peak_mib: float


def build_tree(root: Path, files: int, per_directory: int) -> None:
    """`files` .jpg files of one byte, `per_directory` to a directory, last written an hour ago."""
    an_hour_ago = time.time() - 3600
    for start in range(0, files, per_directory):
        folder = root / f"cam{start // per_directory:05d}" / "2026" / "12"
        folder.mkdir(parents=True)
        for n in range(start, min(start + per_directory, files)):
            path = folder / f"IMG_{n:08d}.jpg"
            path.write_bytes(b"\xff")
            os.utime(path, (an_hour_ago, an_hour_ago))


def add_run(throwaway: Throwaway, tree: Path, root: Path, *, files: int, watch: bool) -> AddRun:
    """One `images add ROOT --recursive` of `tree`'s code, or with `watch` one `images watch ROOT --recursive`
    until all `files` are registered."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WINDMILL_", "DB_", "QUEUE_"))}
    env.update({"WINDMILL_DATABASE_URL": throwaway.url, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(tree),
                "WINDMILL_HOME": tempfile.gettempdir()})
    command = ["watch"] if watch else ["add"]
    argv = [sys.executable, "-m", "windmill", "-q", "images", *command, str(root), "--recursive", "--group",
            BENCH_GROUP]

    def all_registered() -> bool:
        with throwaway.database.connect() as conn:
            return fetch_value(conn, "bench_group_size", {"group": BENCH_GROUP}) >= files

    seconds, peak_mib, returncode = watched_run(argv, env, until=all_registered if watch else None)
    if returncode != 0:
        raise RuntimeError(f"images {command[0]} exited with status {returncode} ({tree})")
    return AddRun(seconds, peak_mib)


def run(throwaway: Throwaway, *, files: int, per_directory: int, runs: int, baseline_tree: Path | None,
        watch: bool = False, echo: Callable[[str], None]) -> None:
    sides = [("this tree", THIS_TREE)] + ([("baseline", baseline_tree.resolve())] if baseline_tree else [])
    # A watch started again on files already known changes nothing it could be timed by: only its first start.
    passes = ("new",) if watch else ("new", "known")
    results: dict[tuple[str, str], list[AddRun]] = {(label, name): [] for label, _ in sides for name in passes}
    with tempfile.TemporaryDirectory(prefix="windmill-bench-add-") as folder:
        root = Path(folder) / "photos"
        started = time.perf_counter()
        build_tree(root, files, per_directory)
        echo(f"images {'watch' if watch else 'add'} --recursive: {files:,} files, {per_directory:,} per directory "
             f"({(files + per_directory - 1) // per_directory:,} directories, built in "
             f"{time.perf_counter() - started:.0f} s), {throwaway.conditions()}; each run: "
             + ("the watch started on them, every file new, stopped once all are registered" if watch else
                "every file new, then the same again (every file already known)"))
        for number in range(1, runs + 1):
            for label, tree in sides:
                with throwaway.database.connect() as conn:
                    conn.execute(query("bench_add_forget_images"))
                line = []
                for name in passes:
                    measured = add_run(throwaway, tree, root, files=files, watch=watch)
                    results[label, name].append(measured)
                    line.append(f"{name}: {files / measured.seconds:9,.0f} files/s ({measured.seconds:6.1f} s, "
                                f"peak {measured.peak_mib:5.0f} MiB)")
                echo(f"  run {number} {label:9}  " + "   ".join(line))
    median = {key: statistics.median(run.seconds for run in measured) for key, measured in results.items()}
    for label, _ in sides:
        peak = max(run.peak_mib for name in passes for run in results[label, name])
        echo(f"{label:9}  median " + ", ".join(f"{name} {files / median[label, name]:,.0f} files/s" for name in passes)
             + f"; peak memory {peak:.0f} MiB")
    if baseline_tree is not None:
        echo("this tree ÷ baseline, medians: " + ", ".join(
            f"{name} {median['baseline', name] / median['this tree', name]:.2f}× the files/s" for name in passes))
