"""`windmill-cli bench export`: peak memory (and time) of `windmill-cli export` in each format over N bench images,
each with three answers, two merged boxes with their colors rows, a caption score and a consensus. Export streams
pages of images, so its memory must not grow with N (target: ≤ 200 MB at 1,000,000 images).

The rows are written straight into the tables (as the pipeline would leave them) without the triggers' jobs, and
removed afterwards with the bench images."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from windmill.bench.stage import BENCH_GROUP, cli_argv, remove_bench_rows, seed_images
from windmill.db.connect import Database
from windmill.export import FORMATS

# One statement per table, each over every bench image (set-based: a million images seed in minutes).
_SEED = (
    """INSERT INTO results (image_id, service, task_id, data, status, processing_time)
       SELECT i.image_id, s.service, gen_random_uuid(), s.data, 'success', 0.05
         FROM images i
        CROSS JOIN (VALUES
          ('yolov8', '{"predictions": [{"label": "person", "emoji": "🧑", "confidence": 0.91,
                       "bbox": {"x": 10, "y": 20, "width": 120, "height": 240}},
                      {"label": "dog", "emoji": "🐕", "confidence": 0.84,
                       "bbox": {"x": 200, "y": 150, "width": 90, "height": 70}}]}'::jsonb),
          ('blip', '{"predictions": [{"text": "a person walking a dog in a park", "emoji": "",
                     "emoji_mappings": [{"word": "person", "emoji": "🧑"}, {"word": "dog", "emoji": "🐕"}]}]}'),
          ('metadata', '{"predictions": [{"dimensions": {"width": 640, "height": 480},
                         "file": {"file_size": 98213, "file_type": "jpeg"}}]}')) AS s (service, data)
        WHERE i.image_group = %(group)s""",
    """INSERT INTO merged_boxes (image_id, source_result_ids, merged_data, crop_key)
       SELECT i.image_id, ARRAY[1], jsonb_build_object(
                'emoji', b.emoji, 'labels', jsonb_build_array(b.label), 'cluster_id', b.emoji || '_1',
                'merged_bbox', b.bbox, 'avg_confidence', 0.87, 'detection_count', 2,
                'contributing_services', '["rtdetr", "yolov8"]'::jsonb,
                'detections', jsonb_build_array(jsonb_build_object('label', b.label, 'service', 'yolov8',
                                                                   'confidence', 0.9, 'bbox', b.bbox))),
              b.emoji || ':' || i.image_id
         FROM images i
        CROSS JOIN (VALUES
          ('🧑', 'person', '{"x": 10, "y": 20, "width": 120, "height": 240}'::jsonb),
          ('🐕', 'dog', '{"x": 200, "y": 150, "width": 90, "height": 70}')) AS b (emoji, label, bbox)
        WHERE i.image_group = %(group)s""",
    """INSERT INTO postprocessing (image_id, merged_box_id, service, data, status)
       SELECT b.image_id, b.merged_id, 'colors', '{"predictions": [{"primary": {"hex": "#433e3a"},
              "palette": {"colors": [{"hex": "#433e3a"}, {"hex": "#8f8f8f"}]}}]}'::jsonb, 'success'
         FROM merged_boxes b JOIN images i USING (image_id)
        WHERE i.image_group = %(group)s""",
    """INSERT INTO postprocessing (image_id, service, data, status)
       SELECT i.image_id, 'caption_score_blip', '{"similarity_score": 0.31, "caption_service": "blip"}', 'success'
         FROM images i WHERE i.image_group = %(group)s""",
    """INSERT INTO consensus (image_id, consensus_data)
       SELECT i.image_id, '{"votes": {"consensus": [{"emoji": "🧑", "votes": 3, "final_score": 8},
                                                    {"emoji": "🐕", "votes": 2, "final_score": 5}]},
                           "services_count": 3}'::jsonb
         FROM images i WHERE i.image_group = %(group)s""",
)


def seed(database: Database, images: int) -> None:
    """N bench images and their rows. Without the triggers when the login may (a superuser, e.g. the embedded
    cluster's); otherwise the jobs they queue for the bench images are deleted afterwards."""
    seed_images(database, images)
    with database.connect() as conn, conn.transaction():
        try:
            with conn.transaction():
                conn.execute("SET LOCAL session_replication_role = replica")
        except psycopg.errors.InsufficientPrivilege:
            pass
        for statement in _SEED:
            conn.execute(statement, {"group": BENCH_GROUP})
        conn.execute("DELETE FROM jobs WHERE image_id IN (SELECT image_id FROM images WHERE image_group = %s)",
                     (BENCH_GROUP,))
        conn.execute("ANALYZE images, results, merged_boxes, postprocessing, consensus")


def export_run(env: dict[str, str], fmt: str, out: Path) -> tuple[float, float]:
    """(seconds, peak MiB) of one `windmill-cli export` process, its own peak (wait4), not its siblings'."""
    started = time.perf_counter()
    process = subprocess.Popen(cli_argv("export", "--format", fmt, "--out", str(out), "--group", BENCH_GROUP),
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"export --format {fmt} exited with status {process.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def run(database: Database, database_url: str, *, images: int, formats: tuple[str, ...] = FORMATS) -> None:
    print(f"seeding {images:,} bench images (3 answers, 2 boxes with colors, a caption score, a consensus each)…",
          flush=True)
    started = time.perf_counter()
    seed(database, images)
    print(f"  seeded in {time.perf_counter() - started:.0f} s", flush=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("WINDMILL_", "DB_", "QUEUE_"))}
    env.update({"WINDMILL_DATABASE_URL": database_url, "LOG_LEVEL": "WARNING",
                "WINDMILL_HOME": os.environ.get("WINDMILL_HOME", tempfile.gettempdir())})
    try:
        with tempfile.TemporaryDirectory(prefix="windmill-bench-export-") as folder:
            for fmt in formats:
                out = Path(folder) / f"export.{fmt}"
                seconds, peak = export_run(env, fmt, out)
                size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else \
                    sum(f.stat().st_size for f in Path(folder).glob("export*") if f.is_file())
                print(f"export --format {fmt}: {images:,} images in {seconds:.0f} s ({images / seconds:,.0f} "
                      f"images/s), {size / 2**20:,.0f} MiB written; peak memory {peak:.0f} MiB (whole process)",
                      flush=True)
                for leftover in Path(folder).iterdir():
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    finally:
        remove_bench_rows(database)
