"""Running the chaos plan: set up the private servers and the workers, submit, crash and kill on schedule, let
the pipeline settle, run the final backfill, audit."""

from __future__ import annotations

import os
import random
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import psycopg
from psycopg_pool import ConnectionPool

from windmill.bench.chaos.audit import PRIMARY, audit, final_backfill, queue_state
from windmill.bench.chaos.plan import ChaosPlan, ServerCrash
from windmill.bench.chaos.report import ChaosReport, Outage
from windmill.bench.chaos.servers import Probe, Servers, crash_recoveries, durability, durable_cluster, running_farm
from windmill.bench.chaos.supervisor import ChaosSupervisor, worker_specs
from windmill.bench.private_rabbitmq import PrivateRabbitMQ
from windmill.bench.stage import cli_argv, copy_samples
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.schema import init_database
from windmill.errors import WindmillError
from windmill.settings import settings_from_mapping
from windmill.worker.group import pipeline_idle

POLL_S = 0.25
Echo = Callable[[str], object]


def run(catalog: Catalog, plan: ChaosPlan | None = None, *, log_dir: Path | None = None,
        echo: Echo = print) -> ChaosReport:
    """Run the chaos plan end to end, print its conditions and findings (through `echo`) and return them."""
    plan = plan or ChaosPlan()
    report = ChaosReport(plan)
    started = time.monotonic()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="windmill-chaos-")))
        os.chmod(work, 0o755)  # the server's unprivileged user keeps its data inside, removed with the rest
        logs = log_dir or work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        rabbitmq = PrivateRabbitMQ(work / "rabbitmq", prefix="windmill-chaos", log_dir=logs / "rabbitmq")
        stack.callback(rabbitmq.discard)
        rabbitmq.launch()  # it boots while PostgreSQL is initialised
        cluster = stack.enter_context(durable_cluster(work / "home"))
        rabbitmq.wait_ready()
        conninfo = cluster.status().conninfo
        assert conninfo is not None
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("WINDMILL_", "DB_", "QUEUE_", "PG"))}
        env.update({"WINDMILL_DATABASE_URL": conninfo_to_url(conninfo), "WINDMILL_AMQP_URL": rabbitmq.amqp_url,
                    "WINDMILL_SERVICE_CONFIG": str(work / "service_config.json"),
                    "WINDMILL_HOME": str(work / "client-home"), "LOG_LEVEL": "WARNING",
                    "WINDMILL_AMQP_TASK_ATTEMPTS": str(plan.task_attempts),
                    "WINDMILL_AMQP_RETRY_DELAY_S": f"{plan.task_retry_delay_s:g}",
                    "WINDMILL_DATABASE_WAIT_S": f"{plan.database_wait_s:g}"})
        shifted, farm = stack.enter_context(running_farm(catalog, work / "service_config.json", env, plan, logs,
                                                         queue_prefix=f"chaos_{uuid.uuid4().hex[:8]}_queue_"))
        queues = [service.queue_name for service in shifted.select(PRIMARY)]
        database = Database(conninfo, application_name="windmill-chaos")
        photos = work / "images"
        photos.mkdir()
        copy_samples(photos, plan.images)
        with database.connect() as conn:
            init_database(conn, shifted)
            add_paths(conn, [photos])
            report.durability = durability(conn)
        pairs = plan.images * len(queues)
        echo(f"Chaos run: {plan.images} images × {len(queues)} services = {pairs} tasks; logs in {logs}")

        # As a deployment's queues were, long before any crash: a queue declared seconds before the node's SIGKILL
        # sometimes came back without its messages (*Ingest* in the README; the scheduler's resend, which the run does
        # not start, would send them again only after WINDMILL_LOST_TASK_AFTER_S).
        rabbitmq.declare_for_good(queues)
        supervisor = ChaosSupervisor(worker_specs(plan), env, logs, random.Random(plan.seed))
        stack.callback(supervisor.stop)
        supervisor.revive()
        submitted = subprocess.run(cli_argv("submit", "--services", PRIMARY, "--broker", plan.broker), env=env,
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if submitted.returncode != 0:
            raise WindmillError(f"submit failed: {submitted.stderr.strip().splitlines()[-1:]}")
        probe = Probe(database)
        stack.callback(probe.close)
        servers = Servers(cluster, conninfo, rabbitmq, farm, probe)
        _rampage(plan, report, supervisor, servers, pairs, started, echo)
        report.kills = dict(supervisor.kills)

        with database.pool(max_size=2, name="chaos") as pool:
            report.settled = _settle(pool, probe, supervisor, pairs, plan, started, report)
            if not report.settled:
                echo(f"RabbitMQ: {rabbitmq.describe()}")
            # What production's backfill (every minute) would do now. It must find nothing: whatever it queues is
            # work the pipeline lost. Let it run, so the audit shows whether the repair at least worked.
            with pool.connection() as conn:
                queued = final_backfill(conn)
            if queued:
                report.settled = _settle(pool, probe, supervisor, pairs, plan, started, report) and report.settled
            with pool.connection() as conn:
                report.audit = audit(conn, shifted, settings_from_mapping({}).harmony, backfill=queued,
                                     queues=queue_state(rabbitmq.amqp_url, queues))
        report.unexpected_exits = dict(supervisor.unexpected_exits)
        report.crash_recoveries = crash_recoveries(cluster)
        report.seconds = time.monotonic() - started
    for line in report.lines():
        echo(line)
    return report


def _rampage(plan: ChaosPlan, report: ChaosReport, supervisor: ChaosSupervisor, servers: Servers, pairs: int,
             started: float, echo: Echo) -> None:
    """Keep the workers alive, kill one every few seconds, crash the servers as planned and start them again after
    their outage (no worker is killed meanwhile); until every planned crash is over, enough kills happened and
    every pair is answered (or no answer came for the plan's stall time)."""
    rng = supervisor.rng
    pending = sorted(plan.crashes, key=lambda crash: crash.at)
    down: tuple[ServerCrash, float, int] | None = None  # the crash, when, pairs unanswered then
    next_kill = time.monotonic() + plan.kill_interval_s * rng.uniform(0.5, 1.5)
    answered, last_change = 0, time.monotonic()
    while time.monotonic() - started < plan.deadline_s:
        supervisor.revive()
        if down is not None and time.monotonic() - down[1] >= down[0].outage_s:
            crash, crashed_at, unanswered = down
            servers.start(crash.server)
            report.outages.append(Outage(crash.server, crashed_at - started, time.monotonic() - crashed_at,
                                         unanswered))
            echo(f"  {time.monotonic() - started:5.0f} s  {crash.server} back after "
                 f"{time.monotonic() - crashed_at:.1f} s")
            down = None
            next_kill = max(next_kill, time.monotonic() + plan.kill_interval_s * rng.uniform(0.5, 1.5))
        now_answered = servers.probe.value("chaos_answered_pairs")
        if now_answered is not None:
            if now_answered != answered:
                answered, last_change = now_answered, time.monotonic()
            if answered >= pairs and not report.ingest_seconds:
                report.ingest_seconds = time.monotonic() - started
            if down is None and pending and answered >= pending[0].at * pairs:
                crash = pending.pop(0)
                echo(f"  {time.monotonic() - started:5.0f} s  {answered}/{pairs} answered: SIGKILL of {crash.server}, "
                     f"down for {crash.outage_s:g} s")
                servers.crash(crash.server)
                down = (crash, time.monotonic(), pairs - answered)
        # No kills while a server is down: the workers that live through the outage are what it tests (one
        # restarted meanwhile cannot start without its database).
        if down is None and time.monotonic() >= next_kill:
            supervisor.kill_random()
            next_kill = time.monotonic() + plan.kill_interval_s * rng.uniform(0.5, 1.5)
        done = answered >= pairs or time.monotonic() - last_change > plan.stall_s
        if down is None and not pending and sum(supervisor.kills.values()) >= plan.min_kills and done:
            return
        time.sleep(POLL_S)


def _settle(pool: ConnectionPool, probe: Probe, supervisor: ChaosSupervisor, pairs: int, plan: ChaosPlan,
            started: float, report: ChaosReport) -> bool:
    """Wait until every pair is answered and no job waits, runs or awaits a retry (twice, a second apart: a
    RabbitMQ task retried after a delay answers between two looks), keeping the workers alive but no longer
    killing them. False when it stalls or the deadline passes."""
    quiet, last_answered, last_change = 0, -1, time.monotonic()
    while time.monotonic() - started < plan.deadline_s:
        supervisor.revive()
        answered = probe.value("chaos_answered_pairs") or 0
        if answered >= pairs and not report.ingest_seconds:
            report.ingest_seconds = time.monotonic() - started
        if answered != last_answered:
            last_answered, last_change = answered, time.monotonic()
        try:
            idle = pipeline_idle(pool)
        except psycopg.OperationalError:
            idle = False  # a connection the crash broke: the pool drops it, the next look takes a fresh one
        quiet = quiet + 1 if idle and answered >= pairs else 0
        if quiet >= 2:
            return True
        if idle and answered < pairs and time.monotonic() - last_change > plan.stall_s:
            # The job table is idle, answers are missing and none came for a long time: some will never come. (Every
            # answer in, a job that ran long, e.g. one whose lease was left to its dead worker for a lease after the
            # server's restart, sql/0135, is no stall: the next look, a second later, finds the pipeline quiet.)
            return False
        time.sleep(1.0)
    return False
