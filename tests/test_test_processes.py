"""The suite runs in several processes (tests/run.sh, pytest-xdist), each with a PostgreSQL cluster of its own; one
configured server for all of them is refused with one sentence, before any test takes another's database."""

from __future__ import annotations

import os
import subprocess

from tests.conftest import PYTHON, REPOSITORY

A_DATABASE_TEST = "tests/test_job_queue.py::test_dedupe_key_is_unique_among_queued_jobs_only"


def test_a_configured_server_is_refused_to_several_test_processes() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_")}
    # Nothing listens there: the refusal must come before any connection is tried.
    env["WINDMILL_TEST_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:9/windmill"
    done = subprocess.run([PYTHON, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider", A_DATABASE_TEST],
                          cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "WINDMILL_TEST_DATABASE_URL is one server for every test process; run the tests in one process (-n 0)" \
        in done.stdout
    assert "Traceback" not in done.stdout
