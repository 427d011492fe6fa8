"""An upgrade's `init-db` whose deploy/roles.sql was not run again: a login that depends on roles.sql's grants
refuses the schema at start with one sentence, instead of starting and failing each job of what the upgrade added
until it is dead (`permission denied for table postprocessing_count_deltas`, 5 attempts, for every postprocessing
and caption score job of an operator who upgraded from before sql/0121)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo

from tests.conftest import PYTHON, _fresh_database
from tests.test_deploy_files import DEPLOY, apply_roles
from windmill.catalog import Catalog
from windmill.commands import main
from windmill.db.catalog_sync import sync_services
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.migrations import available_migrations, migrate

NEWEST = available_migrations()[-1].version


@pytest.fixture
def upgraded_without_roles_sql(server_conninfo: str, catalog: Catalog) -> Iterator[Callable[[str], str]]:
    """The previous release's schema with roles.sql applied, then this release's `init-db`, and no roles.sql
    since; yields the URL of a role (the test cluster trusts 127.0.0.1), or for "admin" the superuser's conninfo."""
    conninfo = _fresh_database(server_conninfo, "windmill_grants_test")
    with Database(conninfo).connect() as admin:
        migrate(admin, available_migrations()[:-1])
        sync_services(admin, catalog)
        apply_roles(admin)
        migrate(admin)
    yield lambda role: conninfo if role == "admin" else conninfo_to_url(make_conninfo(conninfo, user=role,
                                                                                      password=""))


def _said(url: str, tmp_path: Path, *command: str) -> str:
    result = CliRunner().invoke(main, list(command), catch_exceptions=False, env={
        "WINDMILL_DATABASE_URL": url, "WINDMILL_HOME": str(tmp_path / "home"), "DB_HOST": None,
        "WINDMILL_ENV_FILE": None})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.output.strip()


def _sentence(login: str) -> str:
    return (f"Error: deploy/roles.sql has not been run since `init-db` applied migration {NEWEST:04d}: {login} "
            f"lacks the grants on what that upgrade added, and its work would be refused; run deploy/roles.sql "
            f"again (as the superuser, the copy of the release that ran `init-db`), as after every `init-db` that "
            f"upgrades (deploy/README.md)")


def test_a_worker_refuses_a_schema_roles_sql_has_not_granted_on_since_init_db(
        upgraded_without_roles_sql: Callable[[str], str], worker_env: dict[str, str], tmp_path: Path) -> None:
    url = upgraded_without_roles_sql("windmill_worker")
    env = {**worker_env, "WINDMILL_DATABASE_URL": url}
    try:
        done = subprocess.run([PYTHON, "-m", "windmill", "worker", "--role", "merger"], env=env,
                              capture_output=True, text=True, timeout=30)
        status, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as running:
        status, stderr = None, str(running.stderr)  # it started, to fail its jobs one by one
    assert status == 1, stderr
    assert _sentence("windmill_worker") in stderr
    assert "Traceback" not in stderr
    assert _said(url, tmp_path, "status") == _sentence("windmill_worker")
    assert _said(upgraded_without_roles_sql("windmill_monitor"), tmp_path, "export", "--format", "jsonl", "--out",
                 str(tmp_path / "out.jsonl")) == _sentence("windmill_monitor")


def test_roles_sql_run_again_lets_them_work_and_the_owner_never_waits_for_it(
        upgraded_without_roles_sql: Callable[[str], str], tmp_path: Path) -> None:
    owner = CliRunner().invoke(main, ["jobs", "list"], catch_exceptions=False, env={
        "WINDMILL_DATABASE_URL": upgraded_without_roles_sql("windmill_owner"), "WINDMILL_HOME": str(tmp_path / "h"),
        "DB_HOST": None, "WINDMILL_ENV_FILE": None})
    assert owner.exit_code == 0, owner.output
    with Database(upgraded_without_roles_sql("admin")).connect() as admin:
        apply_roles(admin)
    worker = CliRunner().invoke(main, ["jobs", "list"], catch_exceptions=False, env={
        "WINDMILL_DATABASE_URL": upgraded_without_roles_sql("windmill_worker"), "WINDMILL_HOME": str(tmp_path / "h"),
        "DB_HOST": None, "WINDMILL_ENV_FILE": None})
    assert worker.exit_code == 0, worker.output


def test_roles_sql_records_no_further_than_the_newest_migration_it_knows(
        upgraded_without_roles_sql: Callable[[str], str], tmp_path: Path) -> None:
    # The copy of roles.sql installed with the previous release (/opt/windmill/deploy), run after this release's
    # `init-db`, granted nothing on what this one added: had it recorded the schema's newest migration, the workers
    # would have started and failed those jobs as before.
    text = (DEPLOY / "roles.sql").read_text(encoding="utf-8")
    with Database(upgraded_without_roles_sql("admin")).connect() as admin:
        admin.execute(text.replace(f"least({NEWEST},", f"least({NEWEST - 1},"))  # the previous release's copy
    assert _said(upgraded_without_roles_sql("windmill_worker"), tmp_path, "status") == _sentence("windmill_worker")
    known = re.findall(r"least\((\d+), max\(version\)\)", text)
    assert known == [str(NEWEST)], "raise roles.sql's newest known migration with each migration"
