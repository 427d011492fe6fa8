"""What the pipeline benchmark against a baseline measures with: distinct synthetic scenes, CPU read from /proc
(a server's exited processes included), and the medians and ratios it prints."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from windmill.bench.baseline import Run, Side, summary
from windmill.bench.cpu import postgres_processes, process_cpu, processes_cpu, rabbitmq_processes, tree_cpu
from windmill.bench.database import settle_disk
from windmill.bench.pipeline import wait_until_idle
from windmill.bench.private_rabbitmq import PrivateRabbitMQ
from windmill.bench.processes import peak_memory_mib, watched_run
from windmill.bench.scenes import CANVAS, write_scenes
from windmill.bench.stage import BENCH_GROUP
from windmill.bench.stand_in_cpu import by_kind, image_calls
from windmill.catalog import load_catalog
from windmill.db.connect import Database
from windmill.db.embedded.system import free_port
from windmill.db.queries import fetch_value
from windmill.simfarm.annotations import AnnotationIndex, sidecar_path_for

BURN_S = 0.3
_BURN = f"import time\nwhile time.process_time() < {BURN_S}: pass\n"
# /proc gives each of utime, stime, cutime and cstime rounded down to a clock tick: the difference of two readings
# may come out short of the child's exact CPU by up to a tick per field.
_ROUNDING_S = 4 / os.sysconf("SC_CLK_TCK")


def test_scenes_are_distinct_with_several_objects_the_stand_in_finds(tmp_path: Path) -> None:
    paths = write_scenes(tmp_path, 12, seed=3)
    digests = {hashlib.sha256(path.read_bytes()).hexdigest() for path in paths}
    assert len(digests) == 12  # no copies
    index = AnnotationIndex([tmp_path])
    index.scan()
    width, height = CANVAS
    for path in paths:
        sidecar = index.for_digest(hashlib.sha256(path.read_bytes()).hexdigest())
        assert sidecar is not None and sidecar.path == sidecar_path_for(path)
        assert 3 <= len(sidecar.objects) <= 4
        for obj in sidecar.objects:
            x, y, w, h = obj.bbox
            assert obj.coco is not None and x >= 0 and y >= 0 and x + w <= width and y + h <= height


def test_the_stand_in_requests_of_a_scene_are_grouped_whole_images_and_crops_apart(tmp_path: Path) -> None:
    """`stand_in_cpu --by-service` measures a box's palette apart from the whole image's: they cost differently."""
    catalog = load_catalog()
    (path,) = write_scenes(tmp_path, 1)
    objects = json.loads(sidecar_path_for(path).read_text())["objects"]
    people = sum(1 for item in objects if item["label"] == "person")
    groups = by_kind(image_calls(catalog, path))
    assert len(groups["colors (image)"]) == 1
    assert len(groups["colors (crop)"]) == len(objects)
    assert len(groups.get("face (crop)", [])) == len(groups.get("pose (crop)", [])) == people
    assert len(groups["yolov8 (image)"]) == 1 and "yolov8 (crop)" not in groups  # a detector sees the whole image


def test_the_same_seed_gives_the_same_scenes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = write_scenes(tmp_path / "a", 3, seed=7), write_scenes(tmp_path / "b", 3, seed=7)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]


def test_tree_cpu_counts_children_that_have_exited() -> None:
    """A child's CPU reaches its parent's reaped total when it is waited for; a process's own CPU does not
    include it."""
    me = os.getpid()
    own_before, tree_before = processes_cpu([me]), tree_cpu(me)
    subprocess.run([sys.executable, "-c", _BURN], check=True)
    assert tree_cpu(me) - tree_before >= BURN_S - _ROUNDING_S
    assert processes_cpu([me]) - own_before < BURN_S


def test_a_watched_commands_peak_is_its_own_memory_not_the_benchmarks() -> None:
    held = b"x" * (400 * 2**20)  # the benchmark's own pages, touched: a fork starts with them counted
    seconds, peak_mib, status = watched_run(
        [sys.executable, "-c", "import time; block = b'x' * (100 * 2**20); time.sleep(0.5); raise SystemExit(3)"],
        os.environ)
    assert 100 <= peak_mib < 300 and seconds >= 0.5 and status == 3
    del held


def test_a_workers_peak_memory_is_its_high_water_mark_while_it_runs() -> None:
    """What `bench pipeline` prints per worker process at a run's end: the peak of the run, not the memory now."""
    with subprocess.Popen([sys.executable, "-c", "import time; block = b'x' * (100 * 2**20); del block; "
                           "print('freed', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True) as worker:
        try:
            assert worker.stdout is not None and worker.stdout.readline() == "freed\n"
            assert 100 <= peak_memory_mib(worker.pid) < 300
        finally:
            worker.kill()
            worker.wait()
    assert peak_memory_mib(worker.pid) == 0


def test_a_watched_command_that_runs_until_stopped_is_timed_until_its_work_is_done() -> None:
    started = time.monotonic()
    seconds, _, status = watched_run([sys.executable, "-c", "import time; time.sleep(60)"], os.environ,
                                     until=lambda: time.monotonic() - started > 0.5)
    assert 0.5 < seconds < 5 and status == -signal.SIGTERM


def test_a_timed_run_starts_after_a_checkpoint_and_with_a_login_that_may_not_after_the_sync_alone(
        database_url: str) -> None:
    """What earlier runs wrote is on disk before the clock starts (settle_disk); a login without the right to
    checkpoint still benchmarks."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        def requested() -> int:
            return conn.execute("SELECT checkpoints_req FROM pg_stat_bgwriter").fetchone()[0]

        before = requested()
        assert settle_disk(conn) is True
        assert requested() == before + 1
        conn.execute("DROP ROLE IF EXISTS windmill_bench_plain")
        conn.execute("CREATE ROLE windmill_bench_plain LOGIN")
        try:
            with psycopg.connect(database_url, user="windmill_bench_plain", autocommit=True) as plain:
                assert settle_disk(plain) is False
            assert requested() == before + 1
        finally:
            conn.execute("DROP ROLE windmill_bench_plain")


def test_the_rabbitmq_node_measured_is_the_one_listening_on_the_urls_port(
        amqp_url: str, private_rabbitmq: PrivateRabbitMQ) -> None:
    """Two nodes on this machine (the tests' broker and a private one): each URL finds its own node's VM, and a URL
    of another host or of a port nobody listens on finds none."""
    if urlsplit(amqp_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        pytest.skip("the test broker does not run on this machine")
    shared, private = rabbitmq_processes(amqp_url), rabbitmq_processes(private_rabbitmq.amqp_url)
    assert shared.root is not None and private.root is not None and shared.root != private.root
    for node in (shared, private):
        assert Path(f"/proc/{node.root}/comm").read_text().strip() == "beam.smp"
    assert rabbitmq_processes(amqp_url.replace("127.0.0.1", "rabbit.example")).root is None
    assert rabbitmq_processes(f"amqp://guest:guest@127.0.0.1:{free_port()}/").root is None
    assert rabbitmq_processes(None).root is None


def test_postgres_cpu_includes_backends_that_came_and_went(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        cluster = postgres_processes(conn)
    if cluster.root is None:
        pytest.skip("the test server does not run on this machine")
    before = cluster.cpu()
    with psycopg.connect(database_url, autocommit=True) as busy:
        backend = busy.execute("SELECT pg_backend_pid()").fetchone()[0]
        busy.execute("SELECT count(*) FROM generate_series(1, 3000000)")
        spent = process_cpu(backend)
    deadline = time.monotonic() + 30
    while process_cpu(backend) and time.monotonic() < deadline:  # until the postmaster has reaped it
        time.sleep(0.05)
    assert spent > 0
    assert cluster.cpu() - before >= spent


def test_write_transactions_are_counted_whoever_ran_them_and_only_those_that_wrote(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE counted_writes (n int)")
        try:
            first = fetch_value(conn, "bench_next_transaction_id")
            with psycopg.connect(database_url, autocommit=True) as other:
                for _ in range(3):
                    other.execute("SELECT count(*) FROM counted_writes")  # reads: no commit to wait for
                with other.transaction():
                    other.execute("INSERT INTO counted_writes VALUES (1)")
                    other.execute("INSERT INTO counted_writes VALUES (2)")  # one transaction, one commit
            conn.execute("INSERT INTO counted_writes VALUES (3)")
            assert fetch_value(conn, "bench_next_transaction_id") - first == 2
        finally:
            conn.execute("DROP TABLE counted_writes")


def _run(rate: float, workers: float, postgres: float | None, slower: float = 1.0) -> Run:
    """A run's figures; `slower`: the machine's drift during it, which stretches every CPU figure alike."""
    images = 100
    return Run(images / rate / slower, images, workers * images * slower,
               None if postgres is None else postgres * images * slower, 0.01 * images * slower, 0.001 * images, images,
               3 * images, {"service": workers * images * slower}, None)


def test_summary_gives_medians_and_ratios_head_over_baseline() -> None:
    head, base = Side("head", sys.executable), Side("b7f4159", sys.executable)
    runs = {"head": [_run(20, 0.04, 0.01), _run(18, 0.05, 0.012), _run(30, 0.03, 0.02)],
            "b7f4159": [_run(10, 0.1, 0.03), _run(9, 0.08, 0.02), _run(11, 0.12, 0.04)]}
    lines = summary("postgres", head, base, runs)
    assert "images/s" in lines[1] and "20.0 vs     10.0  ratio 2.00×" in lines[1]
    assert "Windmill CPU" in lines[2] and "50.0 vs    130.0  ratio 0.38×" in lines[2]
    assert lines[-1] == "  run by run, head ÷ baseline: images/s 2.00×, 2.00×, 2.73×; Windmill CPU 0.38×, 0.62×, 0.31×"
    runs["head"][0] = _run(20, 0.04, None)  # a run whose server is not on this machine
    lines = summary("postgres", head, base, runs)
    assert lines[2].endswith("n/a") and "Windmill CPU n/a, 0.62×" in lines[-1]


def test_windmill_cpu_in_units_of_the_stand_ins_leaves_the_machines_drift_out() -> None:
    head, base = Side("head", sys.executable), Side("b7f4159", sys.executable)
    # Each side half of the other's cost, but head's runs met a machine 1.5× slower.
    runs = {"head": [_run(20, 0.02, 0.01, slower=1.5) for _ in range(3)],
            "b7f4159": [_run(10, 0.04, 0.02) for _ in range(3)]}
    lines = {line.split("  ")[1].strip(): line for line in summary("postgres", head, base, runs)[1:]}
    assert lines["Windmill CPU ms/image (workers + PostgreSQL)"].endswith("ratio 0.75×")
    assert lines["Windmill CPU ÷ stand-in CPU (drift left out)"].endswith("3.00 vs     6.00  ratio 0.50×")


def test_the_stand_in_load_is_a_pipelines_requests_per_image(tmp_path: Path) -> None:
    """bench stand_in_cpu: per scene the 11 primary services with the image, each object's crop to colors (a person's
    to face and pose too), the two captions scored; and the farm's user and kernel CPU from /proc."""
    from windmill.bench.stand_in_cpu import image_calls, user_and_system_cpu
    from windmill.catalog import load_catalog
    from windmill.simfarm.annotations import load_sidecar

    catalog = load_catalog()
    path = write_scenes(tmp_path, 1, seed=5)[0]
    objects = load_sidecar(sidecar_path_for(path)).objects
    people = sum(1 for item in objects if item.label == "person")
    calls = image_calls(catalog, path)
    primary = {service.name for service in catalog.in_category("primary")}
    assert sorted(call.service for call in calls if call.service in primary and call.caption is None
                  and call.image.size == calls[0].image.size) == sorted(primary)
    assert sum(1 for call in calls if call.service == "face") == people
    assert sum(1 for call in calls if call.service == "colors") == 1 + len(objects)
    assert [call.service for call in calls if call.caption] == ["caption_score", "caption_score"]
    user, system = user_and_system_cpu(os.getpid())
    assert user > 0 and system >= 0


def test_the_watch_for_a_runs_end_hands_back_its_own_backends_cpu(database: Database,
                                                                   conn: psycopg.Connection) -> None:
    """Counting the answers five times a second is the benchmark's work, not the pipeline's: the watch returns its
    backend's CPU, which a run leaves out of PostgreSQL's figure."""
    if postgres_processes(conn).root is None:
        pytest.skip("the test server does not run on this machine")
    image_id = conn.execute("INSERT INTO images (image_filename, image_path, image_group) VALUES ('a.jpg', '/a.jpg', "
                            "%s) RETURNING image_id", (BENCH_GROUP,)).fetchone()[0]
    conn.execute("SET session_replication_role = replica")  # no follow-up jobs: the pipeline is idle once answered
    conn.execute("INSERT INTO results (image_id, service, task_id, data, status) SELECT %s, 'blip', "
                 "gen_random_uuid(), '{}', 'success' FROM generate_series(1, 100000)", (image_id,))
    seen: list[float] = []

    def last_answer() -> None:
        time.sleep(1.5)  # meanwhile the watch counts the 100,000 answers again every 0.2 s
        watcher = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                               "AND pid <> pg_backend_pid() AND query LIKE '%%count(*) >=%%' "
                               "ORDER BY backend_start DESC LIMIT 1").fetchone()[0]
        seen.append(process_cpu(watcher))
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status) "
                     "VALUES (%s, 'blip', gen_random_uuid(), '{}', 'success')", (image_id,))

    answering = threading.Thread(target=last_answer)
    answering.start()
    watching = wait_until_idle(database, [], 100_001)
    answering.join()
    # What the watching backend had spent before the last answer, and at most one more count and a few cheap polls.
    assert seen[0] > 0.02
    assert seen[0] <= watching <= seen[0] + 0.1
