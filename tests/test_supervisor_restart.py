"""`windmill-cli workers start --restart on-failure` with real worker processes against the test database: a worker
killed with SIGKILL comes back under its keeper, a worker that always exits at once is started again with a doubling
backoff and reported with its last words, `stop` ends a keeper whatever its worker does, and a killed keeper takes
its worker with it."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from tests.conftest import wait_until
from windmill.catalog import Catalog
from windmill.commands import main
from windmill.keeper import KeeperState
from windmill.processes import process_argv
from windmill.supervisor import Supervisor, worker_specs


@pytest.fixture
def supervisor(worker_env: dict[str, str], catalog: Catalog) -> Iterator[Supervisor]:
    chosen = Supervisor(Path(worker_env["WINDMILL_HOME"]), worker_specs(catalog), environ=worker_env,
                        restart_backoff_s=0.05)
    yield chosen
    chosen.stop(drain_timeout=10)


def keeper_state(supervisor: Supervisor, name: str) -> KeeperState | None:
    return KeeperState.read(supervisor.state_file(name))


def started_at(conn: psycopg.Connection, worker_id: str) -> object:
    row = conn.execute("SELECT started_at FROM workers WHERE worker_id = %s AND stopped_at IS NULL "
                       "AND heartbeat_at > now() - interval '30 seconds'", (worker_id,)).fetchone()
    return row[0] if row else None


def test_a_worker_killed_with_sigkill_comes_back_and_a_killed_keeper_takes_it_along(
        supervisor: Supervisor, conn: psycopg.Connection) -> None:
    started = supervisor.start(["merger"], settle_s=0.2, restart="on-failure")[0]
    assert (started.action, started.ok) == ("started", True), started.message
    worker_id = supervisor.worker_id("merger")
    first_life = wait_until(lambda: started_at(conn, worker_id), timeout=60, interval=0.1,
                            message="the worker to announce itself")
    state = keeper_state(supervisor, "merger")
    assert state is not None and state.keeper_pid == started.pid and state.restarts == 0
    first_pid = state.worker_pid
    assert first_pid is not None and first_pid != started.pid

    os.kill(first_pid, signal.SIGKILL)
    wait_until(lambda: (now := keeper_state(supervisor, "merger")) and now.restarts == 1 and now.worker_pid,
               timeout=30, interval=0.05, message="the keeper to start the worker again")
    wait_until(lambda: started_at(conn, worker_id) not in (None, first_life), timeout=60, interval=0.1,
               message="the worker's second life to announce itself")
    [row] = supervisor.status(["merger"], conn)
    assert (row.running, row.pid, row.kept, row.restarts) == (True, started.pid, True, 1)
    assert row.worker_pid not in (None, first_pid) and process_argv(row.worker_pid)[-2:] == ["--role", "merger"]
    # Only the signal: what the worker logged last (`worker started`) says nothing of its death.
    assert row.last_exit is not None and re.fullmatch(r"signal SIGKILL at \S+", row.last_exit), row.last_exit
    assert "the worker exited with signal SIGKILL after" in supervisor.log_file("merger").read_text()

    again = supervisor.restart(["merger"], drain_timeout=30, settle_s=0.2)  # keeps the policy it ran with
    assert [(o.action, o.exit_code) for o in again] == [("stopped", 0), ("started", None)]
    assert process_argv(row.worker_pid) is None and process_argv(started.pid) is None  # drained, both gone
    wait_until(lambda: (now := keeper_state(supervisor, "merger")) and now.worker_pid, timeout=30,
               message="the new keeper to start its worker")
    state = keeper_state(supervisor, "merger")
    assert state is not None and state.keeper_pid == again[1].pid

    os.kill(state.keeper_pid, signal.SIGKILL)  # nobody would keep or stop the worker now: it stops too
    wait_until(lambda: process_argv(state.worker_pid) is None, timeout=60, interval=0.1,
               message="the worker of a killed keeper to exit")
    assert not supervisor.status(["merger"])[0].running


def test_a_worker_that_always_exits_at_once_backs_off_and_is_reported(supervisor: Supervisor,
                                                                      worker_env: dict[str, str]) -> None:
    supervisor.environ["LOG_LEVEL"] = "LOUD"
    outcome = supervisor.start(["consensus"], settle_s=60, restart="on-failure")[0]
    assert (outcome.action, outcome.ok) == ("restarting", False)
    assert "exited at once with status 1: Error: LOG_LEVEL must be one of" in outcome.message
    assert supervisor.pid_file("consensus").exists()  # the keeper stays, to try again

    state = wait_until(lambda: (now := keeper_state(supervisor, "consensus")) and now.restarts >= 4 and now,
                       timeout=60, interval=0.05, message="four restarts")
    # The k-th failure (from 0) waited 0.05 s × 2^k: the state keeps the last few failures.
    first = state.restarts - len(state.exits)
    assert [exit_["backoff_s"] for exit_ in state.exits] == [
        pytest.approx(0.05 * 2 ** k) for k in range(first, state.restarts)]
    assert all(exit_["status"] == 1 for exit_ in state.exits)

    shown = CliRunner().invoke(main, ["workers", "status", "consensus", "--json"],
                               env={**worker_env, "LOG_LEVEL": "INFO"}, catch_exceptions=False)
    [row] = json.loads(shown.output)["workers"]
    assert row["kept"] and row["restarts"] >= 4
    assert row["last_exit"].startswith("status 1 at ") and "LOG_LEVEL must be one of" in row["last_exit"]
    # While the keeper waits to start it again the worker does not run, and the table says so (it said "yes").
    wait_until(lambda: (now := keeper_state(supervisor, "consensus")) and now.worker_pid is None
               and (now.backoff_s or 0) >= 1, timeout=60, interval=0.05, message="a backoff of a second or more")
    table = CliRunner().invoke(main, ["workers", "status", "consensus"], env={**worker_env, "LOG_LEVEL": "INFO"},
                               catch_exceptions=False)
    assert "no: backing off, starts again at " in table.output, table.output

    [stopped] = supervisor.stop(["consensus"], drain_timeout=10)  # mid-backoff: the keeper gives up at once
    assert (stopped.action, stopped.ok) == ("stopped", True)
    assert not supervisor.pid_file("consensus").exists() and not supervisor.state_file("consensus").exists()


def test_a_worker_stopped_by_someone_elses_sigterm_is_not_restarted_and_its_log_says_why(
        supervisor: Supervisor, conn: psycopg.Connection) -> None:
    # It drained and exited 0, its keeper left with it, and `workers status` showed a stale pid file: nothing said
    # that a signal from elsewhere (an operator's kill, a container runtime) had stopped it.
    started = supervisor.start(["merger"], settle_s=0.2, restart="on-failure")[0]
    assert started.ok, started.message
    state = wait_until(lambda: (now := keeper_state(supervisor, "merger")) and now.worker_pid and now,
                       timeout=60, message="the keeper to start its worker")
    wait_until(lambda: started_at(conn, supervisor.worker_id("merger")), timeout=60, message="the worker to run")
    os.kill(state.worker_pid, signal.SIGTERM)
    wait_until(lambda: process_argv(state.keeper_pid) is None, timeout=60, message="the keeper to leave")
    assert ("stopped by a signal that did not come through its keeper (not `workers stop`); not started again"
            in supervisor.log_file("merger").read_text())
