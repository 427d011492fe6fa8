"""`windmill-cli workers` with real processes against the test database: start detaches workers with pid files
and appended logs, status shows their heartbeats, stop drains them by pid, a second start does nothing, stale pid
files are removed without signalling anyone, an unknown name is refused with the list, and a worker that does
not drain is told to leave and then killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PYTHON, wait_until
from windmill.catalog import Catalog, load_catalog
from windmill.errors import WindmillError
from windmill.supervisor import Supervisor, WorkerSpec, process_argv, worker_id_for, worker_specs

PIPELINE = ["merger", "consensus", "postprocess_colors", "postprocess_face", "postprocess_pose", "caption_score",
            "scheduler"]


@pytest.fixture
def supervisor(worker_env: dict[str, str], catalog: Catalog, tmp_path: Path) -> Iterator[Supervisor]:
    """A supervisor whose workers use the test database and a private WINDMILL_HOME; whatever it leaves running
    is stopped (and, failing that, killed) afterwards."""
    home = Path(worker_env["WINDMILL_HOME"])
    chosen = Supervisor(home, worker_specs(catalog), environ=worker_env)
    yield chosen
    chosen.stop(drain_timeout=10)


def heartbeats(conn: psycopg.Connection, *worker_ids: str) -> dict[str, tuple[object, object]]:
    rows = conn.execute("SELECT worker_id, heartbeat_at, stopped_at FROM workers WHERE worker_id = ANY(%s)",
                        (list(worker_ids),)).fetchall()
    return {worker_id: (heartbeat, stopped) for worker_id, heartbeat, stopped in rows}


def test_every_catalog_service_worker_and_the_pipeline_workers_have_a_name(catalog: Catalog) -> None:
    specs = worker_specs(catalog)
    services = [s.name for s in catalog.services if s.category in ("primary", "spatial_only")]
    assert list(specs) == [*services, *PIPELINE]
    assert "caption_score" in catalog and specs["caption_score"].argv_tail == ("worker", "--role", "caption_score")
    assert specs["yolov8"].argv_tail == ("worker", "--role", "service", "--service", "yolov8")
    assert specs["face"].argv_tail == ("worker", "--role", "service", "--service", "face")
    assert specs["postprocess_pose"].argv_tail == ("worker", "--role", "postprocess", "--service", "pose")
    assert specs["scheduler"].argv_tail == ("worker", "--role", "scheduler")


def test_a_catalog_service_named_like_a_pipeline_worker_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "service_config.json"
    path.write_text('{"services": {"merger": {"host": "h", "port": 1, "endpoint": "/", "category": "primary"}}}')
    with pytest.raises(WindmillError, match="'merger' has the name of a pipeline worker"):
        worker_specs(load_catalog(path))


def test_unknown_names_are_refused_with_the_valid_ones(supervisor: Supervisor) -> None:
    for operation in (supervisor.start, supervisor.stop, supervisor.status):
        with pytest.raises(WindmillError) as refused:
            operation(["merger", "mergr", "yolo"])
        message = str(refused.value)
        assert message.startswith("unknown worker 'mergr', 'yolo'; valid workers: blip, clip, ")
        assert "yolov8" in message and "postprocess_face" in message and "scheduler" in message
    assert not supervisor.run_dir.exists() or not any(supervisor.run_dir.glob("*.pid"))


def test_start_status_and_stop_manage_real_worker_processes(supervisor: Supervisor, conn: psycopg.Connection) -> None:
    names = ["merger", "consensus"]
    started = supervisor.start(names, settle_s=0.2)
    assert [(o.name, o.action) for o in started] == [("merger", "started"), ("consensus", "started")]
    pids = {o.name: o.pid for o in started}
    # Each says it runs, as `start` waits for (here it waited 0.2 s only): its ready file names it.
    wait_until(lambda: all(supervisor.ready_file(name).exists() for name in names), timeout=30,
               message="the workers' ready files")
    for name, pid in pids.items():
        assert supervisor.pid_file(name).read_text() == f"{pid}\n"
        assert supervisor.ready_file(name).read_text() == f"{pid}\n"
        argv = process_argv(pid)
        assert argv is not None and argv[-2:] == ["--role", name] and "windmill" in argv
        assert os.getsid(pid) == pid  # its own session: a Ctrl-C or a closed terminal of the caller spares it
    # A second process of one name (`workers run`, as a unit runs it) would share its WORKER_ID: refused.
    twin = subprocess.run([PYTHON, "-m", "windmill", "workers", "run", "merger"], env=supervisor.environ,
                          capture_output=True, text=True, timeout=60)
    assert (twin.returncode, twin.stderr) == (1, f"Error: merger already runs on this machine (pid {pids['merger']}, "
                                                 "from `windmill-cli workers start`); stop it first: windmill-cli "
                                                 "workers stop merger\n")

    ids = [worker_id_for(name) for name in names]
    wait_until(lambda: len(heartbeats(conn, *ids)) == 2, timeout=60, interval=0.2,
               message="both workers to announce themselves in the workers table")
    status = {row.name: row for row in supervisor.status(names, conn)}
    for name in names:
        assert status[name].running and status[name].pid == pids[name] and status[name].pid_file == "ok"
        assert status[name].worker_id == f"{name}@{supervisor.hostname}"
        assert status[name].heartbeat_age_s is not None and status[name].heartbeat_age_s < 30 and status[name].alive
        assert status[name].log == str(supervisor.log_file(name))
    idle = supervisor.status(["scheduler"], conn)[0]
    assert (idle.running, idle.pid, idle.pid_file, idle.heartbeat_age_s) == (False, None, "none", None)

    again = supervisor.start(names)  # already running: nothing happens
    assert [(o.action, o.pid) for o in again] == [("running", pids["merger"]), ("running", pids["consensus"])]
    assert "already running" in again[0].message

    stopped = supervisor.stop(names, drain_timeout=30)
    assert [(o.name, o.action, o.exit_code, o.ok) for o in stopped] == [
        ("merger", "stopped", 0, True), ("consensus", "stopped", 0, True)]
    for name, pid in pids.items():
        assert not supervisor.pid_file(name).exists()
        assert process_argv(pid) is None
    assert all(stopped_at is not None for _, stopped_at in heartbeats(conn, *ids).values())
    assert not any(row.running for row in supervisor.status(names, conn))
    assert [o.action for o in supervisor.stop(names)] == ["not_running", "not_running"]


def test_logs_are_appended_across_restarts(supervisor: Supervisor, conn: psycopg.Connection) -> None:
    log = supervisor.log_file("consensus")
    log.parent.mkdir(parents=True)
    log.write_text("evidence of the last outage\n")
    first = supervisor.start(["consensus"], settle_s=0.2)[0]
    wait_until(lambda: heartbeats(conn, worker_id_for("consensus")), timeout=60, interval=0.2,
               message="the worker to announce itself")
    outcomes = supervisor.restart(["consensus"], settle_s=0.2)
    assert [o.action for o in outcomes] == ["stopped", "started"] and outcomes[1].pid != first.pid
    text = log.read_text()
    assert text.startswith("evidence of the last outage\n")
    assert text.count("windmill-cli workers start: worker --role consensus as consensus@") == 2
    assert "received SIGTERM" in text  # the first life's last words survive the second start


def test_a_stale_pid_file_is_removed_and_its_pid_never_signalled(supervisor: Supervisor) -> None:
    supervisor.run_dir.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    supervisor.pid_file("merger").write_text(f"{gone.pid}\n")
    # A live process that is no windmill worker (the pid was recycled): removed from the books, left alone.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        supervisor.pid_file("consensus").write_text(f"{bystander.pid}\n")
        supervisor.pid_file("scheduler").write_text("not a pid\n")
        assert [row.pid_file for row in supervisor.status(["merger", "consensus", "scheduler"])] == ["stale"] * 3
        outcomes = supervisor.stop(["merger", "consensus", "scheduler"])
        assert [o.action for o in outcomes] == ["not_running"] * 3
        assert not any(supervisor.pid_file(name).exists() for name in ("merger", "consensus", "scheduler"))
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_a_worker_that_exits_at_once_is_reported_with_its_last_words(supervisor: Supervisor) -> None:
    supervisor.environ["LOG_LEVEL"] = "LOUD"
    outcome = supervisor.start(["merger"], settle_s=30)[0]
    assert (outcome.action, outcome.exit_code, outcome.ok) == ("exited", 1, False)
    assert "LOG_LEVEL must be one of" in outcome.message
    assert not supervisor.pid_file("merger").exists()


def test_start_waits_for_a_worker_to_say_it_runs_or_to_fail_however_long_its_start_takes(tmp_path: Path) -> None:
    # Stand-in 'python's for workers slow to start: one fails after 3 s (twenty real workers starting at once on two
    # cores took about that long to fail on a missing schema, and were announced "started" after two seconds), the
    # other writes its ready file after 1 s, as a real worker does once it runs, and is reported started then.
    slow_failure = tmp_path / "slow-failure"
    slow_failure.write_text("#!/bin/sh\nsleep 3\necho 'Error: the database schema is not up to date'\nexit 1\n")
    slow_start = tmp_path / "slow-start"
    slow_start.write_text('#!/bin/sh\nsleep 1\necho $$ > "$WINDMILL_READY_FILE"\nexec sleep 60\n')
    spec = WorkerSpec("merger", ("worker", "--role", "merger"))
    for python, expected in ((slow_failure, "exited"), (slow_start, "started")):
        python.chmod(0o755)
        chosen = Supervisor(tmp_path / f"home-{python.name}", {"merger": spec}, python=str(python),
                            environ=dict(os.environ))
        outcome = chosen.start()[0]
        try:
            assert outcome.action == expected, outcome.message
            if expected == "exited":
                assert "the database schema is not up to date" in outcome.message
            else:
                assert chosen.ready_file("merger").read_text() == f"{outcome.pid}\n"
        finally:
            chosen.stop(drain_timeout=1)


def test_a_worker_that_does_not_drain_is_told_to_leave_then_killed(tmp_path: Path) -> None:
    """A stand-in 'python' that ignores SIGTERM, so the last resort is exercised without a hung real worker."""
    stubborn = tmp_path / "stubborn-python"
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 0.05; done\n")
    stubborn.chmod(0o755)
    spec = WorkerSpec("merger", ("worker", "--role", "merger"))
    chosen = Supervisor(tmp_path / "home", {"merger": spec}, python=str(stubborn), environ=dict(os.environ),
                        leave_now_grace_s=0.3)
    started = chosen.start(settle_s=0.2)[0]
    assert started.action == "started", started.message
    outcome = chosen.stop(drain_timeout=0.3)[0]
    assert (outcome.action, outcome.exit_code, outcome.ok) == ("killed", -signal.SIGKILL, False)
    assert "KILLED" in outcome.message and process_argv(started.pid) is None
    assert "killed (SIGKILL) after 0.6 s" in chosen.log_file("merger").read_text()
    assert not chosen.pid_file("merger").exists()
