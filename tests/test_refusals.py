"""Database errors at the command line are one sentence, exit status 1, no traceback: what PostgreSQL refused (a
privilege, a login, a host, a port, a database) and how to fix it — run against a real server with the roles of
deploy/roles.sql, one case per finding of the operators' report (issue 16, point 2)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner, Result
from PIL import Image
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.conftest import _fresh_database
from tests.test_deploy_files import apply_roles
from windmill.catalog import Catalog
from windmill.commands import main
from windmill.db.connect import Database, conninfo_to_url
from windmill.db.refusals import connection_failure
from windmill.db.schema import init_database


@pytest.fixture(scope="module")
def url_as(server_conninfo: str, catalog: Catalog) -> Iterator[Callable[..., str]]:
    """A migrated database with roles.sql applied; yields the URL of a role (the test cluster trusts 127.0.0.1, so
    no password is needed) or of the same server with another port or database."""
    conninfo = _fresh_database(server_conninfo, "windmill_refusals_test")
    with Database(conninfo).connect() as admin:
        init_database(admin, catalog)
        apply_roles(admin)

    def url(role: str, **changes: object) -> str:
        return conninfo_to_url(make_conninfo(conninfo, user=role, password="", **changes))  # type: ignore[arg-type]

    yield url


def windmill(tmp_path: Path, *args: str, **env: str) -> Result:
    base = {"WINDMILL_HOME": str(tmp_path / "home"), "WINDMILL_DATABASE_URL": None, "WINDMILL_HARMONY": None,
            "DB_HOST": None, "WINDMILL_ENV_FILE": None}
    return CliRunner().invoke(main, list(args), env={**base, **env}, catch_exceptions=False)


def one_sentence(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    return lines[0].removeprefix("Error: ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_images_add_as_the_worker_role_names_the_privilege_and_the_role_it_needs(
        url_as: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    monkeypatch.chdir(tmp_path)
    said = one_sentence(windmill(tmp_path, "images", "add", str(tmp_path),
                                 WINDMILL_DATABASE_URL=url_as("windmill_worker")))
    assert said == ("PostgreSQL refused `images add` as windmill_worker: permission denied for table images; it needs "
                    "the privileges of windmill_owner: run it with a login that is a member of windmill_owner "
                    "(deploy/roles.sql; deploy/README.md says which command needs which)")


def test_images_watch_as_the_worker_role_names_the_owner(url_as: Callable[..., str], tmp_path: Path) -> None:
    # It registers images as `images add` does; its refusal asked for windmill_worker, the login it was run as.
    folder = tmp_path / "arrivals"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.jpg")
    said = one_sentence(windmill(tmp_path, "images", "watch", str(folder),
                                 WINDMILL_DATABASE_URL=url_as("windmill_worker")))
    assert said.startswith("PostgreSQL refused `images watch` as windmill_worker: permission denied for table")
    assert "it needs the privileges of windmill_owner" in said


def test_images_remove_as_the_worker_role_needs_the_owner(url_as: Callable[..., str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "b.jpg")
    monkeypatch.chdir(tmp_path)
    added = windmill(tmp_path, "images", "add", "b.jpg", WINDMILL_DATABASE_URL=url_as("windmill_owner"))
    assert added.exit_code == 0, added.output
    said = one_sentence(windmill(tmp_path, "images", "remove", "b.jpg", "--yes",
                                 WINDMILL_DATABASE_URL=url_as("windmill_worker")))
    assert said == ("PostgreSQL refused `images remove` as windmill_worker: permission denied for table images; it "
                    "needs the privileges of windmill_owner: run it with a login that is a member of windmill_owner "
                    "(deploy/roles.sql; deploy/README.md says which command needs which)")
    removed = windmill(tmp_path, "images", "remove", "b.jpg", "--yes", WINDMILL_DATABASE_URL=url_as("windmill_owner"))
    assert removed.exit_code == 0 and "Removed 1 image(s)" in removed.output, removed.output


def test_init_db_as_the_worker_role_needs_the_owner(url_as: Callable[..., str], tmp_path: Path) -> None:
    said = one_sentence(windmill(tmp_path, "init-db", WINDMILL_DATABASE_URL=url_as("windmill_worker")))
    assert said.startswith("PostgreSQL refused `init-db` as windmill_worker: permission denied for ")
    assert said.endswith("it needs the privileges of windmill_owner: run it with a login that is a member of "
                         "windmill_owner (deploy/roles.sql; deploy/README.md says which command needs which)")


def test_status_as_the_monitor_role_needs_the_worker_role(url_as: Callable[..., str], tmp_path: Path) -> None:
    said = one_sentence(windmill(tmp_path, "status", WINDMILL_DATABASE_URL=url_as("windmill_monitor")))
    assert said.startswith("PostgreSQL refused `status` as windmill_monitor: permission denied for ")
    assert "it needs the privileges of windmill_worker" in said


def test_the_right_role_refused_after_an_upgrade_is_told_to_run_roles_sql_again(
        url_as: Callable[..., str], server_conninfo: str, tmp_path: Path) -> None:
    # An upgrade's init-db added a view (sql/0121) and roles.sql was not run again: `status` as windmill_worker was
    # told to use a login that is a member of windmill_worker.
    with psycopg.connect(make_conninfo(server_conninfo, dbname="windmill_refusals_test"), autocommit=True) as admin:
        admin.execute("REVOKE SELECT ON windmill.postprocessing_progress FROM windmill_worker")
        try:
            said = one_sentence(windmill(tmp_path, "status", WINDMILL_DATABASE_URL=url_as("windmill_worker")))
        finally:
            admin.execute("GRANT SELECT ON windmill.postprocessing_progress TO windmill_worker")
    assert said == ("PostgreSQL refused `status` as windmill_worker: permission denied for view "
                    "postprocessing_progress; windmill_worker has not been granted what this Windmill's schema "
                    "added: run deploy/roles.sql again, as after every `init-db` that upgrades (deploy/README.md)")


def test_syncing_the_services_as_a_login_that_may_not_is_refused_without_psycopgs_warning(
        url_as: Callable[..., str], catalog: Catalog, caplog: pytest.LogCaptureFixture) -> None:
    # `status` as windmill_monitor printed, before its refusal, "WARNING psycopg: error ignored terminating
    # <psycopg.Pipeline [INERROR] …>: pipeline aborted" (about one run in four): executemany's pipeline, refused.
    import logging

    from windmill.db.catalog_sync import sync_services

    caplog.set_level(logging.WARNING, logger="psycopg")
    with psycopg.connect(url_as("windmill_monitor"), autocommit=True) as monitor:
        for _ in range(100):  # the warning came with about two refusals in five
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                sync_services(monitor, catalog)
    assert [record.getMessage() for record in caplog.records if record.name.startswith("psycopg")] == []


def test_a_refused_connection_keeps_its_reason_and_says_where_to_look(url_as: Callable[..., str],
                                                                       tmp_path: Path) -> None:
    port = free_port()
    url = url_as("windmill_worker", host="localhost", port=port)
    said = one_sentence(windmill(tmp_path, "status", WINDMILL_DATABASE_URL=url))
    assert said == (f"cannot connect to PostgreSQL at localhost:{port}/windmill_refusals_test: connection refused; "
                    f"is PostgreSQL running there and listening on port {port}? (the host and port come from "
                    "WINDMILL_DATABASE_URL or DB_HOST and DB_PORT)")


@pytest.mark.parametrize(("change", "expected"), [
    ({"dbname": "no_such_database"},
     'database "no_such_database" does not exist; create it (`createdb no_such_database`, deploy/README.md) or name '
     "the right one (the URL's path or DB_NAME)"),
    ({"user": "no_such_login"},
     'role "no_such_login" does not exist; create the login as a member of a Windmill role (deploy/roles.sql) or '
     "name the right one (the URL's user or DB_USER)"),
])
def test_a_missing_database_or_login_says_what_to_create(url_as: Callable[..., str], tmp_path: Path,
                                                          change: dict[str, str], expected: str) -> None:
    url = url_as(change.get("user", "windmill_worker"), **{k: v for k, v in change.items() if k != "user"})
    location = f"{conninfo_to_dict(url).get('host')}:{conninfo_to_dict(url).get('port')}/"
    said = one_sentence(windmill(tmp_path, "status", WINDMILL_DATABASE_URL=url))
    assert said.startswith(f"cannot connect to PostgreSQL at {location}") and said.endswith(expected)


@pytest.mark.parametrize("port", ["abc", "-1", "99999"])
def test_a_bad_port_is_one_sentence_naming_the_setting(url_as: Callable[..., str], tmp_path: Path, port: str) -> None:
    url = url_as("windmill_worker").replace(f":{conninfo_to_dict(url_as('windmill_worker'))['port']}/", f":{port}/")
    said = one_sentence(windmill(tmp_path, "status", WINDMILL_DATABASE_URL=url))
    assert said == f"WINDMILL_DATABASE_URL has port '{port}'; a port is a number between 1 and 65535"


def test_libpqs_word_for_a_bad_port_is_translated_too() -> None:
    """Where a port reaches libpq unchecked (a service file, PGPORT), its error still becomes the sentence."""
    for conninfo in ("host=localhost port=abc", "host=127.0.0.1 port=99999"):
        with pytest.raises(psycopg.OperationalError) as failed:
            psycopg.connect(conninfo, connect_timeout=5)
        assert connection_failure(failed.value, "localhost:abc/windmill") == (
            "cannot connect to PostgreSQL at localhost:abc/windmill: the port is not a port number; a port is a "
            "number between 1 and 65535 (WINDMILL_DATABASE_URL or DB_HOST and DB_PORT)")


def test_bad_harmony_keys_are_listed_with_the_valid_ones(tmp_path: Path) -> None:
    said = one_sentence(windmill(tmp_path, "config", WINDMILL_HARMONY='{"iou": 2}'))
    assert said == ("WINDMILL_HARMONY has unknown key 'iou'; valid keys: iou_threshold, containment_threshold, "
                    "min_services, single_service_min_confidence, fusion, split_crowds, emoji_from_labels")


def test_a_server_at_max_connections_is_told_as_such() -> None:
    # What PostgreSQL answers when max_connections is reached (once passed on as it was).
    full = psycopg.OperationalError('connection to server at "127.0.0.1", port 5432 failed: FATAL:  sorry, too many '
                                    'clients already')
    assert connection_failure(full, "127.0.0.1:5432/windmill").startswith(
        "cannot connect to PostgreSQL at 127.0.0.1:5432/windmill: the server has no free connection; raise its "
        "max_connections")


@pytest.mark.parametrize(("libpq_said", "sentence"), [
    # A server that asks for a password, a login without one (no ~/.pgpass, no password file).
    ('connection to server at "127.0.0.1", port 5432 failed: fe_sendauth: no password supplied',
     "the server asks for a password and none was given; give it (WINDMILL_DATABASE_PASSWORD_FILE, DB_PASSWORD, "
     "the URL's, or ~/.pgpass)"),
    # A `reject` line in pg_hba.conf.
    ('connection to server at "127.0.0.1", port 5432 failed: FATAL:  pg_hba.conf rejects connection for host '
     '"127.0.0.1", user "analyst", database "windmill", no encryption',
     "the server's pg_hba.conf turns user \"analyst\" away from 127.0.0.1 (a reject line); change the server's "
     "pg_hba.conf: a line above the reject one that lets this host and user in (deploy/README.md)"),
])
def test_a_login_the_server_turns_away_is_said_with_the_fix(libpq_said: str, sentence: str) -> None:
    # Passed on as libpq wrote them, with no fix.
    said = connection_failure(psycopg.OperationalError(libpq_said), "127.0.0.1:5432/windmill")
    assert said == f"cannot connect to PostgreSQL at 127.0.0.1:5432/windmill: {sentence}"


def test_the_embedded_database_not_running_is_said_as_such() -> None:
    # `status --watch` after `db stop` said to check WINDMILL_DATABASE_URL or DB_HOST and DB_PORT, which the
    # embedded cluster does not come from.
    refused = psycopg.OperationalError('connection to server at "127.0.0.1", port 44067 failed: Connection refused')
    said = connection_failure(refused, "127.0.0.1:44067/windmill", embedded=True)
    assert said == ("cannot connect to PostgreSQL at 127.0.0.1:44067/windmill: connection refused; the embedded "
                    "database is not running (`windmill-cli db stop` stopped it, or its server died); a command that "
                    "needs it starts it again")


def test_libpq_options_in_the_database_url_pass_through(database_url: str) -> None:
    # A statement_timeout given as the URL's `options` once gave way to Windmill's search path without a word.
    separator = "&" if "?" in database_url else "?"
    url = f"{database_url}{separator}options=-c%20statement_timeout%3D1234ms&application_name=nightly-export"
    with Database(url, application_name="windmill-tests").connect() as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert conn.execute("SHOW search_path").fetchone()[0].startswith("windmill")
        assert conn.execute("SHOW application_name").fetchone() == ("nightly-export",)


def test_a_read_only_command_refused_names_the_monitor_role(url_as: Callable[..., str], server_conninfo: str,
                                                            tmp_path: Path) -> None:
    # `show` and `export` need only windmill_monitor; the refusal once asked for windmill_worker.
    with psycopg.connect(server_conninfo, autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'windmill_no_grants'").fetchone() is None:
            admin.execute("CREATE ROLE windmill_no_grants LOGIN")
    said = one_sentence(windmill(tmp_path, "show", "1", WINDMILL_DATABASE_URL=url_as("windmill_no_grants")))
    assert said.startswith("PostgreSQL refused `show` as windmill_no_grants: permission denied for ")
    assert "it needs the privileges of windmill_monitor" in said


def test_the_monitor_runs_its_read_only_commands_and_the_worker_asks_again_for_failed_products(
        url_as: Callable[..., str], server_conninfo: str, tmp_path: Path) -> None:
    # `show`, `images groups` and `eval` synced the catalog (an INSERT) and were refused to windmill_monitor;
    # `backfill --failed` locked rows FOR UPDATE, which windmill_worker may not.
    admin = url_as(conninfo_to_dict(server_conninfo).get("user") or "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        image_id = conn.execute("INSERT INTO windmill.images (image_filename, image_path) VALUES ('a.jpg', "
                                "'/data/a.jpg') RETURNING image_id").fetchone()[0]
        box = conn.execute("""INSERT INTO windmill.merged_boxes (image_id, source_result_ids, merged_data, crop_key)
                              VALUES (%s, '{1}', '{"emoji": "🧑", "labels": ["person"],
                                      "merged_bbox": {"x": 0, "y": 0, "width": 9, "height": 9}}', 'person:0')
                              RETURNING merged_id""", (image_id,)).fetchone()[0]
        conn.execute("INSERT INTO windmill.postprocessing (image_id, merged_box_id, service, data, status, "
                     "error_message) VALUES (%s, %s, 'face', '{}', 'error', 'face: HTTP 503')", (image_id, box))
    coco = tmp_path / "truth.json"
    coco.write_text('{"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}], "annotations": [], '
                    '"categories": [{"id": 1, "name": "person"}]}')
    monitor = url_as("windmill_monitor")
    for args in (("show", str(image_id)), ("images", "groups"), ("eval", "--coco", str(coco))):
        result = windmill(tmp_path, *args, WINDMILL_DATABASE_URL=monitor)
        assert result.exit_code == 0, f"{args}: {result.output}"
    result = windmill(tmp_path, "backfill", "--failed", WINDMILL_DATABASE_URL=url_as("windmill_worker"))
    assert result.exit_code == 0, result.output
    with psycopg.connect(admin) as conn:
        assert conn.execute("SELECT count(*) FROM windmill.postprocessing").fetchone()[0] == 0  # asked again
        assert conn.execute("SELECT count(*) FROM windmill.jobs WHERE queue = 'postprocess_face'").fetchone()[0] == 1
