"""`bench pipeline --baseline REV`: the whole pipeline against the workers of another commit, interleaved run by run.

Both sides get the same stand-in (this commit's, every answer computed per request), the same distinct synthetic
scenes (windmill/bench/scenes.py), the same PostgreSQL server and settings and the same worker layout; each side
runs its own code for everything that touches the database (`init-db`, `images add`, `submit`, the workers), from
its own venv: the other commit is checked out as a git worktree under the temporary directory and installed into a
venv beside it, both kept for the next run. Each side migrates a template database once; every run starts from a
fresh copy of it, so no run inherits another's dead rows.

A run is timed from the moment before `submit` (the workers connected and idle) to the last product written, and
its CPU is split by who spent it: the worker processes, the PostgreSQL cluster (all its processes, from /proc) and
the stand-in, apart. The runs alternate sides (head first, then the baseline first) so a machine whose speed drifts
favours neither; the summary gives each side's medians and the ratios head ÷ baseline.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import windmill
from windmill.bench.cpu import postgres_processes, process_cpu, processes_cpu, rabbitmq_processes
from windmill.bench.database import settle_disk
from windmill.bench.pipeline import ROLES, wait_until_idle
from windmill.bench.scenes import write_scenes
from windmill.bench.stage import BENCH_GROUP, BenchEnvironment, bench_environment
from windmill.bench.stand_in import running_stand_in
from windmill.catalog import Catalog
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.queries import fetch_row, fetch_value, query
from windmill.errors import WindmillError

IDLE_WINDOW_S = 0.5
IDLE_CPU_S = 0.05  # all workers together used less than this in the window: they have connected and wait


@dataclass(frozen=True)
class Side:
    """One commit's code: its label and the interpreter of the venv it is installed in."""

    label: str
    python: str
    # `python -m` puts the working directory first on sys.path: run where no other checkout's package lies
    cwd: str = tempfile.gettempdir()

    def argv(self, *args: str) -> list[str]:
        return [self.python, "-m", "windmill", *args]


@dataclass(frozen=True)
class Run:
    elapsed: float  # submit → last product, seconds
    images: int
    workers_cpu: float  # CPU-seconds, submit → last product
    postgres_cpu: float | None  # None: the server is not on this machine
    farm_cpu: float
    submit_cpu: float
    consensus: int  # images with a consensus at the end
    merged_boxes: int
    roles_cpu: dict[str, float]  # CPU-seconds of the worker processes by role (the two service workers together)
    statements: int | None  # top-level statements the run's database executed (None: no pg_stat_statements)
    load: float = 0.0  # the machine's 1-minute load average at submit: how much else competed for the cores
    # Transactions that wrote, submit's included: with production durability each commit waits for the disk.
    write_transactions: int = 0
    consensus_jobs: int = 0  # consensus jobs run (claimed and done) for the bench images
    # The local RabbitMQ node's CPU-seconds (None: no URL, or a node elsewhere), apart like the stand-in's: it shares
    # the cores with both sides, and neither counts it.
    broker_cpu: float | None = None
    # Jobs run (claimed and done) for the bench images by queue, the service tasks' queues as one: what an image
    # cost in merges, postprocessing jobs and votes (a deeper backlog changes these, not the answers).
    jobs_by_queue: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.images / self.elapsed

    def per_image(self, cpu: float | None) -> float | None:
        return None if cpu is None else cpu / self.images

    @property
    def windmill_cpu(self) -> float | None:
        """Workers + PostgreSQL per image: what the issue's CPU target counts (the stand-in is apart)."""
        return None if self.postgres_cpu is None else (self.workers_cpu + self.postgres_cpu) / self.images

    @property
    def windmill_per_stand_in(self) -> float | None:
        """Windmill's CPU in units of the stand-in's, run by run: the machine's speed drifts by up to 1.5× within an
        hour, and the stand-in answers the same requests for either side, so its CPU is a yardstick of the speed
        during that run. (The seed's side makes a few more requests per image: the yardstick is, if anything,
        longer there, which favours the seed.)"""
        windmill = self.windmill_cpu
        return None if windmill is None or not self.farm_cpu else windmill * self.images / self.farm_cpu


# -- the other commit, installed ----------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise WindmillError(f"git {' '.join(args)} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout.strip()


def baseline_side(rev: str, echo: Callable[[str], None]) -> Side:
    """The commit `rev` of this checkout's repository, checked out and installed under the temporary directory
    (reused when a previous run left it complete)."""
    repo = Path(windmill.__file__).resolve().parent.parent
    try:
        top = Path(_git(repo, "rev-parse", "--show-toplevel"))
    except (WindmillError, OSError):
        raise WindmillError("--baseline needs Windmill run from a git checkout (pip install -e .)") from None
    sha = _git(top, "rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = Path(tempfile.gettempdir()) / f"windmill-baseline-{sha[:12]}"
    venv = Path(f"{tree}.venv")
    python = venv / "bin" / "python"
    if not (tree / ".git").exists():
        echo(f"checking out {rev} ({sha[:12]}) into {tree}")
        _git(top, "worktree", "add", "--detach", str(tree), sha)
    if not (python.exists() and (venv / "bin" / "windmill-cli").exists()):
        echo(f"installing {rev} into {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(tree)], capture_output=True,
                                 text=True)
        if install.returncode != 0:
            raise WindmillError(f"installing {rev} failed: {install.stderr.strip().splitlines()[-1:]}")
    return Side(rev, str(python))


# -- databases ----------------------------------------------------------------------------------------------------


def _database_url(url: str, name: str) -> str:
    return conninfo_to_url(make_conninfo(url, dbname=name))


@contextmanager
def side_databases(url: str, side: Side, env: dict[str, str], slot: str) -> Iterator[Callable[[], str]]:
    """A template database the side's own `init-db` migrated, and a function that gives a fresh copy of it for
    each run (its URL). Both are dropped at the end."""
    base = conninfo_to_dict(url).get("dbname") or "postgres"
    template, copy = f"{base}_bench_{slot}_template", f"{base}_bench_{slot}"
    admin = psycopg.connect(url, autocommit=True)
    # CREATE and DROP DATABASE take no parameters: the names, ours alone, are composed in as identifiers.

    def drop(name: str) -> None:
        admin.execute(sql.SQL(query("bench_baseline_drop_database")).format(database=sql.Identifier(name)))

    def fresh() -> str:
        drop(copy)
        admin.execute(sql.SQL(query("bench_baseline_copy_database")).format(database=sql.Identifier(copy),
                                                                             template=sql.Identifier(template)))
        return _database_url(url, copy)

    try:
        drop(template)
        admin.execute(sql.SQL(query("bench_baseline_create_database")).format(database=sql.Identifier(template)))
        migrate_env = {**env, "WINDMILL_DATABASE_URL": _database_url(url, template)}
        migrated = subprocess.run(side.argv("init-db"), env=migrate_env, capture_output=True, text=True,
                                  cwd=side.cwd)
        if migrated.returncode != 0:
            raise WindmillError(f"init-db of {side.label} failed: {migrated.stderr.strip().splitlines()[-1:]}")
        yield fresh
    finally:
        drop(copy)
        drop(template)
        admin.close()


# -- one run ------------------------------------------------------------------------------------------------------


def _wait_workers_idle(pids: list[int], timeout_s: float = 60.0) -> None:
    """Until the workers have started and gone quiet (imports done, connections open, queues declared)."""
    deadline = time.monotonic() + timeout_s
    time.sleep(1.0)
    last = processes_cpu(pids)
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW_S)
        now = processes_cpu(pids)
        if now - last < IDLE_CPU_S:
            return
        last = now
    raise WindmillError("the workers did not go idle before submit")


def _count_statements(conn: psycopg.Connection) -> bool:
    """Start counting the database's statements when the server has pg_stat_statements loaded
    (shared_preload_libraries); False when it has not."""
    if not fetch_value(conn, "bench_statements_available"):
        return False
    conn.execute(query("bench_statements_extension"))
    conn.execute(query("bench_statements_reset"))
    return True


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run_quietly(side: Side, env: dict[str, str], *args: str) -> None:
    """A command of the side's own code, its output discarded; a failure raises CalledProcessError."""
    subprocess.run(side.argv(*args), env=env, check=True, cwd=side.cwd, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def run_once(side: Side, bench: BenchEnvironment, url: str, broker: str, folder: Path, answers_expected: int,
             farm_pid: int) -> Run:
    env = {**bench.env, "WINDMILL_DATABASE_URL": url}
    rabbitmq = rabbitmq_processes(env.get("WINDMILL_AMQP_URL"))
    _run_quietly(side, env, "images", "add", str(folder), "--group", BENCH_GROUP)
    database = Database(url, application_name="windmill-bench")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for n, spec in enumerate(ROLES):
            args = ["worker", *spec.worker_arguments(), "--concurrency", str(spec.concurrency), "--broker", broker]
            processes.append(subprocess.Popen(side.argv(*args), env={**env, "WORKER_ID": f"bench-{spec.role}-{n}"},
                                              stdout=subprocess.DEVNULL, cwd=side.cwd))
        pids = [process.pid for process in processes]
        _wait_workers_idle(pids)
        with database.connect() as conn:
            settle_disk(conn)
            postgres = postgres_processes(conn)
            counting = _count_statements(conn)
            roles_before = [process_cpu(pid) for pid in pids]
            before = (processes_cpu(pids), postgres.cpu(), processes_cpu([farm_pid]), _children_cpu(), rabbitmq.cpu())
            submitted = fetch_value(conn, "bench_latency_clock")
            first_transaction = fetch_value(conn, "bench_next_transaction_id")
        load = os.getloadavg()[0]
        _run_quietly(side, env, "submit", "--group", BENCH_GROUP, "--services", "primary", "--broker", broker)
        submit_cpu = _children_cpu() - before[3]
        watching_cpu = wait_until_idle(database, processes, answers_expected)
        workers_cpu = processes_cpu(pids) - before[0]
        roles_cpu: dict[str, float] = {}
        for spec, pid, earlier in zip(ROLES, pids, roles_before, strict=True):
            roles_cpu[spec.role] = roles_cpu.get(spec.role, 0.0) + process_cpu(pid) - earlier
        postgres_after = postgres.cpu()
        farm_cpu = processes_cpu([farm_pid]) - before[2]
        broker_after = rabbitmq.cpu()
        with database.connect() as conn:
            elapsed = float(fetch_value(conn, "bench_pipeline_span",
                                        {"group": BENCH_GROUP, "since": submitted}))
            images, consensus, boxes, consensus_jobs = fetch_row(conn, "bench_baseline_products",
                                                                 {"group": BENCH_GROUP})
            jobs_by_queue: dict[str, int] = dict(conn.execute(query("bench_baseline_jobs_by_queue"),
                                                              {"group": BENCH_GROUP}))
            statements = fetch_value(conn, "bench_statements_count") if counting else None
            write_transactions = fetch_value(conn, "bench_next_transaction_id") - first_transaction
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
    postgres_cpu = None if before[1] is None or postgres_after is None else postgres_after - before[1] - watching_cpu
    broker_cpu = None if before[4] is None or broker_after is None else broker_after - before[4]
    return Run(elapsed, images, workers_cpu, postgres_cpu, farm_cpu, submit_cpu, consensus, boxes, roles_cpu,
               statements, load, consensus_jobs=consensus_jobs, write_transactions=write_transactions,
               broker_cpu=broker_cpu, jobs_by_queue=jobs_by_queue)


# -- the interleaved session --------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.1f}"


def describe(side: Side, broker: str, number: int, run: Run) -> str:
    return (f"  {broker:<8} {side.label:<10} run {number}: {run.rate:6.1f} images/s ({run.elapsed:5.1f} s); CPU ms per "
            f"image: workers {_ms(run.per_image(run.workers_cpu))}, PostgreSQL {_ms(run.per_image(run.postgres_cpu))}"
            f", Windmill {_ms(run.windmill_cpu)} | stand-in {_ms(run.per_image(run.farm_cpu))}, RabbitMQ "
            f"{_ms(run.per_image(run.broker_cpu))}, submit "
            f"{_ms(run.per_image(run.submit_cpu))}; consensus {run.consensus}/{run.images} "
            f"({run.consensus_jobs / run.images:.2f} consensus jobs per image), {run.merged_boxes} boxes; "
            f"statements per image {'n/a' if run.statements is None else f'{run.statements / run.images:.0f}'}, "
            f"write transactions per image {run.write_transactions / run.images:.1f}; "
            f"load average {run.load:.1f} at submit\n"
            f"  {'':<8} {'':<10}        workers by role (CPU ms per image): "
            + ", ".join(f"{role} {_ms(run.per_image(cpu))}" for role, cpu in run.roles_cpu.items())
            + f"\n  {'':<8} {'':<10}        jobs run per image: "
            + ", ".join(f"{kind} {count / run.images:.2f}" for kind, count in run.jobs_by_queue.items()))


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if len(present) == len(values) and present else None


_PER_STAND_IN = "Windmill CPU ÷ stand-in CPU (drift left out)"


def summary(broker: str, head: Side, base: Side, runs: dict[str, list[Run]]) -> list[str]:
    """Medians of each side and the ratios head ÷ baseline, one line per measure."""
    measures: list[tuple[str, Callable[[Run], float | None], str]] = [
        ("images/s", lambda run: run.rate, "{:.1f}"),
        ("Windmill CPU ms/image (workers + PostgreSQL)", lambda run: run.windmill_cpu, "{:.1f}"),
        ("  workers CPU ms/image", lambda run: run.per_image(run.workers_cpu), "{:.1f}"),
        ("  PostgreSQL CPU ms/image", lambda run: run.per_image(run.postgres_cpu), "{:.1f}"),
        ("stand-in CPU ms/image (apart)", lambda run: run.per_image(run.farm_cpu), "{:.1f}"),
        ("RabbitMQ node CPU ms/image (apart)", lambda run: run.per_image(run.broker_cpu), "{:.1f}"),
        (_PER_STAND_IN, lambda run: run.windmill_per_stand_in, "{:.2f}"),
        ("write transactions/image (commits)", lambda run: run.write_transactions / run.images, "{:.1f}"),
    ]
    lines = [f"{broker}: medians of {len(runs[head.label])} runs, {head.label} vs {base.label}"]
    for name, measure, form in measures:
        scale = 1 if name in ("images/s", _PER_STAND_IN, "write transactions/image (commits)") else 1000
        head_median, base_median = (_median([measure(run) for run in runs[side.label]]) for side in (head, base))
        if head_median is None or base_median is None:
            lines.append(f"  {name:<46} n/a")
            continue
        head_value, base_value = head_median * scale, base_median * scale
        ratio = head_value / base_value if base_value else float("nan")
        lines.append(f"  {name:<46} {form.format(head_value):>8} vs {form.format(base_value):>8}  ratio {ratio:.2f}×")
    # Each side's run n ran next to the other's (the sides alternate who goes first): the pairs show the spread that
    # the medians hide, a machine that drifted during the sitting included.
    pairs = list(zip(runs[head.label], runs[base.label], strict=False))

    def ratios(measure: Callable[[Run], float | None]) -> str:
        return ", ".join("n/a" if (h := measure(one)) is None or not (b := measure(other)) else f"{h / b:.2f}×"
                         for one, other in pairs)

    lines.append(f"  run by run, head ÷ baseline: images/s {ratios(lambda run: run.rate)}; "
                 f"Windmill CPU {ratios(lambda run: run.windmill_cpu)}")
    return lines


def run(url: str, catalog: Catalog, *, baseline: str, images: int, runs: int, amqp_url: str | None,
        echo: Callable[[str], None]) -> None:
    base = baseline_side(baseline, echo)
    head = Side("head", sys.executable)
    # Both sides score captions by upload, as the seed did and every sitting before the shipped catalog gave
    # caption_score its file: the stand-in takes an upload on /score (the clip-score service's way), the catalog
    # says so for both, and the yardstick stays the one the README's earlier figures used.
    catalog = Catalog(tuple(replace(service, request_mode="upload") if service.name == "caption_score" else service
                            for service in catalog.services))
    brokers = (["rabbitmq"] if amqp_url else []) + ["postgres"]
    answers = images * len(catalog.in_category("primary"))
    with tempfile.TemporaryDirectory(prefix="windmill-bench-scenes-") as folder:
        write_scenes(Path(folder), images)

        def farm_argv(offset: int) -> list[str]:
            return head.argv("farm", "serve", "--no-cache", "--score-uploads", "--annotations", folder,
                             "--port-offset", str(offset))

        with running_stand_in(farm_argv, cwd=head.cwd) as (farm, offset):
            conditions = database_conditions(url)
            echo(f"pipeline {head.label} vs {base.label}: {images} distinct scenes of 3–4 objects, every primary "
                 f"service + merge + postprocessing + consensus + caption scoring, {len(ROLES)} worker processes "
                 f"per side; stand-in with every answer computed per request; PostgreSQL {conditions}; "
                 f"timed from submit (workers idle, after a CHECKPOINT and sync) to the last product; {runs} runs "
                 "per side, interleaved")
            for broker in brokers:
                _session(head, base, broker, url, catalog, amqp_url, offset, Path(folder), answers, farm.pid,
                         runs, echo)


def database_conditions(url: str) -> str:
    """The server's durability settings, printed with the figures (production: all three on)."""
    with psycopg.connect(url, autocommit=True) as conn:
        values = [fetch_value(conn, "show_setting", {"name": name})
                  for name in ("fsync", "synchronous_commit", "full_page_writes")]
    return f"fsync={values[0]}, synchronous_commit={values[1]}, full_page_writes={values[2]}"


def _session(head: Side, base: Side, broker: str, url: str, catalog: Catalog, amqp_url: str | None, offset: int,
             folder: Path, answers: int, farm_pid: int, runs: int, echo: Callable[[str], None]) -> None:
    results: dict[str, list[Run]] = {head.label: [], base.label: []}
    with (bench_environment(catalog, url, amqp_url, port_offset=offset) as head_bench,
          bench_environment(catalog, url, amqp_url, port_offset=offset) as base_bench,
          side_databases(url, head, head_bench.env, "head") as head_fresh,
          side_databases(url, base, base_bench.env, "base") as base_fresh):
        sides = [(head, head_bench, head_fresh), (base, base_bench, base_fresh)]
        for number in range(1, runs + 1):
            for side, bench, fresh in sides if number % 2 else reversed(sides):
                result = run_once(side, bench, fresh(), broker, folder, answers, farm_pid)
                results[side.label].append(result)
                echo(describe(side, broker, number, result))
    for line in summary(broker, head, base, results):
        echo(line)
