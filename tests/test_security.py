"""Security: workers run under the least-privilege role of deploy/roles.sql; credentials come from the
environment, .env or a file and never show in argv, logs, `config` or error messages; image paths stay inside the
image roots; private image URLs are refused before any connection; TLS options reach libpq and pika."""

from __future__ import annotations

import http.server
import io
import logging
import secrets
import signal
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

import certifi
import click
import psycopg
import pytest
from PIL import Image
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, REPOSITORY, wait_until
from tests.farm_fixtures import running_farm
from windmill.broker import JobTableBroker, Task
from windmill.broker.rabbitmq import connection_parameters
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.commands import main
from windmill.db.connect import Database, DatabaseUnavailable
from windmill.errors import ConfigError
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.images import BadImage
from windmill.images.load import load_image_bytes
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.roles.service import ServiceTaskHandler
from windmill.settings import settings_from_mapping
from windmill.worker.group import WorkerGroup, pipeline_idle
from windmill.worker.layout import RoleSpec
from windmill.worker.runtime import WorkerOptions

ROLES_SQL = REPOSITORY / "deploy" / "roles.sql"
SAMPLES = REPOSITORY / "windmill" / "samples"
LOGIN = "windmill_security_login"
# Fresh per run, with characters a URL must percent-encode: a leak in either spelling is caught.
PASSWORD = f"Pw-{secrets.token_hex(8)}:@/%?&"
SPELLINGS = (PASSWORD, quote(PASSWORD, safe=""), quote(PASSWORD))
DETECTORS = "yolov8,rtdetr"
PRODUCTS = (RoleSpec("merger", concurrency=2), RoleSpec("postprocess", "colors,face,pose", concurrency=2),
            RoleSpec("consensus", concurrency=2))


def assert_no_password(text: str, where: str) -> None:
    for spelling in SPELLINGS:
        assert spelling not in text, f"the password appears in {where}"


def jpeg(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "JPEG")
    return buffer.getvalue()


# -- the least-privilege login -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    """A login that is a member of windmill_worker, with a password PostgreSQL checks."""

    host: str
    port: int
    dbname: str
    password_checked: bool  # False on a configured server whose pg_hba.conf this test cannot change

    def url(self, password: str | None = PASSWORD) -> str:
        credentials = LOGIN if password is None else f"{LOGIN}:{quote(password, safe='')}"
        return f"postgresql://{credentials}@{self.host}:{self.port}/{self.dbname}"

    def env(self, worker_env: dict[str, str], **extra: str) -> dict[str, str]:
        """A subprocess environment naming the server with the seed's DB_* variables, without a password."""
        env = {key: value for key, value in worker_env.items() if key != "WINDMILL_DATABASE_URL"}
        env.update({"DB_HOST": self.host, "DB_PORT": str(self.port), "DB_NAME": self.dbname, "DB_USER": LOGIN})
        env.update(extra)
        return env


def apply_roles_sql(admin: psycopg.Connection) -> None:
    if not ROLES_SQL.is_file():
        pytest.fail(f"{ROLES_SQL.relative_to(REPOSITORY)} is missing: the least-privilege roles are defined there")
    admin.execute(ROLES_SQL.read_text(encoding="utf-8"))


@contextmanager
def passwords_required(admin: psycopg.Connection) -> Iterator[bool]:
    """Make the server check LOGIN's password: the test cluster trusts 127.0.0.1, so a scram-sha-256 line for
    LOGIN goes first in pg_hba.conf (only this role is affected), and the file is restored afterwards."""
    try:
        hba = Path(admin.execute("SHOW hba_file").fetchone()[0])
        original = hba.read_text(encoding="utf-8")
        hba.write_text(original, encoding="utf-8")  # writable at all?
    except (psycopg.Error, OSError):
        yield False  # a configured server: whatever it checks, it checks
        return
    rules = "".join(f"host all {LOGIN} {network} scram-sha-256\n" for network in ("127.0.0.1/32", "::1/128"))
    hba.write_text(rules + original, encoding="utf-8")
    admin.execute("SELECT pg_reload_conf()")
    try:
        yield True
    finally:
        hba.write_text(original, encoding="utf-8")
        admin.execute("SELECT pg_reload_conf()")


def _refuses_a_wrong_password(login: Login) -> bool:
    try:
        psycopg.connect(login.url("not-the-password"), connect_timeout=5).close()
    except psycopg.OperationalError as error:
        return "password authentication failed" in str(error)
    return False


@pytest.fixture(scope="module")
def login(database_url: str) -> Iterator[Login]:
    parts = urlsplit(database_url)
    with psycopg.connect(database_url, autocommit=True) as admin:
        apply_roles_sql(admin)
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (LOGIN,)).fetchone()
        admin.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
            sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(LOGIN), sql.Literal(PASSWORD)))
        admin.execute(sql.SQL("GRANT windmill_worker TO {}").format(sql.Identifier(LOGIN)))
        admin.execute("CREATE TABLE IF NOT EXISTS public.outside_windmill (secret text)")
        with passwords_required(admin) as checked:
            info = Login(parts.hostname or "127.0.0.1", parts.port or 5432, parts.path.lstrip("/"), checked)
            if checked:
                wait_until(lambda: _refuses_a_wrong_password(info), message="PostgreSQL to check the password")
            yield info
        admin.execute("DROP TABLE public.outside_windmill")
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(LOGIN)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(LOGIN)))


def test_a_full_run_under_the_least_privileged_login_never_shows_the_password(
        login: Login, database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog,
        worker_env: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = tmp_path / "db_password"  # as a Docker or systemd secret is mounted
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    secret.chmod(0o600)
    add_paths(conn, [SAMPLES / "ascent.jpg", SAMPLES / "chelsea.jpg"])
    log_path = tmp_path / "service-worker.log"
    with running_farm(catalog, services=[*DETECTORS.split(","), "colors", "face", "pose"]) as (_, farm_catalog):
        with database.connect() as reader:
            submit(reader, conn, JobTableBroker(JobQueue(pool)), farm_catalog.select(DETECTORS))
        offset = farm_catalog["yolov8"].port - catalog["yolov8"].port
        # A worker process whose password comes from the file, logging everything it can.
        env = login.env(worker_env, WINDMILL_DATABASE_PASSWORD_FILE=str(secret), LOG_LEVEL="DEBUG",
                        WINDMILL_PORT_OFFSET=str(offset), WORKER_ID="security-service")
        with open(log_path, "wb") as log:
            process = subprocess.Popen([PYTHON, "-m", "windmill", "worker", "--role", "service", "--service",
                                        DETECTORS], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
            try:
                command_line = Path(f"/proc/{process.pid}/cmdline").read_bytes().decode(errors="replace")
                # The other roles in this process, through the same least-privileged login.
                secure = Database(login.url(), application_name="windmill-security-test")
                with secure.pool(min_size=1, max_size=10, name="least-privilege") as login_pool:
                    group = WorkerGroup(settings_from_mapping({"WORKER_ID": "security-test"}), secure, login_pool,
                                        farm_catalog, PRODUCTS, jobs=JobQueue(login_pool, retry_base_s=0.05),
                                        options=WorkerOptions(poll_interval_s=0.1))
                    with group:
                        wait_until(lambda: process.poll() is not None or (
                            conn.execute("SELECT count(*) FROM results").fetchone()[0] == 4 and pipeline_idle(pool)),
                            timeout=120, interval=0.1, message="the pipeline to finish")
                assert process.poll() is None, log_path.read_text(errors="replace")
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
    worker_log = log_path.read_text(errors="replace")

    # The least-privileged login did the whole job.
    assert conn.execute("SELECT count(*) FROM results WHERE status = 'success'").fetchone()[0] == 4
    assert conn.execute("SELECT count(*) FROM merged_boxes").fetchone()[0] > 0
    assert conn.execute("SELECT count(*) FROM postprocessing WHERE service = 'colors'").fetchone()[0] > 0
    assert conn.execute("SELECT count(*) FROM consensus").fetchone()[0] == 2
    assert conn.execute("SELECT count(*) FROM jobs WHERE state <> 'done' AND queue <> 'scheduler'").fetchone()[0] == 0
    assert "DEBUG" in worker_log and "security-service" in worker_log  # the log we search is a real one
    assert caplog.records
    assert_no_password(worker_log, "the worker process's log")
    assert_no_password(caplog.text, "this process's logs")
    assert_no_password(command_line, "the worker's command line")


def test_config_and_a_refused_password_never_show_it(login: Login, worker_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    def windmill(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "windmill", *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60, check=False)

    from_env = windmill("config", env=login.env(worker_env, DB_PASSWORD=PASSWORD))
    url_form = {**worker_env, "WINDMILL_DATABASE_URL": login.url()}
    from_url = windmill("config", "--json", env=url_form)
    (tmp_path / ".env").write_text(f"DB_PASSWORD='{PASSWORD}'\n", encoding="utf-8")
    from_dotenv = windmill("config", env=login.env(worker_env))
    for shown in (from_env, from_url, from_dotenv):
        assert shown.returncode == 0, shown.stderr
        assert f"{LOGIN}:****@" in shown.stdout
        assert_no_password(shown.stdout + shown.stderr, "`windmill-cli config`")
    (tmp_path / ".env").unlink()

    if not login.password_checked:
        pytest.skip("the configured test server's pg_hba.conf cannot be changed to check passwords")
    wrong = f"Wrong-{secrets.token_hex(8)}"
    for env in (login.env(worker_env, DB_PASSWORD=wrong), {**worker_env, "WINDMILL_DATABASE_URL": login.url(wrong)}):
        refused = windmill("status", env=env)
        assert refused.returncode == 1
        assert "password authentication failed" in refused.stderr
        assert wrong not in refused.stdout + refused.stderr
        assert "Traceback" not in refused.stderr


def test_the_least_privileged_login_cannot_change_the_schema_or_read_outside_it(login: Login,
                                                                                database: Database) -> None:
    with Database(login.url()).connect() as secure:
        assert secure.execute("SELECT current_user").fetchone()[0] == LOGIN
        secure.execute("SELECT count(*) FROM windmill.jobs")  # what a worker reads, it may read
        for statement in (
            "DROP TABLE windmill.results",
            "ALTER TABLE windmill.jobs ADD COLUMN intruder text",
            "CREATE TABLE windmill.intruder (x int)",
            "CREATE TABLE public.intruder (x int)",
            "CREATE SCHEMA intruder",
            "CREATE TEMPORARY TABLE intruder (x int)",
            "SELECT * FROM public.outside_windmill",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                secure.execute(statement)


# -- image paths and URLs ------------------------------------------------------------------------------------------


def test_image_paths_outside_the_roots_end_as_error_rows(conn: psycopg.Connection, pool: ConnectionPool,
                                                         catalog: Catalog, tmp_path: Path) -> None:
    root, outside = tmp_path / "images", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "inside.jpg").write_bytes(jpeg())
    (outside / "secret.jpg").write_bytes(jpeg("blue"))
    (root / "link.jpg").symlink_to(outside / "secret.jpg")
    (root / "sub" / "link-dir").symlink_to(outside, target_is_directory=True)
    cases = {
        "inside": (str(root / "inside.jpg"), None, None),
        "inside-dotdot": (f"{root}/sub/../inside.jpg", None, None),
        "escape": (f"{root}/sub/../../outside/secret.jpg", None, "outside the allowed image roots"),
        "absolute": (str(outside / "secret.jpg"), None, "outside the allowed image roots"),
        "symlink": (str(root / "link.jpg"), None, "outside the allowed image roots"),
        "symlinked-dir": (str(root / "sub" / "link-dir" / "secret.jpg"), None, "outside the allowed image roots"),
        "metadata-url": (None, "http://169.254.169.254/latest/meta-data/x.jpg", "link-local address; refused"),
    }
    images = {}
    for name, (path, url, _) in cases.items():
        images[name] = conn.execute(
            "INSERT INTO images (image_filename, image_path, image_url) VALUES (%s, %s, %s) "
            "RETURNING image_id, image_filename, image_path, image_url", (f"{name}.jpg", path, url)).fetchone()
    settings = settings_from_mapping({"WINDMILL_IMAGE_ROOTS": str(root), "WORKER_ID": "security-test"})
    with running_farm(catalog, services=["colors"]) as (_, farm_catalog), FarmClient(farm_catalog) as client:
        handler = ServiceTaskHandler(pool, client, ImageSource(settings), farm_catalog, "security-test")
        for row in images.values():
            image = dict(zip(("image_id", "image_filename", "image_path", "image_url"), row, strict=True))
            handler.handle(Task.for_image(image, farm_catalog["colors"]), final_attempt=True)
    for name, (_, _, refusal) in cases.items():
        status, error_message = conn.execute("SELECT status, error_message FROM results WHERE image_id = %s",
                                             (images[name][0],)).fetchone()
        if refusal is None:
            assert (status, error_message) == ("success", None), name
        else:
            assert status == "error" and refusal in error_message, (name, error_message)


class _ImageServer(http.server.ThreadingHTTPServer):
    """Serves one JPEG on 127.0.0.1 and counts the requests that reach it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        super().__init__(("127.0.0.1", 0), _ImageHandler)


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    server: _ImageServer

    def do_GET(self) -> None:
        self.server.hits.append(self.path)
        body = jpeg()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_server() -> Iterator[_ImageServer]:
    server = _ImageServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every address a Python socket of this process connects to while the test runs."""
    seen: list[object] = []
    connect = socket.socket.connect

    def recording(self: socket.socket, address: object) -> None:
        seen.append(address)
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", recording)
    return seen


@pytest.mark.parametrize(("url", "kind"), [
    ("http://127.0.0.1:{port}/photo.jpg", "loopback"),
    ("http://localhost:{port}/photo.jpg", "loopback"),
    ("http://[::1]:{port}/photo.jpg", "loopback"),
    ("http://[::ffff:127.0.0.1]:{port}/photo.jpg", "loopback"),
    ("http://10.20.30.40/photo.jpg", "private"),
    ("http://192.168.1.1/photo.jpg", "private"),
    ("http://169.254.169.254/latest/meta-data/photo.jpg", "link-local"),
    ("http://[fe80::1]/photo.jpg", "link-local"),
    # IPv6 forms that embed an IPv4 address, which Python calls global: judged by the IPv4 one
    ("http://[64:ff9b::a9fe:a9fe]/photo.jpg", "link-local"),  # NAT64 of the metadata service
    ("http://[64:ff9b::7f00:1]:{port}/photo.jpg", "loopback"),
    ("http://[64:ff9b:1::a00:1]/photo.jpg", "private"),  # local-use NAT64 of 10.0.0.1
    ("http://[2002:7f00:1::]:{port}/photo.jpg", "loopback"),  # 6to4
    ("http://[::127.0.0.1]:{port}/photo.jpg", "loopback"),  # IPv4-compatible
])
def test_private_image_urls_are_refused_before_connecting(url: str, kind: str, image_server: _ImageServer,
                                                          connections: list[object]) -> None:
    target = url.format(port=image_server.server_address[1])
    with pytest.raises(BadImage, match=f"a {kind} address; refused"):
        load_image_bytes(None, target)
    assert connections == []
    assert image_server.hits == []


def test_private_image_urls_load_when_allowed(image_server: _ImageServer, connections: list[object]) -> None:
    port = image_server.server_address[1]
    assert settings_from_mapping({}).allow_private_urls is False
    allowed = settings_from_mapping({"WINDMILL_ALLOW_PRIVATE_URLS": "true"}).allow_private_urls
    data = load_image_bytes(None, f"http://127.0.0.1:{port}/photo.jpg", allow_private_urls=allowed)
    assert data.startswith(b"\xff\xd8")
    assert image_server.hits == ["/photo.jpg"]
    assert ("127.0.0.1", port) in connections  # the spy above does see connections


# -- credentials from files ----------------------------------------------------------------------------------------


def test_no_command_takes_a_password_on_its_command_line() -> None:
    """argv is world-readable (ps, /proc/*/cmdline): a password there is a password shown to every local user."""
    def options(command: click.Command, path: str) -> Iterator[tuple[str, str]]:
        for parameter in command.params:
            yield path, " ".join(parameter.opts)
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from options(sub, f"{path} {name}")

    secret_words = ("password", "secret", "credential", "token", "database-url", "amqp-url", "dsn")
    offending = [(path, opts) for path, opts in options(main, "windmill-cli")
                 if any(word in opts.lower() for word in secret_words)]
    assert offending == []


def test_passwords_come_from_files(tmp_path: Path) -> None:
    database_secret, amqp_secret = tmp_path / "db", tmp_path / "amqp"
    database_secret.write_text("s3cret/@:%\n", encoding="utf-8")
    amqp_secret.write_text("rabbit-pass\r\n", encoding="utf-8")
    seed_form = {"DB_HOST": "db.internal", "DB_NAME": "windmill", "DB_USER": "worker",
                 "WINDMILL_DATABASE_PASSWORD_FILE": str(database_secret),
                 "QUEUE_HOST": "mq.internal", "QUEUE_USER": "windmill", "WINDMILL_AMQP_PASSWORD_FILE": str(amqp_secret)}
    settings = settings_from_mapping(seed_form)
    assert settings.database_url == "postgresql://worker:s3cret%2F%40%3A%25@db.internal:5432/windmill"
    assert settings.amqp_url == "amqp://windmill:rabbit-pass@mq.internal:5672/%2F"
    # The file replaces a URL's password and keeps the rest, query (TLS options) included.
    with_url = settings_from_mapping({
        "WINDMILL_DATABASE_URL": "postgresql://worker:placeholder@db.internal/windmill?sslmode=verify-full",
        "WINDMILL_DATABASE_PASSWORD_FILE": str(database_secret),
        "WINDMILL_AMQP_URL": "amqps://windmill@mq.internal/prod", "WINDMILL_AMQP_PASSWORD_FILE": str(amqp_secret)})
    assert with_url.database_url == "postgresql://worker:s3cret%2F%40%3A%25@db.internal/windmill?sslmode=verify-full"
    assert with_url.amqp_url == "amqps://windmill:rabbit-pass@mq.internal/prod"
    shown = "\n".join(with_url.shown().values()) + repr(with_url)
    assert "s3cret" not in shown and "rabbit-pass" not in shown
    assert "worker:****@db.internal" in shown and "windmill:****@mq.internal" in shown

    for env, problem in [
        ({**seed_form, "DB_PASSWORD": "inline"}, "DB_PASSWORD and WINDMILL_DATABASE_PASSWORD_FILE are both set"),
        ({"WINDMILL_DATABASE_PASSWORD_FILE": str(database_secret)}, "no server is configured"),
        ({**seed_form, "WINDMILL_DATABASE_PASSWORD_FILE": str(tmp_path / "missing")}, "cannot be read"),
        ({**seed_form, "WINDMILL_AMQP_PASSWORD_FILE": str(tmp_path)}, "cannot be read"),
    ]:
        with pytest.raises(ConfigError, match=problem) as raised:
            settings_from_mapping(env)
        assert "s3cret" not in str(raised.value)
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is empty"):
        settings_from_mapping({**seed_form, "WINDMILL_DATABASE_PASSWORD_FILE": str(tmp_path / "empty")})


# -- TLS pass-through ----------------------------------------------------------------------------------------------


def test_sslmode_in_the_database_url_reaches_libpq(database_url: str, database: Database, worker_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    with database.connect() as conn:
        if conn.execute("SHOW ssl").fetchone()[0] == "on":
            pytest.skip("the test server speaks TLS, so sslmode=require cannot fail against it")
    required = settings_from_mapping({"WINDMILL_DATABASE_URL": f"{database_url}?sslmode=require"})
    assert conninfo_to_dict(Database(required.database_url).conninfo)["sslmode"] == "require"
    with pytest.raises(DatabaseUnavailable, match="server does not support SSL, but SSL was required"):
        Database(required.database_url).connect()
    disabled = settings_from_mapping({"WINDMILL_DATABASE_URL": f"{database_url}?sslmode=disable"})
    with Database(disabled.database_url).connect() as conn:  # the same server, the option the only change
        assert conn.execute("SELECT 1").fetchone()[0] == 1
    # A worker process gets the same: its error names the TLS problem, not a generic failure.
    worker = subprocess.run([PYTHON, "-m", "windmill", "worker", "--role", "merger"], cwd=tmp_path, timeout=60,
                            env={**worker_env, "WINDMILL_DATABASE_URL": required.database_url},
                            capture_output=True, text=True, check=False)
    assert worker.returncode != 0
    assert "SSL was required" in worker.stderr


def test_amqps_urls_give_pika_tls_parameters() -> None:
    plain = connection_parameters("amqp://windmill:secret@mq.example.org/%2F", heartbeat=30, connection_name="t")
    assert plain.ssl_options is None and plain.port == 5672

    settings = settings_from_mapping({"WINDMILL_AMQP_URL": "amqps://windmill:secret@mq.example.org/%2F"})
    secure = connection_parameters(settings.amqp_url, heartbeat=30, connection_name="t")
    assert secure.ssl_options is not None and secure.port == 5671
    assert secure.ssl_options.context.verify_mode == ssl.CERT_REQUIRED
    assert secure.ssl_options.context.check_hostname  # pika verifies against the URL's host

    # pika's ssl_options URL argument passes through: a private CA and the name on the broker's certificate.
    options = quote(repr({"ca_certs": certifi.where(), "server_hostname": "rabbit.internal"}))
    custom = connection_parameters(f"amqps://windmill:secret@10.0.0.5:5671/%2F?ssl_options={options}",
                                   heartbeat=30, connection_name="t")
    assert custom.ssl_options is not None
    assert custom.ssl_options.server_hostname == "rabbit.internal"
    assert custom.ssl_options.context.verify_mode == ssl.CERT_REQUIRED
