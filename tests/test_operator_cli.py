"""The command line as an operator meets it (issue 16): the settings file a deployed host has, the embedded database
announced once and silenced by -q, roles checked before anything starts, `run` running every role, files and URLs
added together, one wording for an unknown image, JSON from the commands that change things."""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from PIL import Image

from tests.conftest import PYTHON, signal_a_thread_not_main, wait_until
from windmill.catalog import Catalog
from windmill.db.embedded import EmbeddedPostgres
from windmill.roles.registry import role_names
from windmill.worker.layout import machine_workers


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (8, 8), "red").save(folder / name)
    return folder


def windmill(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "windmill", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def without_database(worker_env: dict[str, str], home: Path) -> dict[str, str]:
    env = {key: value for key, value in worker_env.items() if key != "WINDMILL_DATABASE_URL"}
    return {**env, "WINDMILL_HOME": str(home)}


# -- the settings file and the embedded database -------------------------------------------------------------------


def test_status_on_a_deployed_host_reads_the_systems_settings_file(worker_env: dict[str, str], tmp_path: Path,
                                                                    conn: psycopg.Connection, photos: Path) -> None:
    """No ./.env, nothing in the environment: the systemd units' file names the database, and status reads it."""
    conn.execute("INSERT INTO images (image_filename, image_path) VALUES ('x.jpg', '/x.jpg'), ('y.jpg', '/y.jpg')")
    system = tmp_path / "windmill.env"
    system.write_text(f"WINDMILL_DATABASE_URL={worker_env['WINDMILL_DATABASE_URL']}\n")
    env = {**without_database(worker_env, tmp_path / "home"), "WINDMILL_SYSTEM_ENV_FILE": str(system)}
    shown = windmill("status", "--json", env=env, cwd=photos)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["totals"]["images"] == 2
    assert "embedded" not in shown.stderr
    assert not (tmp_path / "home" / "postgres").exists()


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    """A home whose embedded cluster is discarded afterwards (it may live under /var/tmp when run as root)."""
    with tempfile.TemporaryDirectory(prefix="windmill-notice-") as parent:
        home = Path(parent) / "home"
        try:
            yield home
        finally:
            EmbeddedPostgres(home).discard()


def test_the_embedded_database_is_announced_once_and_quiet_silences_stderr(
        worker_env: dict[str, str], embedded_home: Path, tmp_path: Path) -> None:
    env = without_database(worker_env, embedded_home)
    first = windmill("status", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    notices = [line for line in first.stderr.splitlines() if line.startswith("using the embedded database at ")]
    data_dir = EmbeddedPostgres(embedded_home).status().data_dir
    assert notices == [f"using the embedded database at {data_dir} (no WINDMILL_DATABASE_URL or DB_HOST is set; "
                       f"found no settings file; looked at .env, {worker_env['WINDMILL_SYSTEM_ENV_FILE']})"]
    assert " INFO windmill.db.embedded" in first.stderr  # the cluster said what it did
    quiet = windmill("-q", "status", env=env, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout.startswith("Windmill status at ")
    assert quiet.stderr == ""


def test_db_stop_with_nothing_running_says_so_and_creates_nothing(worker_env: dict[str, str], embedded_home: Path,
                                                                  tmp_path: Path) -> None:
    stopped = windmill("db", "stop", env=without_database(worker_env, embedded_home), cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == f"The embedded PostgreSQL of {embedded_home} was not running; nothing to stop.\n"
    assert not embedded_home.exists()  # it once said "stopped." and made the home


@pytest.mark.parametrize("command, ready", [(["status", "--watch", "--interval", "0.5"], "refreshing every"),
                                            (["web", "--port", "0"], "Windmill dashboard on")])
def test_sigterm_ends_a_command_that_runs_until_ctrl_c_and_the_embedded_database_with_it(
        worker_env: dict[str, str], embedded_home: Path, tmp_path: Path, command: list[str], ready: str) -> None:
    # SIGTERM (a service manager, a closed terminal) once killed them where they stood: their registration with the
    # embedded database stayed, and the cluster ran on with no client.
    env = without_database(worker_env, embedded_home)
    process = subprocess.Popen([PYTHON, "-m", "windmill", "-q", *command], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while ready not in (line := process.stdout.readline()):
            assert line, f"`{' '.join(command)}` ended before it was ready: {process.stderr.read()[-2000:]}"
        assert EmbeddedPostgres(embedded_home).status().running
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.communicate()
    assert process.returncode == 0
    wait_until(lambda: not EmbeddedPostgres(embedded_home).status().running, timeout=30,
               message="the embedded cluster to stop once its last client left")


def test_a_mistyped_role_or_service_is_refused_before_any_database_starts(worker_env: dict[str, str],
                                                                           tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = without_database(worker_env, home)
    for args, said in ((["--role", "mergr"], "Error: unknown role 'mergr'; valid roles: caption_score, consensus, "),
                       (["--role", "service", "--service", "yolo"], "Error: unknown service 'yolo'"),
                       (["--role", "merger", "--service", "yolov8"],  # once it ran, the option ignored
                        "Error: the merger role takes no --service; only the postprocess and service roles do"),
                       (["--role", "postprocess", "--service", "blip"],  # once only after the database was up
                        "Error: unknown postprocess service blip; valid: colors, face, pose")):
        refused = windmill("worker", *args, env=env, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.startswith(said) and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (home / "postgres").exists()  # no cluster was initialised, started and stopped for nothing


def test_worker_list_roles_describes_every_role(worker_env: dict[str, str], tmp_path: Path) -> None:
    listed = windmill("worker", "--list-roles", env=worker_env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    described = dict(line.split(None, 1) for line in listed.stdout.strip().splitlines())
    # (this process may know a test role or two more than the command does)
    assert {"service", "merger", "consensus", "postprocess", "caption_score", "scheduler"} <= set(described)
    assert set(described) <= set(role_names()) and all(described.values())


# -- run: every role -----------------------------------------------------------------------------------------------


def test_run_runs_every_role_and_service_the_named_workers_do(worker_env: dict[str, str], tmp_path: Path,
                                                              conn: psycopg.Connection, catalog: Catalog) -> None:
    process = subprocess.Popen([PYTHON, "-m", "windmill", "run"], env={**worker_env, "WORKER_ID": "run-test"},
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wanted = {(spec.role, service) for spec in machine_workers(catalog).values()
                  for service in (spec.service.split(",") if spec.service else [None])}

        def covered() -> set[tuple[str, str | None]]:
            rows = conn.execute("SELECT role, service FROM workers WHERE worker_id LIKE 'run-test-%' "
                                "AND stopped_at IS NULL").fetchall()
            return {(role, service) for role, services in rows
                    for service in (services.split(",") if services else [None])}

        wait_until(lambda: wanted <= covered(), timeout=60, interval=0.2,
                   message=f"`run` to run every named worker's role and services: {sorted(wanted, key=str)}")
    finally:
        # To a thread other than the main one, as the kernel may deliver it: the main thread, joining the roles'
        # threads, must still wake to run the handler (it once waited forever).
        signal_a_thread_not_main(process.pid, signal.SIGTERM)
        try:
            _, errors = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)  # its threads' stacks, on stderr
            time.sleep(1)
            process.kill()  # a run left behind would take the jobs of every test after this one
            _, errors = process.communicate()
            pytest.fail(f"`run` did not stop within 60 s of SIGTERM; its last lines: {errors[-6000:]}")
    assert process.returncode == 0, errors


# -- the collection commands -----------------------------------------------------------------------------------------


def test_images_add_takes_directories_and_a_url_list_together(run, photos: Path, tmp_path: Path,
                                                              conn: psycopg.Connection) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("https://example.org/one.jpg\nftp://example.org/two.jpg\n")
    added = run("images", "add", str(photos), "--url-list", str(urls), "--json")
    assert added.exit_code == 0, added.output
    assert json.loads(added.output) == {"added": 3, "already_known": 0, "known_in_another_group": 0, "skipped": [
        {"what": "ftp://example.org/two.jpg", "why": "only http:// and https:// URLs can be added"}]}
    stored = conn.execute("SELECT image_filename, image_url IS NOT NULL FROM images ORDER BY image_filename").fetchall()
    assert stored == [("a.jpg", False), ("b.png", False), ("one.jpg", True)]


def test_a_mistyped_job_queue_is_named_as_such_and_a_queue_outside_the_catalog_still_answers(
        run, conn: psycopg.Connection) -> None:
    for command in ("list", "retry"):
        mistyped = run("jobs", command, "--queue", "mrege")  # once an empty list, or "Queued 0 dead job(s) again."
        assert mistyped.exit_code == 1, mistyped.output
        assert mistyped.output.startswith("Error: unknown job queue 'mrege'; valid job queues: caption_score, "
                                          "consensus, merge, "), mistyped.output
        assert "queue_caption_score" not in mistyped.output  # caption scores go to caption_score, never there
    assert run("jobs", "list", "--queue", "merge").output.strip() == "(none)"  # known, and at rest
    # Dead jobs of a queue no role or service has any more (a service since removed from the catalog).
    conn.execute("INSERT INTO jobs (queue, state) VALUES ('queue_retired', 'dead')")
    assert "queue_retired" in run("jobs", "list", "--queue", "queue_retired").output
    assert run("jobs", "retry", "--queue", "queue_retired").output == "Queued 1 dead job(s) again.\n"


def test_jobs_retry_by_id_says_why_a_job_was_not_retried(run, conn: psycopg.Connection) -> None:
    def job(queue: str, state: str, key: str | None = None) -> int:
        return conn.execute("INSERT INTO jobs (queue, state, dedupe_key) VALUES (%s, %s, %s) RETURNING id",
                            (queue, state, key)).fetchone()[0]

    done, dead, twin = job("merge", "done"), job("merge", "dead"), job("consensus", "dead", "image-7")
    job("consensus", "queued", "image-7")  # the twin's work, already waiting again
    missing = dead + 1000
    for args, said in [  # each once "Queued 0 dead job(s) again."
        (("--id", str(missing)), f"Error: no job {missing}"),
        (("--id", str(done)), f"Error: job {done} is done, not dead (only dead jobs are retried)"),
        (("--id", str(twin)), f"Error: job {twin} stays dead: the same work is already queued again"),
        (("--queue", "consensus", "--id", str(dead)), f"Error: job {dead} is in queue 'merge', not 'consensus'"),
    ]:
        result = run("jobs", "retry", *args)
        assert (result.exit_code, result.output.strip()) == (1, said), args
    partly = run("jobs", "retry", "--id", str(dead), "--id", str(done))
    assert partly.exit_code == 0
    assert partly.stdout == "Queued 1 dead job(s) again.\n"
    assert partly.stderr == f"Not retried: job {done} is done, not dead (only dead jobs are retried)\n"


def test_submit_jobs_retry_and_init_db_answer_in_json(run, photos: Path, conn: psycopg.Connection) -> None:
    run("images", "add", str(photos))
    submitted = run("submit", "--services", "metadata,ocr", "--json")
    assert submitted.exit_code == 0, submitted.output
    report = json.loads(submitted.output)  # the progress bar stays off stdout
    assert (report["published"], report["images"], report["services"], report["broker"]) == (
        4, 2, ["metadata", "ocr"], "postgres")
    dead = conn.execute("UPDATE jobs SET state = 'dead' WHERE id IN (SELECT min(id) FROM jobs) RETURNING id").fetchone()
    assert json.loads(run("jobs", "retry", "--json").output) == {"retried": [dead[0]]}
    initialised = json.loads(run("init-db", "--json").output)
    assert initialised["applied"] == [] and initialised["database"].endswith("/windmill_test")


def test_an_unknown_image_is_worded_alike_by_show_and_status(run) -> None:
    said = {run(*args, "99").output.strip() for args in (["show"], ["status", "--image"], ["show", "--png", "x.png"])}
    assert said == {"Error: no image with id 99"}


def test_quiet_hides_the_progress_bars(run, photos: Path) -> None:
    run("images", "add", str(photos))
    assert "Submitting" in run("submit", "-s", "metadata").output
    quiet = run("-q", "submit", "-s", "ocr")
    assert quiet.exit_code == 0 and "Submitting" not in quiet.output and quiet.output.startswith("Submitted 2 task")
    assert "Exporting" in run("export", "--format", "jsonl", "--out", "all.jsonl").output
    quiet = run("-q", "export", "--format", "jsonl", "--out", "quiet.jsonl")
    assert quiet.exit_code == 0 and quiet.output.startswith("Exported 2 image(s)"), quiet.output
