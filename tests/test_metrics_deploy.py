"""Metrics switched on by configuration: WINDMILL_METRICS_PORT gives each worker `workers start` runs its own port
(base + index) and a file_sd target while it runs; `run` serves every role's series; the Prometheus rules and
configurations pass promtool (rule unit tests included); every metric the Grafana dashboard and the alerts query is
exported by a live worker; compose and systemd switch metrics on, and compose's Prometheus scrapes every worker."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PYTHON, REPOSITORY, wait_until
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.metrics_targets import target_path, worker_port
from windmill.supervisor import Supervisor, worker_specs

DEPLOY = REPOSITORY / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "windmill-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def promtool(*args: str) -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (tests/run.sh does)")
    result = subprocess.run([found, *args], capture_output=True, text=True, cwd=PROMETHEUS, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_checks_the_rules_their_unit_tests_and_both_configurations() -> None:
    assert "SUCCESS: 10 rules found" in promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in promtool("test", "rules", "alerts.test.yml")
    for config in ("prometheus.yml", "compose.yml"):
        promtool("check", "config", config)


def queried_metrics() -> set[str]:
    """The windmill_* series the dashboard's panels and the alert rules read."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    rules = (PROMETHEUS / "alerts.yml").read_text(encoding="utf-8")
    return set(re.findall(r"\bwindmill_[a-z_]+", " ".join(exprs) + " " + rules))


def exported(port: int) -> set[str]:
    """Every series name a worker's /metrics offers: its samples, and what its declared families will show."""
    return series_names(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)


def series_names(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def free_ports(count: int) -> int:
    """A base port with `count` free ports after it."""
    for _ in range(50):
        base = random.randrange(20_000, 60_000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range")


def answering(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def supervisor(database: Database, worker_env: dict[str, str], catalog: Catalog,
               tmp_path: Path) -> Iterator[Supervisor]:
    specs = worker_specs(catalog)
    base = free_ports(len(specs))
    home = tmp_path / "home"
    supervised = Supervisor(home, specs, environ={**worker_env, "WINDMILL_HOME": str(home),
                                                  "WINDMILL_METRICS_PORT": str(base)},
                            metrics_base_port=base)
    try:
        yield supervised
    finally:
        supervised.stop(drain_timeout=20)


def test_started_workers_serve_metrics_on_their_own_ports_with_targets_and_what_the_dashboard_reads(
        supervisor: Supervisor) -> None:
    names = list(supervisor.specs)
    base = supervisor.metrics_base_port
    assert base is not None
    started = supervisor.start(["merger", "caption_score"])
    assert all(outcome.ok for outcome in started), started
    ports = {name: worker_port(base, names, name) for name in ("merger", "caption_score")}
    assert ports == {"merger": base + names.index("merger"), "caption_score": base + names.index("caption_score")}
    for name, port in ports.items():
        path = target_path(supervisor.home, supervisor.worker_id(name))
        wait_until(lambda port=port, path=path: answering(port) and path.exists(), timeout=30,
                   message=f"{name}'s metrics on port {port} and its target file")
        target = json.loads(path.read_text(encoding="utf-8"))
        assert target == [{"targets": [f"{socket.gethostname()}:{port}"],
                           "labels": {"worker": supervisor.worker_id(name), "role": name}}]
    missing = queried_metrics() - exported(ports["merger"])
    assert len(queried_metrics()) >= 8 and missing == set(), f"queried but not exported: {sorted(missing)}"

    supervisor.stop(["merger"], drain_timeout=20)  # a worker that stops of its own accord takes its target along
    assert not target_path(supervisor.home, supervisor.worker_id("merger")).exists()
    assert target_path(supervisor.home, supervisor.worker_id("caption_score")).exists()


def test_a_worker_whose_configured_metrics_port_is_taken_serves_on_another_and_names_it(
        worker_env: dict[str, str], tmp_path: Path) -> None:
    # WINDMILL_METRICS_PORT is blip's port on a machine whose named workers run (`workers start`: base + index):
    # a worker started by hand with the same settings failed at once with "cannot serve metrics ... in use".
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**worker_env, "WINDMILL_METRICS_PORT": str(port), "WORKER_ID": "by-hand"}
        with subprocess.Popen([PYTHON, "-m", "windmill", "worker", "--role", "merger"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as process:
            target = target_path(tmp_path / "home", "by-hand")
            try:
                wait_until(lambda: target.exists() or process.poll() is not None, timeout=60,
                           message="the worker's target file")
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                moved = int(json.loads(target.read_text(encoding="utf-8"))[0]["targets"][0].rsplit(":", 1)[1])
                assert moved != port and answering(moved)
            finally:
                process.send_signal(signal.SIGTERM)
                _, stderr = process.communicate(timeout=60)
        assert f"metrics port {port} (WINDMILL_METRICS_PORT) is taken" in stderr
        # Asked for by --metrics-port, the port is what Prometheus was told: taken, it is an error.
        refused = subprocess.run([PYTHON, "-m", "windmill", "worker", "--role", "merger", "--metrics-port", str(port)],
                                 env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and f"cannot serve metrics on 0.0.0.0:{port}" in refused.stderr, refused.stderr


def test_run_serves_every_roles_series_on_the_configured_port(database: Database, worker_env: dict[str, str],
                                                              tmp_path: Path) -> None:
    port = free_ports(1)
    with database.connect() as conn:  # one merge to do: an image no detector has answered (no boxes, a success)
        image_id = conn.execute("INSERT INTO images (image_filename, image_path) VALUES ('a.jpg', '/nowhere/a.jpg') "
                                "RETURNING image_id").fetchone()[0]
        conn.execute("INSERT INTO jobs (queue, image_id, payload) VALUES ('merge', %s, %s)",
                     (image_id, json.dumps({"image_id": image_id})))
    with subprocess.Popen([PYTHON, "-m", "windmill", "run"], env={**worker_env, "WINDMILL_METRICS_PORT": str(port)},
                          cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as process:
        try:
            wait_until(lambda: answering(port) or process.poll() is not None, timeout=60, message="run's metrics")
            wait_until(lambda: 'windmill_jobs_done_total{role="merger",service=""} 1.0' in httpx.get(
                f"http://127.0.0.1:{port}/metrics", timeout=10).text, timeout=60, message="the merge to be counted")
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    roles = {sample.labels["role"] for family in text_string_to_metric_families(text)
             if family.name == "windmill_jobs_done" for sample in family.samples}
    assert {"service", "merger", "postprocess", "consensus", "caption_score"} <= roles
    missing = sorted(queried_metrics() - series_names(text))
    assert not missing, f"the alerts or the dashboard read series `run` does not export: {missing}"


def test_compose_and_systemd_switch_metrics_on_and_compose_prometheus_scrapes_every_worker(catalog: Catalog) -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the compose file's structure is unchecked")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    names = list(worker_specs(catalog))
    base = int(compose["x-windmill"]["environment"]["WINDMILL_METRICS_PORT"])
    workers = [name for name in names if "profiles" not in compose["services"][name]]
    for name in workers:
        assert compose["services"][name]["environment"]["WINDMILL_METRICS_PORT"] == str(base)
    config = yaml.safe_load((PROMETHEUS / "compose.yml").read_text(encoding="utf-8"))
    scraped = {entry["labels"]["worker"]: entry["targets"] for entry in config["scrape_configs"][0]["static_configs"]}
    assert scraped == {name: [f"farm:{worker_port(base, names, name)}"] for name in workers}
    mounted = compose["services"]["prometheus"]["volumes"] + compose["services"]["grafana"]["volumes"]
    for source in ("./prometheus/compose.yml", "./prometheus/alerts.yml", "./grafana/windmill-dashboard.json"):
        assert any(volume.startswith(source + ":") for volume in mounted) and (DEPLOY / source).is_file()
    for unit in ("windmill-worker@.service", "windmill-run.service"):
        environment = [line.removeprefix("Environment=").split() for line in
                       (DEPLOY / unit).read_text(encoding="utf-8").splitlines() if line.startswith("Environment=")]
        assert "WINDMILL_METRICS_PORT=9400" in [item for items in environment for item in items], unit
