"""deploy/compose.yaml, deploy/Dockerfile and .dockerignore as an operator relies on them (Docker itself cannot run
here): a PostgreSQL health check that the image's init server cannot pass, passwords only as secret files, health
checks, resource and log limits on every container, connections within max_connections, no secret in the build
context — and compose's RabbitMQ setup script, run for real against a RabbitMQ node of our own with its management
API: Windmill's login is no administrator and can do all Windmill does, classic or quorum queues."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pika
import pytest

from tests.conftest import REPOSITORY
from windmill.bench.private_rabbitmq import PrivateRabbitMQ
from windmill.broker.base import Task
from windmill.broker.queues import definitions, render
from windmill.broker.rabbitmq import RabbitMQBroker
from windmill.catalog import Catalog
from windmill.monitor import RabbitMQManagement
from windmill.supervisor import worker_specs
from windmill.worker.launch import worker_connections

DEPLOY = REPOSITORY / "deploy"
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the compose file's structure is unchecked")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def long_running(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose["services"].items() if service.get("restart") != "no"}


def windmill_containers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in long_running(compose).items()
            if service.get("image") == "windmill:latest"}


def test_postgres_is_healthy_only_when_it_answers_over_tcp(compose: dict[str, Any]) -> None:
    test = compose["services"]["postgres"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"] and test[test.index("-h") + 1] in ("127.0.0.1", "localhost")


def test_every_container_has_rotated_logs_and_resource_limits(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        logging = service.get("logging", {})
        assert logging.get("driver") == "json-file" and logging["options"]["max-size"], name
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), name


def test_every_windmill_container_has_a_health_check_of_its_own(compose: dict[str, Any], catalog: Catalog) -> None:
    containers = windmill_containers(compose)
    assert set(worker_specs(catalog)) | {"farm"} == set(containers)
    for name, service in containers.items():
        test = service["healthcheck"]["test"]
        expected = ["CMD", "windmill-cli", "-q", "farm", "check"] if name == "farm" else [
            "CMD", "windmill-cli", "-q", "workers", "health", name]
        assert test == expected, name
    for name, service in long_running(compose).items():
        assert "healthcheck" in service or "profiles" in service, f"{name} has no health check"


def test_passwords_are_secret_files_never_urls_or_variables(compose: dict[str, Any]) -> None:
    text = (DEPLOY / "compose.yaml").read_text(encoding="utf-8")
    assert "PASSWORD:" not in text.replace("_PASSWORD_FILE:", "") and "_PASS=" not in text.replace(
        'RABBITMQ_DEFAULT_PASS="$$(cat /run/secrets/', "")
    for url in re.findall(r"(?:postgresql|amqps?)://[^\s\"']+", text):
        assert ":" not in url.split("://", 1)[1].split("@", 1)[0], f"a password in {url}"
    declared = compose["secrets"]
    assert all(entry["file"].startswith("./secrets/") for entry in declared.values())
    for name, service in compose["services"].items():
        for secret in service.get("secrets", []):
            assert secret in declared, f"{name} uses the undeclared secret {secret}"
        environment = service.get("environment", {})
        for variable in ("WINDMILL_DATABASE_PASSWORD_FILE", "WINDMILL_AMQP_PASSWORD_FILE"):
            if variable in environment:
                assert environment[variable].removeprefix("/run/secrets/") in service["secrets"], (name, variable)
    for name in windmill_containers(compose):
        if name != "farm":
            environment = compose["services"][name]["environment"]
            assert {"WINDMILL_DATABASE_PASSWORD_FILE", "WINDMILL_AMQP_PASSWORD_FILE"} <= set(environment)
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"


def test_max_connections_holds_every_worker_at_once(compose: dict[str, Any], catalog: Catalog) -> None:
    command = compose["services"]["postgres"]["command"]
    allowed = int(re.search(r"max_connections=(\d+)", command)[1])
    workers = [name for name, service in compose["services"].items()
               if service.get("command", [])[:2] == ["workers", "run"]]
    assert len(workers) == len(worker_specs(catalog))  # the scheduler's profile counted too
    threads = [int(spec.argv_tail[spec.argv_tail.index("--concurrency") + 1]) if "--concurrency" in spec.argv_tail
               else 4 for spec in worker_specs(catalog).values()]
    needed = sum(worker_connections(count) for count in threads)
    reserved = 3 + 5  # superuser_reserved_connections, and the one-shots, `cli` and psql of an operator
    assert needed + reserved <= allowed, f"{len(workers)} workers need {needed} connections of {allowed}"


def test_a_scheduler_runs_by_default_where_rabbitmq_carries_the_tasks(compose: dict[str, Any]) -> None:
    """pg_cron runs the periodic pass in SQL, but only a scheduler's tick publishes again the tasks RabbitMQ lost
    (deploy/README.md): with no scheduler, a lost task's image would wait for its answer for ever."""
    scheduler = compose["services"]["scheduler"]
    assert "WINDMILL_AMQP_URL" in scheduler["environment"], "the compose workers take their tasks from RabbitMQ"
    assert not scheduler.get("profiles"), "the scheduler must start with `docker compose up`, not a profile"


# -- the build context -----------------------------------------------------------------------------------------------


def build_context(root: Path) -> set[str]:
    """The files Docker sends for `docker build` at `root`, by the repository's .dockerignore (docker's own
    matcher, from the Docker SDK)."""
    exclude_paths = pytest.importorskip("docker.utils.build", reason="the docker package (test extra) is missing")
    patterns = [line.strip() for line in (REPOSITORY / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    return {path for path in exclude_paths.exclude_paths(str(root), patterns, dockerfile="deploy/Dockerfile")
            if (root / path).is_file()}


def test_no_secret_or_image_folder_is_in_the_build_context(tmp_path: Path) -> None:
    planted = ["deploy/.env", "deploy/secrets/postgres_password", "deploy/images/a.jpg", "images/b.jpg", ".env",
               ".venv/bin/python", ".git/config", "windmill-demo/c.png", "tests/test_x.py", "notes/secret.txt",
               "windmill/__pycache__/x.cpython-311.pyc"]
    shipped = ["pyproject.toml", "README.md", "windmill/__init__.py", "windmill/sql_like/x.py", "sql/0001_x.sql",
               "deploy/service_config.json", "deploy/rabbitmq-definitions.json"]
    for path in planted + shipped:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    context = build_context(tmp_path)
    assert set(shipped) <= context
    assert not set(planted) & context, sorted(set(planted) & context)


def test_what_the_dockerfile_copies_is_in_the_build_context() -> None:
    context = build_context(REPOSITORY)
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    sources = [source for line in dockerfile.splitlines() if line.startswith("COPY ")
               for source in line.split()[1:-1]]
    assert sources
    for source in sources:
        found = [path for path in context if Path(path).match(source) or path.startswith(source.rstrip("/") + "/")
                 or path == source]
        assert found, f"the Dockerfile copies {source}, which the build context lacks"
    assert not [path for path in context if path.endswith(".env") or "/secrets/" in path]


# -- the RabbitMQ setup, for real ------------------------------------------------------------------------------------


def test_the_definitions_files_are_what_the_code_declares(catalog: Catalog) -> None:
    queues = [service.queue_name for service in catalog.services]
    assert (DEPLOY / "rabbitmq-definitions.json").read_text(encoding="utf-8") == render(definitions(queues))
    assert (DEPLOY / "rabbitmq-definitions-quorum.json").read_text(encoding="utf-8") == render(
        definitions(queues, queue_type="quorum"))


@pytest.fixture(scope="module")
def managed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateRabbitMQ]:
    """A RabbitMQ node of our own with the management API and an administrator named as compose names it."""
    node = PrivateRabbitMQ(tmp_path_factory.mktemp("managed-rabbitmq"), prefix="windmill-compose",
                           management=True, admin=("admin", secrets.token_hex(12)))
    node.start()
    yield node
    node.discard()


def run_mq_setup(compose: dict[str, Any], node: PrivateRabbitMQ, tmp_path: Path, queues: str) -> str:
    """compose's mq-setup script, with the container's paths and host pointed at this node; returns Windmill's
    password."""
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    assert node.admin is not None
    (secrets_dir / "rabbitmq_admin_password").write_text(node.admin[1] + "\n")
    password = secrets.token_hex(12)
    (secrets_dir / "rabbitmq_password").write_text(password + "\n")
    script = compose["services"]["mq-setup"]["command"][0].replace("$$", "$")
    for inside, here in (("/tmp/", f"{tmp_path}/"), ("/run/secrets/", f"{secrets_dir}/"), ("/deploy/", f"{DEPLOY}/"),
                         ("http://rabbitmq:15672", f"http://127.0.0.1:{node.management_port}")):
        script = script.replace(inside, here)
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed (mq-setup's image runs it)")
    done = subprocess.run(["sh", "-ec", script.replace("--retry 10 ", "--retry 2 ")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "RABBITMQ_QUEUES": queues}, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return password


def test_mq_setup_makes_a_login_that_is_no_administrator_and_does_what_windmill_does(
        compose: dict[str, Any], managed_node: PrivateRabbitMQ, tmp_path: Path, catalog: Catalog) -> None:
    """With quorum queues, the harder case: Windmill's declarations must take on the type they find (classic queues
    are what every other RabbitMQ test runs on)."""
    queues = "quorum"
    password = run_mq_setup(compose, managed_node, tmp_path, queues)
    api = f"http://127.0.0.1:{managed_node.management_port}/api"
    assert managed_node.admin is not None
    admin = managed_node.admin
    user = httpx.get(f"{api}/users/windmill", auth=admin).json()
    assert user["tags"] in (["monitoring"], "monitoring")
    listed = {queue["name"]: queue for queue in httpx.get(f"{api}/queues/%2F", auth=admin).json()}
    for service in catalog.services:
        for name in (service.queue_name, service.queue_name + ".dlq"):
            assert listed[name]["type"] == queues and listed[name]["durable"], name
    url = f"amqp://windmill:{password}@127.0.0.1:{managed_node.port}/%2F"
    # What Windmill does with its login: declare (taking on the queues' type), publish, read depths for `status`.
    task = Task(task_id=secrets.token_hex(8), image_id=1, image_filename="a.jpg", image_path="/a.jpg",
                image_url=None, submitted_at="2026-01-01T00:00:00+00:00", service_name="yolov8",
                queue_name="queue_yolov8")
    with RabbitMQBroker(url) as broker:
        broker.declare([catalog["yolov8"]])
        broker.publish([task])
        assert broker.queue_depths(["queue_yolov8"])["queue_yolov8"] >= 1
    management = RabbitMQManagement.configured(url, f"http://127.0.0.1:{managed_node.management_port}",
                                               ["queue_yolov8"])
    assert management is not None
    report = management.queue_depths()
    assert report.available and [row["queue"] for row in report.queues] == ["queue_yolov8", "queue_yolov8.dlq"]
    # What it may not: administer the broker, or make queues that are not Windmill's.
    assert httpx.get(f"{api}/users", auth=("windmill", password)).status_code in (401, 403)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as refused:
        connection.channel().queue_declare("not_windmills", durable=True)
    assert refused.value.reply_code == 403
    connection.close()
