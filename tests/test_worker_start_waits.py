"""A worker started while its database is away (restarting, or not up yet on a machine's boot) waits for it, with
a line now and then, rather than exit; one whose login or database is wrong still stops at once with one sentence.
Found by the chaos run: every worker restarted during PostgreSQL's 90 s outage exited at once (52 exits in a run),
and only its supervisor's backoff brought it back."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PYTHON, wait_until
from windmill.bench.chaos.servers import crash_postgres, start_postgres
from windmill.db.connect import conninfo_to_url
from windmill.db.embedded import EmbeddedPostgres


@pytest.mark.parametrize(("command", "says"), [
    (["worker", "--role", "merger"], "the merger worker cannot start yet"),
    (["run", "--broker", "postgres"], "run cannot start yet"),
], ids=["worker", "run"])
def test_a_worker_started_while_its_database_is_away_waits_and_runs_once_it_is_back(
        away_cluster: tuple[EmbeddedPostgres, str], worker_env: dict[str, str], tmp_path: Path, command: list[str],
        says: str) -> None:
    cluster, conninfo = away_cluster
    crash_postgres(cluster)
    env = {**worker_env, "WINDMILL_DATABASE_URL": conninfo_to_url(conninfo), "WORKER_ID": "started-while-away"}
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen([PYTHON, "-m", "windmill", *command], env=env, stdout=output,
                                  stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: log.read_text().count("trying again in") >= 2 or worker.poll() is not None, timeout=30,
                   message=lambda: f"the worker waiting for its database\n{log.read_text()}")
        assert worker.poll() is None, f"the worker gave up on a database that was away:\n{log.read_text()}"
        assert f"{says}: cannot connect to PostgreSQL at" in log.read_text()
        assert "connection refused" in log.read_text()
        start_postgres(cluster, conninfo)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            wait_until(lambda: conn.execute("SELECT count(*) FROM windmill.workers WHERE worker_id LIKE %s",
                                            ("started-while-away%",)).fetchone()[0] >= 1, timeout=60,
                       message=lambda: f"the worker at work once the database was back\n{log.read_text()}")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert "Traceback" not in log.read_text()


def test_a_worker_whose_login_is_wrong_stops_at_once_with_one_sentence(
        away_cluster: tuple[EmbeddedPostgres, str], worker_env: dict[str, str]) -> None:
    _, conninfo = away_cluster
    where = conninfo_to_url(conninfo).split("@", 1)[1]  # host:port/database, without the login
    env = {**worker_env, "WINDMILL_DATABASE_URL": f"postgresql://nobody_here@{where}", "WORKER_ID": "wrong-login"}
    done = subprocess.run([PYTHON, "-m", "windmill", "worker", "--role", "merger"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1, done.stderr
    assert 'role "nobody_here" does not exist' in done.stderr
    assert "trying again" not in done.stderr and "Traceback" not in done.stderr
