"""Concurrency proof: 8 merger and 8 consensus processes race over the same 50 images, every job queued several
times, and still leave exactly one box set and one consensus row per image — each equal to what a single worker
recomputes from the same rows. Order and duplicates of jobs cannot change the outcome (DESIGN rule 2)."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from tests.conftest import PYTHON, wait_until
from tests.farm_fixtures import running_farm
from tests.test_pipeline import SETTINGS, stored_boxes
from windmill.bench.stage import copy_samples
from windmill.broker import Task
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.db.queries import query
from windmill.farm import FarmClient
from windmill.harmony import DetectorResult, harmonize
from windmill.image_cache import ImageSource
from windmill.roles.consensus import consensus_for_image
from windmill.roles.merger import crop_key
from windmill.roles.service import ServiceTaskHandler
from windmill.worker.group import pipeline_idle

IMAGES = 50
PROCESSES_PER_ROLE = 8
COPIES = 4  # each merge and consensus job, queued this many times over, without dedupe keys


def answer_every_image(conn: psycopg.Connection, pool: ConnectionPool, catalog: Catalog) -> None:
    """Every primary service's answer for every image. The stand-in answers each distinct photograph once, through
    the service handler; the other copies of that photograph get the same answer as rows of their own."""
    images = conn.execute("SELECT image_id, image_filename, image_path, image_url FROM images ORDER BY image_id")
    by_photo: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for image_id, filename, path, url in images:
        by_photo[filename.split("_", 1)[1]].append(
            {"image_id": image_id, "image_filename": filename, "image_path": path, "image_url": url})
    with running_farm(catalog) as (_, shifted), FarmClient(shifted) as client:
        handler = ServiceTaskHandler(pool, client, ImageSource(SETTINGS), shifted, "proof")
        for copies in by_photo.values():
            for service in shifted.select("primary"):
                handler.handle(Task.for_image(copies[0], service), final_attempt=True)
    conn.execute("""
        INSERT INTO results (image_id, service, task_id, data, status, error_message, processing_time, worker_id)
        SELECT copy.image_id, r.service, gen_random_uuid(), r.data, r.status, r.error_message, r.processing_time,
               'proof'
          FROM results r
          JOIN images first ON first.image_id = r.image_id
          JOIN images copy ON split_part(copy.image_filename, '_', 2) = split_part(first.image_filename, '_', 2)
                          AND copy.image_id <> first.image_id""")


def start_workers(role: str, env: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    # One job per claim and one thread per process: the duplicates of one image are taken by different processes
    # at the same moment, which is the race this test is about.
    return [subprocess.Popen([PYTHON, "-m", "windmill", "worker", "--role", role, "--concurrency", "1",
                              "--batch-size", "1"], env={**env, "WORKER_ID": f"proof-{role}-{n}"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n in range(PROCESSES_PER_ROLE)]


def queue_duplicated_jobs(conn: psycopg.Connection) -> None:
    """Every merge and consensus job COPIES times, the copies of one image next to each other (claimed together)."""
    conn.execute("DELETE FROM jobs")
    conn.execute("""
        INSERT INTO jobs (queue, image_id, payload)
        SELECT queue, image_id, jsonb_build_object('image_id', image_id)
          FROM images, generate_series(1, %s) AS copy, (VALUES ('merge'), ('consensus')) AS q(queue)
         ORDER BY image_id, queue DESC, copy""", (COPIES,))


def plain(value: Any) -> Any:
    return json.loads(json.dumps(value))


def test_racing_mergers_and_voters_leave_one_box_set_and_one_consensus_per_image(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog,
        worker_env: dict[str, str], tmp_path: Path) -> None:
    copy_samples(tmp_path, IMAGES)
    add_paths(conn, [tmp_path])
    answer_every_image(conn, pool, catalog)
    conn.execute("DELETE FROM jobs")  # the triggers' own jobs: the race starts from the duplicated ones below
    processes = start_workers("merger", worker_env) + start_workers("consensus", worker_env)
    try:
        wait_until(lambda: conn.execute("SELECT count(*) FROM workers WHERE worker_id LIKE 'proof-%%'").fetchone()[0]
                   == 2 * PROCESSES_PER_ROLE, timeout=60, interval=0.2, message="all 16 workers to start")
        queue_duplicated_jobs(conn)
        wait_until(lambda: pipeline_idle(pool, ["merge", "consensus"]), timeout=60, interval=0.2,
                   message="every merge and consensus job")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)

    service_types = {service.name: service.service_type for service in catalog.services}
    images = [row[0] for row in conn.execute("SELECT image_id FROM images ORDER BY image_id")]
    assert len(images) == IMAGES
    for image_id in images:
        # One box set: unique crop keys, equal (box by box, data included) to a single harmonize of the final rows.
        keys = [row[0] for row in conn.execute("SELECT crop_key FROM merged_boxes WHERE image_id = %s", (image_id,))]
        assert len(keys) == len(set(keys)), f"image {image_id}: a box stored twice"
        rows = conn.execute(query("latest_detector_results"), {"image_id": image_id}).fetchall()
        recomputed = {crop_key(box): plain(box.to_merged_data())
                      for box in harmonize([DetectorResult(*row) for row in rows], SETTINGS.harmony)}
        stored = dict(conn.execute("SELECT crop_key, merged_data FROM merged_boxes WHERE image_id = %s",
                                   (image_id,)).fetchall())
        assert set(stored_boxes(conn, image_id)) == set(recomputed)
        assert stored == recomputed, f"image {image_id}: boxes differ from a single recompute"
        # One consensus row, equal to a single recompute over the same rows (and so over the final boxes).
        consensus = conn.execute("SELECT consensus_data FROM consensus WHERE image_id = %s", (image_id,)).fetchall()
        assert len(consensus) == 1, f"image {image_id}: {len(consensus)} consensus rows"
        assert consensus[0][0] == plain(consensus_for_image(conn, image_id, service_types))
    assert conn.execute("SELECT count(*) FROM merged_boxes").fetchone()[0] > IMAGES  # the photographs hold objects
    # The race was real: many processes of each role did part of the work.
    busy = dict(conn.execute("""SELECT role, count(*) FILTER (WHERE jobs_done > 0) FROM workers
                                 WHERE worker_id LIKE 'proof-%%' GROUP BY role""").fetchall())
    assert busy["merger"] >= 4 and busy["consensus"] >= 4, busy
    assert conn.execute("SELECT count(*) FROM jobs WHERE state <> 'done' AND queue IN ('merge', 'consensus')"
                        ).fetchone()[0] == 0
