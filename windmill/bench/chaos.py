"""The chaos run (`windmill-cli bench chaos`): images through the whole pipeline while the stand-in farm fails
requests, worker processes are SIGKILLed at random and restarted, and PostgreSQL and RabbitMQ each restart once;
then an audit that every product is exactly what a calm recompute over the final rows gives.

Why a run of its own rather than the unit tests' guarantees: each rule of the design (task ids, leases, recompute
under a per-image lock, bounded retries, backfill) is tested alone; only all faults at once show that they
compose — that no kill, restart or retry leaves a pair without its answer, an answer twice, or a product stale.

Everything it changes is its own: a private PostgreSQL cluster (so it may restart it), a private RabbitMQ node (so
it may crash it: windmill/bench/private_rabbitmq.py), a stand-in farm on free ports, copies of the sample
photographs.

Service tasks travel through RabbitMQ (the ingest path its restart tests); merge, postprocess, consensus and
caption scores through the job table (the path the PostgreSQL restart and the kills test).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import psycopg
from pika.adapters.blocking_connection import BlockingConnection
from psycopg_pool import ConnectionPool

from windmill.bench.private_rabbitmq import PrivateRabbitMQ
from windmill.bench.stage import cli_argv, copy_samples
from windmill.catalog import Catalog, load_catalog
from windmill.collection import add_paths
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.embedded import EmbeddedPostgres
from windmill.db.jsonb import as_stored
from windmill.db.queries import query
from windmill.db.schema import init_database
from windmill.errors import WindmillError
from windmill.harmony import DetectorResult, HarmonyConfig, harmonize
from windmill.roles.consensus import consensus_for_image
from windmill.roles.merger import crop_key, postprocessing_of
from windmill.settings import settings_from_mapping
from windmill.upkeep import run_backfill
from windmill.worker.group import pipeline_idle

PRIMARY = "primary"
POLL_S = 0.25


@dataclass(frozen=True)
class ChaosPlan:
    """What goes wrong, and how often. The defaults are issue 7's: 5 % HTTP 500, 2 % timeouts, 1 % malformed."""

    images: int = 500
    error_rate: float = 0.05
    timeout_rate: float = 0.02
    malformed_rate: float = 0.01
    # The stand-in holds a "timeout" request for 10× the catalog timeout: 30 s services would make every timeout
    # cost minutes; 3 s keeps them honest (the client really gives up) and the run short.
    service_timeout_s: float = 3.0
    lease_seconds: float = 5.0  # short, so a killed worker's jobs come back within seconds
    kill_interval_s: float = 4.0  # mean time between SIGKILLs (uniform in [0.5, 1.5] × this)
    min_kills: int = 2
    rabbitmq_restart_at: float = 0.25  # share of the answers stored when RabbitMQ restarts
    postgres_restart_at: float = 0.5  # … and when PostgreSQL restarts
    outage_s: float = 2.0  # how long each server stays down
    service_workers: int = 2
    seed: int = 7
    deadline_s: float = 3600.0  # the whole run gives up after this
    stall_s: float = 60.0  # settling gives up when nothing moved for this long


@dataclass(frozen=True)
class WorkerSpec:
    """One supervised worker process (a systemd unit with Restart=always, in production)."""

    name: str
    args: tuple[str, ...]


def worker_specs(plan: ChaosPlan) -> list[WorkerSpec]:
    lease = ("--lease-seconds", f"{plan.lease_seconds:g}")
    # A service worker runs one consumer per queue, each with --concurrency threads: 2 × 11 queues is plenty.
    services = [WorkerSpec(f"service-{n}", ("worker", "--role", "service", "--service", PRIMARY, "--broker",
                                            "rabbitmq", "--concurrency", "2", *lease))
                for n in range(plan.service_workers)]
    return [*services,
            WorkerSpec("merger", ("worker", "--role", "merger", "--concurrency", "2", *lease)),
            WorkerSpec("postprocess", ("worker", "--role", "postprocess", "--service", "colors,face,pose",
                                       "--concurrency", "4", *lease)),
            WorkerSpec("consensus", ("worker", "--role", "consensus", "--concurrency", "2", *lease)),
            WorkerSpec("caption_score", ("worker", "--role", "caption_score", "--concurrency", "2", *lease))]


# -- the supervisor ---------------------------------------------------------------------------------------------


class ChaosSupervisor:
    """Keeps one process per spec alive and kills one at random on request. Each incarnation gets its own
    WORKER_ID, as a restarted host's worker would: a new process must never complete its predecessor's leases."""

    RESTART_DELAY_S = 1.0  # after an exit we did not cause (e.g. the database was down at start-up)

    def __init__(self, specs: Sequence[WorkerSpec], env: dict[str, str], log_dir: Path, rng: random.Random) -> None:
        self.specs = list(specs)
        self.env = env
        self.log_dir = log_dir
        self.rng = rng
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.generations: Counter[str] = Counter()
        self.kills: Counter[str] = Counter()
        self.unexpected_exits: Counter[str] = Counter()
        self._killed: set[int] = set()
        self._exited_at: dict[str, float] = {}

    def start(self, spec: WorkerSpec) -> None:
        self.generations[spec.name] += 1
        with open(self.log_dir / f"{spec.name}.log", "ab") as log:
            self.processes[spec.name] = subprocess.Popen(
                cli_argv(*spec.args), env={**self.env, "WORKER_ID": f"chaos-{spec.name}-{self.generations[spec.name]}"},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def revive(self) -> None:
        """Start what is not running: every spec at first, then whatever was killed or exited."""
        now = time.monotonic()
        for spec in self.specs:
            process = self.processes.get(spec.name)
            if process is not None and process.poll() is None:
                continue
            if process is not None and process.pid not in self._killed:
                exited = self._exited_at.setdefault(spec.name, now)
                if exited == now:
                    self.unexpected_exits[spec.name] += 1
                if now - exited < self.RESTART_DELAY_S:
                    continue
            self._exited_at.pop(spec.name, None)
            self.start(spec)

    def kill_random(self) -> str | None:
        alive = sorted(name for name, process in self.processes.items() if process.poll() is None)
        if not alive:
            return None
        name = self.rng.choice(alive)
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()
        self._killed.add(process.pid)
        self.kills[name] += 1
        return name

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (drain), then SIGKILL what did not leave in time."""
        running = [process for process in self.processes.values() if process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + timeout_s
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- the environment: catalog, farm, database, queues -----------------------------------------------------------


def write_catalog(catalog: Catalog, path: Path, *, queue_prefix: str, port_offset: int, timeout_s: float,
                  host: str = "127.0.0.1") -> Catalog:
    """The catalog every process of the run reads: the stand-in's address and ports, private queue names, short
    timeouts."""
    services = {
        service.name: {"host": host, "port": service.port + port_offset, "endpoint": service.endpoint,
                       "queue_prefix": queue_prefix, "category": service.category,
                       "service_type": ",".join(service.service_type), "description": service.description,
                       "enable_triggers": service.enable_triggers,
                       "enable_caption_scoring": service.enable_caption_scoring,
                       "enable_consensus_triggers": service.enable_consensus_triggers,
                       "timeout_s": timeout_s, "request_mode": service.request_mode, "prefetch": service.prefetch}
        for service in catalog.services
    }
    path.write_text(json.dumps({"services": services}, indent=2))
    return load_catalog(path)


def _ports_accept(ports: Sequence[int]) -> bool:
    for port in ports:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
    return True


@contextmanager
def running_farm(catalog: Catalog, catalog_path: Path, env: dict[str, str], plan: ChaosPlan, log_dir: Path, *,
                 queue_prefix: str) -> Iterator[Catalog]:
    """`windmill-cli farm serve` with the plan's faults, in its own process (its own GIL), on a free port range;
    yields the catalog that points at it (already written to `catalog_path`)."""
    highest = max(service.port for service in catalog.services)
    for _ in range(10):
        offset = random.randrange(10_000, 65_000 - highest, 100)  # not the plan's seed: two runs may share it
        shifted = write_catalog(catalog, catalog_path, queue_prefix=queue_prefix,
                                port_offset=offset, timeout_s=plan.service_timeout_s)
        ports = [service.port for service in shifted.services]
        if not all(_port_free(port) for port in ports):
            continue
        with open(log_dir / "farm.log", "ab") as log:
            farm = subprocess.Popen(
                cli_argv("farm", "serve", "--services", "full_catalog", "--error-rate", f"{plan.error_rate:g}",
                     "--timeout-rate", f"{plan.timeout_rate:g}", "--malformed-rate", f"{plan.malformed_rate:g}",
                     "--seed", str(plan.seed)),
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while farm.poll() is None and time.monotonic() < deadline and not _ports_accept(ports):
            time.sleep(0.2)
        if farm.poll() is not None:
            continue  # lost a port to someone between our check and its bind: another range
        if not _ports_accept(ports):
            farm.kill()
            farm.wait()
            raise WindmillError(f"the stand-in farm did not open its ports within a minute; see {log_dir / 'farm.log'}")
        try:
            yield shifted
        finally:
            farm.terminate()
            try:
                farm.wait(30)
            except subprocess.TimeoutExpired:
                farm.kill()
                farm.wait()
        return
    raise WindmillError("no free port range for the stand-in farm")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextmanager
def private_cluster(home: Path) -> Iterator[EmbeddedPostgres]:
    """A cluster of our own under `home` (fsync off: durability is not what this run measures)."""
    cluster = EmbeddedPostgres(home, fast=True)
    cluster.acquire()
    try:
        yield cluster
    finally:
        cluster.discard()


def restart_postgres(cluster: EmbeddedPostgres, conninfo: str, outage_s: float) -> float:
    """Stop the cluster (fast shutdown: every connection is cut), wait, start it on the same port; returns the
    outage in seconds."""
    started = time.monotonic()
    cluster.stop()
    time.sleep(outage_s)
    if cluster.acquire() != conninfo:
        raise WindmillError("PostgreSQL came back on another port; the workers cannot follow it")
    return time.monotonic() - started


def dead_letters(amqp_url: str, queues: Sequence[str]) -> int:
    """Count the messages in the dead-letter queues."""
    connection = BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        dead = 0
        for queue in queues:
            try:
                dead += channel.queue_declare(queue + ".dlq", passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                channel = connection.channel()  # never declared: nothing dead-lettered there
        return dead
    finally:
        connection.close()


class Probe:
    """The runner's own connection for progress queries; it survives the PostgreSQL restart by reconnecting."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.conn: psycopg.Connection | None = None

    def scalar(self, sql: str) -> Any:
        """The query's single value, or None while the database is unreachable."""
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self.database.connect()
            return self.conn.execute(sql).fetchone()[0]  # type: ignore[index]
        except (psycopg.OperationalError, WindmillError):
            self.close()
            return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# -- the audit --------------------------------------------------------------------------------------------------

_PAIRS = """
SELECT count(*), count(*) FILTER (WHERE answers = 0), count(*) FILTER (WHERE answers > 1)
  FROM (SELECT i.image_id, s.name, count(r.result_id) AS answers
          FROM images i
         CROSS JOIN unnest(%(services)s::text[]) AS s(name)
          LEFT JOIN results r ON r.image_id = i.image_id AND r.service = s.name
         GROUP BY i.image_id, s.name) AS pairs
"""
_FINAL_STATUS = """
SELECT status, coalesce(data->'error'->>'kind', ''), count(*),
       count(*) FILTER (WHERE status <> 'success' AND coalesce(error_message, '') = '')
  FROM (SELECT DISTINCT ON (image_id, service) status, error_message, data
          FROM results
         WHERE service = ANY(%(services)s)
         ORDER BY image_id, service, result_created DESC, result_id DESC) AS final
 GROUP BY 1, 2
"""
_CAPTIONS_MISSING = """
SELECT count(*)
  FROM (SELECT DISTINCT ON (image_id, service) image_id, service, result_id
          FROM results
         WHERE status = 'success' AND service = ANY(%(sources)s)
         ORDER BY image_id, service, result_created DESC, result_id DESC) AS latest
 WHERE NOT EXISTS (SELECT 1 FROM postprocessing p
                    WHERE p.image_id = latest.image_id AND p.merged_box_id IS NULL
                      AND p.service = 'caption_score_' || latest.service
                      AND (p.data->>'source_result_id')::bigint = latest.result_id)
"""
_DUPLICATE_CAPTIONS = """
SELECT count(*) FROM (SELECT 1 FROM postprocessing WHERE merged_box_id IS NULL
                       GROUP BY image_id, service HAVING count(*) > 1) AS twice
"""
_JOBS = """
SELECT count(*) FILTER (WHERE state = 'running'),
       count(*) FILTER (WHERE state IN ('queued', 'failed') AND queue <> 'scheduler'),
       count(*) FILTER (WHERE state = 'dead'),
       count(*),
       coalesce(sum(attempts - 1) FILTER (WHERE attempts > 1), 0),
       count(*) FILTER (WHERE last_error LIKE 'lease %%expired%%')
  FROM jobs
"""


@dataclass
class Audit:
    """The end state, counted; `problems` names every end condition that does not hold."""

    images: int = 0
    pairs: int = 0
    answers: int = 0
    final: dict[str, int] = field(default_factory=dict)  # latest answer per pair, by status
    failure_kinds: dict[str, int] = field(default_factory=dict)  # final errors and timeouts, by the client's kind
    missing_pairs: int = 0
    duplicated_pairs: int = 0
    failures_without_reason: int = 0
    boxes: int = 0
    box_sets_equal: int = 0
    consensus_present: int = 0
    consensus_equal: int = 0
    postprocessing_missing: int = 0
    caption_scores_missing: int = 0
    duplicated_caption_scores: int = 0
    jobs: int = 0
    jobs_running: int = 0
    jobs_waiting: int = 0
    jobs_dead: int = 0
    retries: int = 0
    lease_expiries: int = 0
    dead_reasons: list[str] = field(default_factory=list)
    consensus_differences: list[str] = field(default_factory=list)  # the first few, with their evidence times

    @property
    def problems(self) -> list[str]:
        found = []
        if self.missing_pairs:
            found.append(f"{self.missing_pairs} image × service pairs without an answer")
        if self.duplicated_pairs:
            found.append(f"{self.duplicated_pairs} pairs answered more than once")
        if self.failures_without_reason:
            found.append(f"{self.failures_without_reason} error/timeout answers without a reason")
        if self.box_sets_equal != self.images:
            found.append(f"{self.images - self.box_sets_equal} images whose boxes differ from a fresh recompute")
        if self.consensus_present != self.images:
            found.append(f"{self.images - self.consensus_present} images without a consensus")
        if self.consensus_equal != self.consensus_present:
            found.append(f"{self.consensus_present - self.consensus_equal} consensus rows differ from a recompute "
                         f"({'; '.join(self.consensus_differences)})")
        if self.postprocessing_missing:
            found.append(f"{self.postprocessing_missing} box × service postprocessing rows missing")
        if self.caption_scores_missing or self.duplicated_caption_scores:
            found.append(f"caption scores: {self.caption_scores_missing} missing or stale, "
                         f"{self.duplicated_caption_scores} duplicated")
        if self.jobs_running or self.jobs_waiting:
            found.append(f"{self.jobs_running} jobs still running, {self.jobs_waiting} still waiting")
        if self.jobs_dead:
            found.append(f"{self.jobs_dead} dead jobs ({'; '.join(self.dead_reasons)})")
        return found


_EVIDENCE_TIMES = """
SELECT (SELECT consensus_created FROM consensus WHERE image_id = %(image_id)s),
       (SELECT changed_at FROM merged_images WHERE image_id = %(image_id)s),
       (SELECT max(result_created) FROM postprocessing
         WHERE image_id = %(image_id)s AND service IN ('face', 'pose')),
       (SELECT max(result_created) FROM results WHERE image_id = %(image_id)s AND status = 'success')
"""


def _consensus_difference(conn: psycopg.Connection, image_id: int, stored: Any, fresh: Any) -> str:
    """Which parts of a stored consensus differ from a recompute, and when its evidence last changed: a stale row
    younger than all its evidence points at a race, not at lost work."""
    keys = sorted(key for key in set(stored) | set(fresh) if stored.get(key) != fresh.get(key))
    made, boxes, people, answers = conn.execute(_EVIDENCE_TIMES, {"image_id": image_id}).fetchone()
    voters = set(stored.get("services_list") or []) ^ set(fresh.get("services_list") or [])
    late = conn.execute("SELECT string_agg(service || ' ' || to_char(result_created, 'HH24:MI:SS.MS'), ', ') "
                        "FROM results WHERE image_id = %s AND service = ANY(%s)",
                        (image_id, sorted(voters))).fetchone()[0]

    def clock(moment: Any) -> str:
        return "-" if moment is None else moment.strftime("%H:%M:%S.%f")[:-3]

    return (f"image {image_id}: {', '.join(keys)} differ; consensus at {clock(made)}, boxes changed at "
            f"{clock(boxes)}, last face/pose at {clock(people)}, last answer at {clock(answers)}"
            + (f"; services not in both: {late}" if voters else ""))


def audit(conn: psycopg.Connection, catalog: Catalog, harmony: HarmonyConfig) -> Audit:
    """Count the end state of a run: answers per pair, and each product against a recompute from the final rows."""
    services = [service.name for service in catalog.select(PRIMARY)]
    service_types = {service.name: service.service_type for service in catalog.services}
    found = Audit()
    found.pairs, found.missing_pairs, found.duplicated_pairs = conn.execute(_PAIRS, {"services": services}).fetchone()
    found.answers = conn.execute("SELECT count(*) FROM results").fetchone()[0]
    for status, kind, count, without_reason in conn.execute(_FINAL_STATUS, {"services": services}):
        found.final[status] = found.final.get(status, 0) + count
        if status != "success":
            found.failure_kinds[kind or "?"] = found.failure_kinds.get(kind or "?", 0) + count
        found.failures_without_reason += without_reason
    images = [row[0] for row in conn.execute("SELECT image_id FROM images ORDER BY image_id")]
    found.images = len(images)
    for image_id in images:
        rows = conn.execute(query("latest_detector_results"), {"image_id": image_id}).fetchall()
        recomputed = harmonize([DetectorResult(*row) for row in rows], harmony)
        wanted = {crop_key(box): as_stored(box.to_merged_data()) for box in recomputed}
        stored_rows = conn.execute("SELECT crop_key, merged_id, merged_data FROM merged_boxes WHERE image_id = %s",
                                   (image_id,)).fetchall()
        stored = {key: data for key, _, data in stored_rows}
        found.boxes += len(stored_rows)
        found.box_sets_equal += len(stored_rows) == len(stored) and stored == wanted
        ids = {key: merged_id for key, merged_id, _ in stored_rows}
        done = set(conn.execute("SELECT merged_box_id, service FROM postprocessing "
                                "WHERE image_id = %s AND merged_box_id IS NOT NULL", (image_id,)).fetchall())
        found.postprocessing_missing += sum((ids.get(crop_key(box)), service) not in done
                                            for box in recomputed for service in postprocessing_of(conn, box))
        row = conn.execute("SELECT consensus_data FROM consensus WHERE image_id = %s", (image_id,)).fetchone()
        if row is not None:
            found.consensus_present += 1
            fresh = as_stored(consensus_for_image(conn, image_id, service_types))
            if row[0] == fresh:
                found.consensus_equal += 1
            elif len(found.consensus_differences) < 5:
                found.consensus_differences.append(_consensus_difference(conn, image_id, row[0], fresh))
    sources = [service.name for service in catalog.services if service.enable_caption_scoring]
    found.caption_scores_missing = conn.execute(_CAPTIONS_MISSING, {"sources": sources}).fetchone()[0]
    found.duplicated_caption_scores = conn.execute(_DUPLICATE_CAPTIONS).fetchone()[0]
    (found.jobs_running, found.jobs_waiting, found.jobs_dead, found.jobs, found.retries,
     found.lease_expiries) = conn.execute(_JOBS).fetchone()
    found.dead_reasons = [f"{queue}: {reason}" for queue, reason in conn.execute(
        "SELECT queue, last_error FROM jobs WHERE state = 'dead' ORDER BY id LIMIT 5")]
    return found


# -- the run ----------------------------------------------------------------------------------------------------


@dataclass
class ChaosReport:
    plan: ChaosPlan
    audit: Audit = field(default_factory=Audit)
    seconds: float = 0.0
    ingest_seconds: float = 0.0  # until every pair had an answer
    kills: dict[str, int] = field(default_factory=dict)
    unexpected_exits: dict[str, int] = field(default_factory=dict)
    postgres_outage_s: float | None = None
    rabbitmq_outage_s: float | None = None
    dead_lettered: int = 0
    backfill: dict[str, int] = field(default_factory=dict)
    settled: bool = False

    @property
    def problems(self) -> list[str]:
        found = list(self.audit.problems)
        if not self.settled:
            found.insert(0, "the pipeline did not settle before the deadline")
        if sum(self.kills.values()) < self.plan.min_kills:
            found.append(f"only {sum(self.kills.values())} SIGKILLs (wanted {self.plan.min_kills})")
        if self.postgres_outage_s is None or self.rabbitmq_outage_s is None:
            found.append("a planned server restart did not happen")
        return found

    def lines(self) -> list[str]:
        a, p = self.audit, self.plan
        final = ", ".join(f"{a.final.get(status, 0)} {status}" for status in ("success", "error", "timeout"))
        others = {k: v for k, v in a.final.items() if k not in ("success", "error", "timeout")}
        final += "".join(f", {count} {status}" for status, count in sorted(others.items()))
        if a.failure_kinds:
            final += " (" + ", ".join(f"{kind} {count}" for kind, count in sorted(a.failure_kinds.items())) + ")"
        kills = ", ".join(f"{name} {count}" for name, count in sorted(self.kills.items()))
        exits = sum(self.unexpected_exits.values())
        backfill = ", ".join(f"{count} {queue}" for queue, count in self.backfill.items()) or "nothing"
        lines = [
            f"Chaos run: {a.images} images × {a.pairs // max(a.images, 1)} primary services "
            f"in {self.seconds:.0f} s (every pair answered after {self.ingest_seconds:.0f} s)",
            f"  faults:      farm {p.error_rate:.0%} HTTP 500, {p.timeout_rate:.0%} timeouts "
            f"({p.service_timeout_s:g} s), {p.malformed_rate:.0%} malformed bodies; {sum(self.kills.values())} "
            f"SIGKILLs ({kills}); {exits} exits we did not cause (restarted too); PostgreSQL down "
            f"{_seconds(self.postgres_outage_s)}, RabbitMQ down {_seconds(self.rabbitmq_outage_s)}",
            f"  answers:     {a.pairs} pairs, {a.answers} rows; final: {final}; missing {a.missing_pairs}, "
            f"duplicated {a.duplicated_pairs}, failures without a reason {a.failures_without_reason}; "
            f"{self.dead_lettered} tasks dead-lettered after 5 attempts (each stored as its error row)",
            f"  boxes:       {a.box_sets_equal}/{a.images} images equal a fresh recompute ({a.boxes} boxes)",
            f"  consensus:   {a.consensus_present}/{a.images} present, {a.consensus_equal}/{a.consensus_present} "
            f"equal a fresh recompute",
            f"  postprocess: {a.postprocessing_missing} box rows missing; caption scores {a.caption_scores_missing} "
            f"missing or stale, {a.duplicated_caption_scores} duplicated",
            f"  jobs:        {a.jobs} in all, {a.jobs_running} running, {a.jobs_waiting} waiting, {a.jobs_dead} dead; "
            f"{a.retries} retries, {a.lease_expiries} ended by an expired lease; the final backfill queued {backfill}",
        ]
        problems = self.problems
        lines.append("  result:      " + ("every end condition holds" if not problems
                                          else "PROBLEMS: " + "; ".join(problems)))
        return lines


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def run(catalog: Catalog, plan: ChaosPlan | None = None, *, log_dir: Path | None = None,
        echo: Callable[[str], object] = print) -> ChaosReport:
    """Run the chaos plan end to end, print its counts (through `echo`) and return them."""
    plan = plan or ChaosPlan()
    report = ChaosReport(plan)
    rng = random.Random(plan.seed)
    started = time.monotonic()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="windmill-chaos-")))
        os.chmod(work, 0o755)  # the server's unprivileged user keeps its data inside, removed with the rest
        logs = log_dir or work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        cluster = stack.enter_context(private_cluster(work / "home"))
        rabbitmq = stack.enter_context(PrivateRabbitMQ(work / "rabbitmq", prefix="windmill-chaos"))
        amqp_url = rabbitmq.amqp_url
        conninfo = cluster.status().conninfo
        assert conninfo is not None
        prefix = f"chaos_{uuid.uuid4().hex[:8]}_queue_"
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("WINDMILL_", "DB_", "QUEUE_", "PG"))}
        env.update({"WINDMILL_DATABASE_URL": conninfo_to_url(conninfo), "WINDMILL_AMQP_URL": amqp_url,
                    "WINDMILL_SERVICE_CONFIG": str(work / "service_config.json"),
                    "WINDMILL_HOME": str(work / "client-home"), "LOG_LEVEL": "WARNING"})
        shifted = stack.enter_context(running_farm(catalog, work / "service_config.json", env, plan, logs,
                                                   queue_prefix=prefix))
        queues = [service.queue_name for service in shifted.select(PRIMARY)]
        stack.callback(lambda: setattr(report, "dead_lettered", dead_letters(amqp_url, queues)))
        database = Database(conninfo, application_name="windmill-chaos")
        photos = work / "images"
        photos.mkdir()
        copy_samples(photos, plan.images)
        with database.connect() as conn:
            init_database(conn, shifted)
            add_paths(conn, [photos])
        pairs = plan.images * len(queues)
        echo(f"Chaos run: {plan.images} images × {len(queues)} services = {pairs} tasks; logs in {logs}")

        supervisor = ChaosSupervisor(worker_specs(plan), env, logs, rng)
        stack.callback(supervisor.stop)
        supervisor.revive()
        submitted = subprocess.run(cli_argv("submit", "--services", PRIMARY, "--broker", "rabbitmq"), env=env,
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if submitted.returncode != 0:
            raise WindmillError(f"submit failed: {submitted.stderr.strip().splitlines()[-1:]}")
        probe = Probe(database)
        stack.callback(probe.close)
        _rampage(plan, report, supervisor, probe, cluster, rabbitmq, conninfo, pairs, started, echo)
        report.kills, report.unexpected_exits = dict(supervisor.kills), dict(supervisor.unexpected_exits)

        with database.pool(max_size=2, name="chaos") as pool:
            # What production's backfill (every minute) would do: one run once all is quiet, then quiet again.
            report.settled = _settle(pool, probe, supervisor, pairs, plan, started, report)
            with pool.connection() as conn:
                report.backfill = run_backfill(conn)
            report.settled = _settle(pool, probe, supervisor, pairs, plan, started, report) and report.settled
            with pool.connection() as conn:
                report.audit = audit(conn, shifted, settings_from_mapping({}).harmony)
        report.unexpected_exits = dict(supervisor.unexpected_exits)
        report.seconds = time.monotonic() - started
    for line in report.lines():
        echo(line)
    return report


def _answered(probe: Probe) -> int | None:
    return probe.scalar("SELECT count(DISTINCT (image_id, service)) FROM results")


def _rampage(plan: ChaosPlan, report: ChaosReport, supervisor: ChaosSupervisor, probe: Probe, cluster: EmbeddedPostgres,
             rabbitmq: PrivateRabbitMQ, conninfo: str, pairs: int, started: float,
             echo: Callable[[str], object]) -> None:
    """Kill, restart and keep the workers alive until every pair is answered and every planned fault happened."""
    next_kill = time.monotonic() + plan.kill_interval_s * supervisor.rng.uniform(0.5, 1.5)
    while time.monotonic() - started < plan.deadline_s:
        supervisor.revive()
        answered = _answered(probe)
        if answered is not None:
            if answered >= pairs and not report.ingest_seconds:
                report.ingest_seconds = time.monotonic() - started
            share = answered / pairs
            if report.rabbitmq_outage_s is None and share >= plan.rabbitmq_restart_at:
                echo(f"  {time.monotonic() - started:5.0f} s  {answered}/{pairs} answered: killing RabbitMQ")
                report.rabbitmq_outage_s = rabbitmq.restart(crash=True, outage_s=plan.outage_s)
            elif report.postgres_outage_s is None and share >= plan.postgres_restart_at:
                echo(f"  {time.monotonic() - started:5.0f} s  {answered}/{pairs} answered: restarting PostgreSQL")
                probe.close()
                report.postgres_outage_s = restart_postgres(cluster, conninfo, plan.outage_s)
            elif (answered >= pairs and report.postgres_outage_s is not None
                  and report.rabbitmq_outage_s is not None and sum(supervisor.kills.values()) >= plan.min_kills):
                return
        if time.monotonic() >= next_kill:
            supervisor.kill_random()
            next_kill = time.monotonic() + plan.kill_interval_s * supervisor.rng.uniform(0.5, 1.5)
        time.sleep(POLL_S)


def _settle(pool: ConnectionPool, probe: Probe, supervisor: ChaosSupervisor, pairs: int, plan: ChaosPlan,
            started: float, report: ChaosReport) -> bool:
    """Wait until every pair is answered and no job waits, runs or awaits a retry (twice, a second apart: a
    RabbitMQ task retried after a delay answers between two looks), keeping the workers alive but no longer
    killing them. False when it stalls or the deadline passes."""
    quiet, last_answered, last_change = 0, -1, time.monotonic()
    while time.monotonic() - started < plan.deadline_s:
        supervisor.revive()
        answered = _answered(probe) or 0
        if answered >= pairs and not report.ingest_seconds:
            report.ingest_seconds = time.monotonic() - started
        if answered != last_answered:
            last_answered, last_change = answered, time.monotonic()
        try:
            idle = pipeline_idle(pool)
        except psycopg.OperationalError:
            idle = False  # a connection the restart broke: the pool drops it, the next look takes a fresh one
        quiet = quiet + 1 if idle and answered >= pairs else 0
        if quiet >= 2:
            return True
        if idle and time.monotonic() - last_change > plan.stall_s:
            return False  # the job table is idle and no answer came for a long time: some will never come
        time.sleep(1.0)
    return False

