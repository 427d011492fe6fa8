"""The files in deploy/ against what the code does: RabbitMQ definitions equal the queues declare_queue creates,
roles.sql gives each role exactly its job (run as those roles on a real database), pg_cron.sql schedules the job
windmill/cron.py manages (on a real pg_cron), .env.example names every setting, the systemd units and the compose
file hold what operators rely on."""

from __future__ import annotations

import configparser
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from tests.conftest import REPOSITORY, _fresh_database, wait_until
from windmill.broker import JobTableBroker, Task
from windmill.broker.ledger import enter_in_flight, forget_in_flight
from windmill.broker.rabbitmq import declare_queue
from windmill.catalog import Catalog
from windmill.cron import BACKFILL_COMMAND, DEFAULT_SCHEDULE, JOB_NAME, cron_status, install_cron, uninstall_cron
from windmill.db.connect import Database
from windmill.db.embedded import DATABASE, EmbeddedPostgres, find_server_binaries
from windmill.db.queries import query
from windmill.db.schema import ensure_schema, init_database
from windmill.jobs import JobQueue
from windmill.locks import Product
from windmill.monitor import collect_status
from windmill.settings import settings_from_mapping
from windmill.supervisor import DEFAULT_DRAIN_TIMEOUT_S, worker_specs
from windmill.upkeep import prune_jobs
from windmill.worker.group import WorkerGroup, pipeline_idle
from windmill.worker.layout import RoleSpec
from windmill.worker.runtime import WorkerOptions

DEPLOY = REPOSITORY / "deploy"
ROLES = ("windmill_owner", "windmill_worker", "windmill_monitor")
VIEWS = ("service_progress", "queue_depths", "image_completeness", "recent_failures", "live_workers")
MONITOR_READS = ("schema_migrations", "images", "results", "merged_boxes", "merged_images", "consensus",
                 "postprocessing",
                 "service_tasks_in_flight", "service_tasks_unconfirmed")  # status' RabbitMQ tasks in flight
PERSON = {"label": "person", "emoji": "🧑", "confidence": 0.9, "bbox": {"x": 10, "y": 12, "width": 50, "height": 80}}


def apply_roles(conn: psycopg.Connection) -> None:
    conn.execute((DEPLOY / "roles.sql").read_text(encoding="utf-8"))


def psql() -> str:
    """psql comes with the server packages the tests need anyway (tests/run.sh installs them)."""
    bundled = find_server_binaries() / "psql"
    found = str(bundled) if bundled.exists() else shutil.which("psql")
    if found is None:
        pytest.fail("psql is not installed: install the PostgreSQL client (tests/run.sh does)")
    return found


# -- RabbitMQ ----------------------------------------------------------------------------------------------------


class RecordingChannel:
    """Stands in for a pika channel to record what declare_queue asks the broker for (nothing more)."""

    def __init__(self) -> None:
        self.declared: list[dict[str, Any]] = []

    def queue_declare(self, queue: str, durable: bool, arguments: dict[str, Any] | None) -> None:
        self.declared.append({"name": queue, "durable": durable, "arguments": arguments or {}})


def test_the_rabbitmq_definitions_are_the_queues_declare_queue_creates(catalog: Catalog) -> None:
    channel = RecordingChannel()
    for service in catalog.services:
        declare_queue(channel, service.queue_name)  # type: ignore[arg-type]
    definitions = json.loads((DEPLOY / "rabbitmq-definitions.json").read_text(encoding="utf-8"))
    defined = [{"name": q["name"], "durable": q["durable"], "arguments": q["arguments"]} for q in definitions["queues"]]
    assert sorted(defined, key=lambda q: q["name"]) == sorted(channel.declared, key=lambda q: q["name"])
    assert {q["vhost"] for q in definitions["queues"]} == {"/"} and {"name": "/"} in definitions["vhosts"]
    assert not any(q["auto_delete"] for q in definitions["queues"])
    assert "users" not in definitions  # no credentials in the repository


# -- roles.sql ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roles_database(server_conninfo: str, catalog: Catalog) -> Iterator[Callable[[str], str]]:
    """A migrated database (objects owned by the test's superuser, as after an init-db run by an administrator)
    with roles.sql applied twice; yields the conninfo of a role, whose password is fresh for this run."""
    conninfo = _fresh_database(server_conninfo, "windmill_roles_test")
    with Database(conninfo).connect() as admin:
        init_database(admin, catalog)
        # As the file's header says to run it: psql, as an administrator whose search path is the default one
        # ("$user", public; the test cluster's superuser is named windmill, which would put the schema on it).
        applied = subprocess.run([psql(), "-1", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f",
                                  str(DEPLOY / "roles.sql")], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "PGOPTIONS": "-c search_path=public"})
        assert applied.returncode == 0, applied.stderr
        apply_roles(admin)  # idempotent
        passwords = {role: f"pw-{secrets.token_hex(8)}" for role in ROLES}
        for role, password in passwords.items():
            admin.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        admin.execute("CREATE SCHEMA IF NOT EXISTS elsewhere")
        admin.execute("CREATE TABLE IF NOT EXISTS elsewhere.secrets (secret text)")
        admin.execute("CREATE TABLE IF NOT EXISTS public.secrets (secret text)")
    yield lambda role: make_conninfo(conninfo, user=role, password=passwords[role])


def connect_as(roles_database: Callable[[str], str], role: str) -> psycopg.Connection:
    conn = Database(roles_database(role)).connect()
    assert conn.execute("SELECT current_user").fetchone()[0] == role
    return conn


def test_roles_sql_names_every_object_of_the_schema(roles_database: Callable[[str], str]) -> None:
    """A migration that adds a table, view or function must decide, in roles.sql, who may use it."""
    text = (DEPLOY / "roles.sql").read_text(encoding="utf-8")
    with connect_as(roles_database, "windmill_owner") as conn:
        objects = [row[0] for row in conn.execute(
            """SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = 'windmill'::regnamespace
                AND c.relkind IN ('r', 'p', 'v', 'm')
               UNION ALL
               SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.pronamespace = 'windmill'::regnamespace""")]
        owners = conn.execute(
            """SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relnamespace = 'windmill'::regnamespace
               UNION SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE pronamespace = 'windmill'::regnamespace
               UNION SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'windmill'""").fetchall()
    def compact(words: str) -> str:  # signatures as regprocedure spells them: no spaces after commas
        return re.sub(r"\s+", "", words)

    unnamed = [name for name in objects if "'" + compact(name.removeprefix("windmill.")) + "'" not in compact(text)]
    assert unnamed == [], f"add to deploy/roles.sql, with who may use them: {unnamed}"
    assert owners == [("windmill_owner",)]  # what an administrator's init-db created was handed over


def test_the_worker_role_does_what_workers_do(roles_database: Callable[[str], str], catalog: Catalog) -> None:
    """Worker writes end to end, as windmill_worker: answers fire the triggers, the merger, consensus and
    scheduler roles run in a real worker group (claims, leases, heartbeats, the backfill), and the writes of
    the farm-calling roles (postprocessing, caption scores) go through."""
    with Database(roles_database("windmill_owner")).connect() as owner:
        image_id = owner.execute("INSERT INTO images (image_filename, image_path) VALUES ('a.jpg', '/data/a.jpg') "
                                 "ON CONFLICT DO NOTHING RETURNING image_id").fetchone()
    worker = Database(roles_database("windmill_worker"), application_name="windmill-roles-test")
    with worker.connect() as conn:
        ensure_schema(conn, catalog, may_migrate=False)  # every worker syncs the catalog at start
        image_id = image_id[0] if image_id else conn.execute("SELECT max(image_id) FROM images").fetchone()[0]
        for service in ("yolov8", "rtdetr", "blip"):
            data = {"predictions": [{"text": "a person"}]} if service == "blip" else {"predictions": [PERSON]}
            conn.execute(query("insert_result"), {
                "image_id": image_id, "service": service, "task_id": secrets.token_hex(16), "data": Jsonb(data),
                "status": "success", "error_message": None, "processing_time": 0.1, "worker_id": "roles-test"})
        assert conn.execute("SELECT count(*) FROM jobs WHERE queue IN ('merge', 'consensus')").fetchone()[0] >= 2
        with worker.pool(min_size=1, max_size=8, name="roles-test") as pool:
            jobs = JobQueue(pool, retry_base_s=0.05)
            specs = (RoleSpec("merger"), RoleSpec("consensus"), RoleSpec("scheduler"))
            group = WorkerGroup(settings_from_mapping({"WORKER_ID": "roles-test"}), worker, pool, catalog, specs,
                                jobs=jobs, options=WorkerOptions(poll_interval_s=0.1))
            with group:
                wait_until(lambda: pipeline_idle(pool, ["merge", "consensus"]), timeout=60, interval=0.1,
                           message="merge and consensus to finish as windmill_worker")
                wait_until(lambda: conn.execute("SELECT count(*) FROM jobs WHERE queue = 'scheduler' "
                                                "AND state = 'done'").fetchone()[0], timeout=30,
                           message="a scheduler tick (the backfill) to run as windmill_worker")
            # The merger queued postprocessing of the new box; the farm-calling roles claim it and write.
            claimed = jobs.claim(["postprocess_colors", "postprocess_face"], "roles-test", 5)
            assert claimed
            jobs.complete([job.id for job in claimed], "roles-test")
        box = conn.execute("SELECT merged_id FROM merged_boxes WHERE image_id = %s", (image_id,)).fetchone()
        assert box is not None
        assert conn.execute("SELECT count(*) FROM consensus WHERE image_id = %s", (image_id,)).fetchone()[0] == 1
        assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'dead'").fetchone()[0] == 0
        row = {"image_id": image_id, "data": Jsonb({}), "status": "empty", "error_message": None,
               "processing_time": 0.1, "worker_id": "roles-test"}
        conn.execute(query("insert_postprocessing"), {**row, "merged_box_id": box[0], "service": "face"})
        caption = conn.execute("SELECT latest_success_id(%s, 'blip')", (image_id,)).fetchone()[0]
        for _ in range(2):  # the second replaces the first
            assert conn.execute(query("store_caption_score"), {
                **row, "service": "caption_score_blip", "source": "blip", "source_result_id": caption,
                "lock_namespace": int(Product.CAPTION_SCORE)}).fetchone()[0]
        conn.execute(BACKFILL_COMMAND)  # what pg_cron runs as windmill_worker: a backfill page and the retention
        conn.execute("UPDATE jobs SET updated_at = now() - interval '2 hours' WHERE state = 'done'")
        assert prune_jobs(conn, timedelta(hours=1)) > 0  # `jobs prune`, through prune_jobs_batch
        assert collect_status(conn)["totals"]["merged_boxes"] >= 1  # `windmill-cli status` with its credentials
        # Submit with its credentials: the job table's insert and second look (blip is answered above, so its new
        # job is marked done at once), the RabbitMQ ledger (entered, taken over by a replay, freed by the task's
        # row, the second look, forget).
        image = {"image_id": image_id, "image_filename": "a.jpg", "image_path": "/data/a.jpg", "image_url": None}
        with worker.pool(max_size=1, name="roles-submit") as pool:
            assert JobTableBroker(JobQueue(pool)).publish([Task.for_image(image, catalog["blip"])],
                                                          unless_answered=True) == []
        dead, replayed = Task.for_image(image, catalog["ocr"]), Task.for_image(image, catalog["ocr"])
        assert enter_in_flight(conn, [dead]).tasks == [dead]
        assert enter_in_flight(conn, [replayed], replaces=[dead.task_id]).tasks == [replayed]
        conn.execute(query("insert_result"), {**row, "status": "success", "service": "ocr",
                                              "task_id": replayed.task_id})
        blip = Task.for_image(image, catalog["blip"])
        assert enter_in_flight(conn, [blip]).tasks == [blip]
        assert len(conn.execute(query("drop_answered_tasks_in_flight"), {"task_ids": [blip.task_id]}).fetchall()) == 1
        assert forget_in_flight(conn, service="ocr") == 0


def test_the_worker_login_tells_a_dead_submits_unconfirmed_page_from_a_live_ones(
        roles_database: Callable[[str], str], catalog: Catalog) -> None:
    """A page of RabbitMQ tasks not yet confirmed is resent once the session that entered it is gone, told by its
    backend's pid and start (sql/0133). PostgreSQL shows a session's start only to its own login (or
    pg_read_all_stats): submit and the scheduler share windmill_worker, so each sees the other's. The monitor login
    sees the pid alone, and takes a session it cannot see the start of for the submit's, alive."""
    with Database(roles_database("windmill_owner")).connect() as owner:
        image_id = owner.execute("INSERT INTO images (image_filename, image_path) VALUES ('u.jpg', '/data/u.jpg') "
                                 "RETURNING image_id").fetchone()[0]
    image = {"image_id": image_id, "image_filename": "u.jpg", "image_path": "/data/u.jpg", "image_url": None}
    task = Task.for_image(image, catalog["ocr"])
    orphaned = query("orphaned_unconfirmed_pages")
    worker = Database(roles_database("windmill_worker"))
    with worker.connect() as scheduler, connect_as(roles_database, "windmill_monitor") as monitor:
        with worker.connect() as submitter:
            page = enter_in_flight(submitter, [task]).page
            pid = submitter.info.backend_pid
            seen = "SELECT backend_start IS NOT NULL FROM pg_stat_activity WHERE pid = %s"
            assert scheduler.execute(seen, (pid,)).fetchone() == (True,)
            assert monitor.execute(seen, (pid,)).fetchone() == (False,)
            assert (page,) not in scheduler.execute(orphaned, {"limit": 100}).fetchall()
            assert monitor.execute(query("monitor_orphaned_in_flight")).fetchone() == (0,)
        wait_until(lambda: scheduler.execute("SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s)",
                                             (pid,)).fetchone()[0], message="the submit's backend to end")
        assert (page,) in scheduler.execute(orphaned, {"limit": 100}).fetchall()
        assert monitor.execute(query("monitor_orphaned_in_flight")).fetchone() == (1,)
        scheduler.execute(query("confirm_tasks_in_flight"), {"page": page})  # as a resend does, once published
        assert forget_in_flight(scheduler, service="ocr") == 1


def test_the_worker_role_cannot_change_the_schema_or_read_outside_it(roles_database: Callable[[str], str]) -> None:
    with connect_as(roles_database, "windmill_worker") as conn:
        for statement in (
            "DROP TABLE windmill.results",
            "CREATE TABLE windmill.intruder (x int)",
            "CREATE TABLE public.intruder (x int)",
            "CREATE TEMPORARY TABLE intruder (x int)",
            "CREATE SCHEMA intruder",
            "ALTER TABLE windmill.jobs ADD COLUMN intruder text",
            "TRUNCATE windmill.jobs",
            "DELETE FROM windmill.results",
            "DELETE FROM windmill.images",
            "DELETE FROM windmill.jobs",  # only old finished jobs, through prune_jobs
            "CREATE INDEX intruder ON windmill.jobs (queue)",
            "SELECT * FROM elsewhere.secrets",
            "SELECT * FROM public.secrets",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_monitor_role_reads_the_views_and_the_collection_and_nothing_else(
        roles_database: Callable[[str], str]) -> None:
    with connect_as(roles_database, "windmill_monitor") as conn:
        for view in VIEWS:
            conn.execute(f"SELECT * FROM windmill.{view} LIMIT 1")
        for table in MONITOR_READS:  # what the dashboard and export read
            conn.execute(f"SELECT * FROM windmill.{table} LIMIT 1")
        for statement in (
            "SELECT count(*) FROM windmill.jobs",
            "SELECT count(*) FROM windmill.workers",
            "SELECT count(*) FROM windmill.services",
            "DELETE FROM windmill.results",
            "UPDATE windmill.consensus SET consensus_data = '{}'",
            "INSERT INTO windmill.images (image_filename, image_path) VALUES ('x.jpg', '/x.jpg')",
            "UPDATE windmill.jobs SET state = 'dead'",
            "SELECT * FROM windmill.backfill()",
            "SELECT windmill.enqueue_job('merge', NULL, '{}', NULL)",
            "CALL windmill.scheduled_pass()",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        # Refused at the door, not only by what the procedure calls.
        assert conn.execute("SELECT has_function_privilege('windmill.prune_jobs(interval, boolean, integer, "
                            "integer, bigint)', 'EXECUTE')").fetchone() == (False,)
    # At psql its search path is the schema: `SELECT * FROM live_workers`.
    with psycopg.connect(roles_database("windmill_monitor")) as conn:
        assert conn.execute("SHOW search_path").fetchone()[0] == "windmill"
        conn.execute("SELECT * FROM live_workers")


def test_roles_sql_runs_first_on_a_new_database_then_init_db_as_the_owner(server_conninfo: str,
                                                                          catalog: Catalog) -> None:
    # The order deploy/README.md gives: roles.sql before the first init-db, then again after it. On PostgreSQL 15
    # the first run once failed ("type job_spec does not exist") and created no role.
    conninfo = _fresh_database(server_conninfo, "windmill_roles_first")
    for run in ("before init-db", "after init-db"):
        applied = subprocess.run([psql(), "-1", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-f",
                                  str(DEPLOY / "roles.sql")], capture_output=True, text=True, timeout=60,
                                 env={**os.environ, "PGOPTIONS": "-c search_path=public"})
        assert applied.returncode == 0, (run, applied.stderr)
        if run == "before init-db":
            assert "does not exist yet: run this file again after `windmill-cli init-db`" in applied.stderr
            password = f"pw-{secrets.token_hex(8)}"
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute(sql.SQL("ALTER ROLE windmill_owner PASSWORD {}").format(sql.Literal(password)))
            with Database(make_conninfo(conninfo, user="windmill_owner", password=password)).connect() as owner:
                init_database(owner, catalog)
    with psycopg.connect(conninfo) as admin:
        assert admin.execute("SELECT has_function_privilege('windmill_worker', 'windmill.enqueue(windmill.job_spec)', "
                             "'EXECUTE')").fetchone() == (True,)


def test_the_owner_role_runs_the_migrations(roles_database: Callable[[str], str], catalog: Catalog) -> None:
    with Database(roles_database("windmill_owner")).connect() as conn:
        init_database(conn, catalog)  # up to date: CREATE SCHEMA IF NOT EXISTS still needs its privileges
        with conn.transaction(force_rollback=True):
            conn.execute("CREATE TABLE windmill.next_migration (x int)")  # what a future migration does
            conn.execute("ALTER TABLE windmill.jobs ADD COLUMN next_migration text")


def test_the_owner_is_told_who_holds_a_lock_even_in_another_logins_session(
        roles_database: Callable[[str], str]) -> None:
    # init-db as windmill_owner, waiting for a worker login's open transaction, said "a session that has ended
    # since" every 6 s: the owner may not read another login's transaction start, and the query wanted it.
    from windmill.db.migrations import lock_holders

    with psycopg.connect(roles_database("windmill_worker"), application_name="an-analysts-psql") as holder, \
            connect_as(roles_database, "windmill_owner") as owner:
        holder.execute("LOCK TABLE windmill.jobs IN ROW EXCLUSIVE MODE")  # and the transaction left open
        named = lock_holders(owner)
        assert named.startswith(f"pid {holder.info.backend_pid} (an-analysts-psql, another login's session"), named


# -- pg_cron.sql -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cron_server(catalog: Catalog) -> Iterator[str]:
    """A private cluster with pg_cron loaded (as tests/test_cron.py starts it); yields the admin conninfo of a
    migrated Windmill database with roles.sql applied."""
    from tests.test_cron import pg_cron_library

    pg_cron_library()
    with tempfile.TemporaryDirectory(prefix="windmill-deploy-cron-") as home:
        cluster = EmbeddedPostgres(Path(home), fast=True, settings={
            "shared_preload_libraries": "pg_cron", "cron.database_name": DATABASE, "cron.host": "127.0.0.1"})
        conninfo = cluster.acquire()
        try:
            with psycopg.connect(conninfo, autocommit=True) as admin:
                admin.execute('CREATE DATABASE "windmill_deploy_cron"')
            windmill_conninfo = make_conninfo(conninfo, dbname="windmill_deploy_cron")
            with Database(windmill_conninfo).connect() as conn:
                init_database(conn, catalog)
                apply_roles(conn)
            yield windmill_conninfo
        finally:
            cluster.discard()


def test_pg_cron_sql_schedules_the_job_cron_py_manages_to_run_as_the_worker_role(cron_server: str) -> None:
    cron_database = make_conninfo(cron_server, dbname=DATABASE)
    for _ in range(2):  # a second run updates the job in place
        subprocess.run([psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "windmill_database=windmill_deploy_cron",
                        "-d", cron_database, "-f", str(DEPLOY / "pg_cron.sql")], check=True, capture_output=True)
    with psycopg.connect(cron_database) as conn:
        jobs = conn.execute("SELECT jobname, schedule, command, database, username FROM cron.job").fetchall()
    assert jobs == [(JOB_NAME, DEFAULT_SCHEDULE, BACKFILL_COMMAND, "windmill_deploy_cron", "windmill_worker")]
    # The job runs as windmill_worker in Windmill's database: that role may run its command there.
    with Database(make_conninfo(cron_server, user="windmill_worker")).connect() as worker:
        worker.execute(BACKFILL_COMMAND)


def test_cron_as_a_superuser_manages_the_job_pg_cron_sql_scheduled_for_the_worker(cron_server: str) -> None:
    # `cron install` as the superuser scheduled a second job beside pg_cron.sql's (windmill_worker's), so the pass
    # ran twice a minute; `cron status` then said there was none, and `cron uninstall` left it running.
    cron_database = make_conninfo(cron_server, dbname=DATABASE)
    subprocess.run([psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "windmill_database=windmill_deploy_cron",
                    "-d", cron_database, "-f", str(DEPLOY / "pg_cron.sql")], check=True, capture_output=True)

    def jobs() -> list[tuple[str, str, str]]:
        with psycopg.connect(cron_database) as conn:
            return conn.execute("SELECT schedule, database, username FROM cron.job WHERE jobname = %s",
                                (JOB_NAME,)).fetchall()

    with Database(cron_server).connect() as admin:
        said = install_cron(admin, schedule="*/5 * * * *")
        assert "of user windmill_worker" in said, said
        assert jobs() == [("*/5 * * * *", "windmill_deploy_cron", "windmill_worker")]
        shown = cron_status(admin).job
        assert shown is not None and shown["username"] == "windmill_worker"
        assert "Removed pg_cron job" in uninstall_cron(admin)
        assert jobs() == []


# -- .env.example, systemd, compose ------------------------------------------------------------------------------


def setting_names() -> set[str]:
    """Every variable windmill/settings.py and its connection URLs read (env.get("X"), env["X"], a helper's
    (..., env, "X"))."""
    source = "".join((REPOSITORY / "windmill" / name).read_text(encoding="utf-8")
                     for name in ("settings.py", "connection_urls.py"))
    return set(re.findall(r"""(?:env(?:iron)?\.get\(|env\[|\benv,\s*)["']([A-Z][A-Z0-9_]+)["']""", source))


def test_the_env_example_names_every_setting_and_holds_no_secret() -> None:
    text = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    named = set(re.findall(r"^#?\s?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert len(setting_names()) > 20
    assert setting_names() <= named, f"add to deploy/.env.example: {sorted(setting_names() - named)}"
    assert named <= setting_names(), f"not a setting: {sorted(named - setting_names())}"
    active = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert active == []  # nothing takes effect by copying it unread
    passwords = re.findall(r"PASSWORD=(\S*)|://[^:/@\s]+:([^@\s]*)@", text)
    passwords = [inline or in_url for inline, in_url in passwords]
    assert passwords and set(passwords) == {"CHANGE-ME"}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  (systemd keys are case-sensitive)
    parser.read_string((DEPLOY / name).read_text(encoding="utf-8"))
    return parser


@pytest.mark.parametrize("name", ["windmill-worker@.service", "windmill-run.service", "windmill-farm.service"])
def test_the_systemd_units_have_what_operators_rely_on(name: str) -> None:
    parsed = unit(name)
    assert parsed.sections() == ["Unit", "Service", "Install"]
    assert parsed["Unit"]["Description"] and parsed["Install"]["WantedBy"] == "multi-user.target"
    service = parsed["Service"]
    assert service["User"] == "windmill" and service["Group"] == "windmill"
    assert service["EnvironmentFile"].lstrip("-") == "/etc/windmill/windmill.env"
    assert service["ExecStart"].startswith("/opt/windmill/venv/bin/windmill-cli ")
    assert service["Restart"] == "on-failure" and float(service["RestartSec"]) > 0
    if name != "windmill-farm.service":  # workers: SIGTERM drains; systemd waits longer than the drain
        assert service["KillSignal"] == "SIGTERM" and service["KillMode"] == "mixed"
        assert float(service["TimeoutStopSec"]) > DEFAULT_DRAIN_TIMEOUT_S
        assert parsed["Unit"]["StartLimitIntervalSec"] == "0"
        assert float(service["RestartMaxDelaySec"]) > float(service["RestartSec"])


def test_the_worker_unit_runs_the_named_worker_through_the_cli(catalog: Catalog) -> None:
    assert unit("windmill-worker@.service")["Service"]["ExecStart"].endswith(" workers run %i")
    from windmill.commands import main

    workers = main.commands["workers"]
    assert "run" in workers.commands  # type: ignore[attr-defined]
    assert worker_specs(catalog)  # the instance names the unit accepts


def test_the_compose_file_runs_every_worker_against_postgres_and_rabbitmq(catalog: Catalog) -> None:
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    for referenced in ("./roles.sql", "./pg_cron.sql", "./rabbitmq-definitions.json", "deploy/Dockerfile"):
        assert referenced in text
    assert (DEPLOY / "Dockerfile").read_text(encoding="utf-8").count("ENTRYPOINT [\"windmill-cli\"]") == 1
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the compose file's structure is unchecked")
    services = yaml.safe_load(text)["services"]
    assert {"postgres", "rabbitmq", "farm", "db-roles", "db-migrate", "db-grants", "mq-setup", "cli"} <= set(services)
    for name in worker_specs(catalog):
        assert services[name]["command"] == ["workers", "run", name]
        assert services[name]["stop_grace_period"] == "45s"
