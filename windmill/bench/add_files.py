"""`windmill-cli bench add`: `images add DIR --recursive` over a tree of N files (issue 13: ten million images):
files per second and the command's peak memory, for a first run (every file new) and a second (every file already
known, as a rerun after an interruption), in a throwaway cluster with production durability.

The files are empty: registering reads names, not pixels (the service workers read the images). The tree is
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
from windmill.db.queries import query

THIS_TREE = Path(__file__).resolve().parents[2]  # the checkout this module runs from


@dataclass(frozen=True)
class AddRun:
    seconds: float
    peak_mib: float


def build_tree(root: Path, files: int, per_directory: int) -> None:
    """`files` empty .jpg files, `per_directory` to a directory."""
    for start in range(0, files, per_directory):
        folder = root / f"cam{start // per_directory:05d}" / "2026" / "12"
        folder.mkdir(parents=True)
        for n in range(start, min(start + per_directory, files)):
            (folder / f"IMG_{n:08d}.jpg").touch()


def add_run(url: str, tree: Path, root: Path) -> AddRun:
    """One `images add ROOT --recursive` of `tree`'s code."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WINDMILL_", "DB_", "QUEUE_"))}
    env.update({"WINDMILL_DATABASE_URL": url, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(tree),
                "WINDMILL_HOME": tempfile.gettempdir()})
    argv = [sys.executable, "-m", "windmill", "-q", "images", "add", str(root), "--recursive", "--group", BENCH_GROUP]
    seconds, peak_mib, returncode = watched_run(argv, env)
    if returncode != 0:
        raise RuntimeError(f"images add exited with status {returncode} ({tree})")
    return AddRun(seconds, peak_mib)


def run(throwaway: Throwaway, *, files: int, per_directory: int, runs: int, baseline_tree: Path | None,
        echo: Callable[[str], None]) -> None:
    sides = [("this tree", THIS_TREE)] + ([("baseline", baseline_tree.resolve())] if baseline_tree else [])
    results: dict[str, list[tuple[AddRun, AddRun]]] = {label: [] for label, _ in sides}
    with tempfile.TemporaryDirectory(prefix="windmill-bench-add-") as folder:
        root = Path(folder) / "photos"
        started = time.perf_counter()
        build_tree(root, files, per_directory)
        echo(f"images add --recursive: {files:,} files, {per_directory:,} per directory "
             f"({(files + per_directory - 1) // per_directory:,} directories, built in "
             f"{time.perf_counter() - started:.0f} s), {throwaway.conditions()}; each run: every file new, then the "
             f"same again (every file already known)")
        for number in range(1, runs + 1):
            for label, tree in sides:
                with throwaway.database.connect() as conn:
                    conn.execute(query("bench_add_forget_images"))
                first, again = add_run(throwaway.url, tree, root), add_run(throwaway.url, tree, root)
                results[label].append((first, again))
                echo(f"  run {number} {label:9}  new: {files / first.seconds:9,.0f} files/s "
                     f"({first.seconds:6.1f} s, peak {first.peak_mib:5.0f} MiB)   known: "
                     f"{files / again.seconds:9,.0f} files/s ({again.seconds:6.1f} s, peak {again.peak_mib:5.0f} MiB)")
    for label, _ in sides:
        new = statistics.median(first.seconds for first, _ in results[label])
        known = statistics.median(again.seconds for _, again in results[label])
        peak = max(max(first.peak_mib, again.peak_mib) for first, again in results[label])
        echo(f"{label:9}  median new {files / new:,.0f} files/s, known {files / known:,.0f} files/s; "
             f"peak memory {peak:.0f} MiB")
    if baseline_tree is not None:
        this, base = results["this tree"], results["baseline"]
        echo("this tree ÷ baseline, medians: new "
             f"{statistics.median(b.seconds for b, _ in base) / statistics.median(t.seconds for t, _ in this):.2f}× "
             "the files/s, known "
             f"{statistics.median(b.seconds for _, b in base) / statistics.median(t.seconds for _, t in this):.2f}×")
