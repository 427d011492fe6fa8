"""The whole pipeline as a benchmark: N images through every primary service, merge, postprocessing, consensus
and caption scoring, each role in its own worker process, against the stand-in farm at zero latency. Prints
images/s, worker CPU-seconds per image, answer → merged-boxes latency, wasted postprocessing calls, and the
orphaned or stale rows left at the end (there should be none).

To time merges it adds, for the run only, a table and a trigger that note when each recompute of an image's
boxes committed and which answers it read; both are dropped at the end.
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from windmill.bench.stage import BENCH_GROUP, bench_environment, cli_argv, copy_samples, remove_bench_rows
from windmill.catalog import Catalog
from windmill.db.connect import Database

ROLES = (
    ("service", "primary", 8),
    ("service", "primary", 8),
    ("merger", None, 2),
    ("postprocess", "colors,face,pose", 4),
    ("consensus", None, 2),
    ("caption_score", None, 2),
)
_MERGE_EVENTS = """
CREATE TABLE IF NOT EXISTS bench_merge_events (
    image_id bigint, result_ids bigint[], committed_at timestamptz DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION bench_note_merge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_merge_events (image_id, result_ids) VALUES (NEW.image_id, NEW.source_result_ids);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_note_merge AFTER INSERT OR UPDATE ON merged_images
    FOR EACH ROW EXECUTE FUNCTION bench_note_merge();
CREATE TABLE IF NOT EXISTS bench_postprocessing_events (op text, per_box boolean);
CREATE OR REPLACE FUNCTION bench_note_postprocessing() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO bench_postprocessing_events VALUES ('delete', OLD.merged_box_id IS NOT NULL);
    ELSE
        INSERT INTO bench_postprocessing_events VALUES ('insert', NEW.merged_box_id IS NOT NULL);
    END IF;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER bench_note_postprocessing AFTER INSERT OR DELETE ON postprocessing
    FOR EACH ROW EXECUTE FUNCTION bench_note_postprocessing();
"""
_DROP_MERGE_EVENTS = """
DROP TRIGGER IF EXISTS bench_note_merge ON merged_images;
DROP FUNCTION IF EXISTS bench_note_merge();
DROP TABLE IF EXISTS bench_merge_events;
DROP TRIGGER IF EXISTS bench_note_postprocessing ON postprocessing;
DROP FUNCTION IF EXISTS bench_note_postprocessing();
DROP TABLE IF EXISTS bench_postprocessing_events;
"""
# Calls whose answers went nowhere: per-box rows deleted with their replaced box, plus answers that found their
# box gone when they arrived (their insert failed, but it used an id).
_WASTE = """
SELECT count(*) FILTER (WHERE op = 'insert' AND per_box) AS stored,
       count(*) FILTER (WHERE op = 'delete' AND per_box) AS replaced,
       count(*) FILTER (WHERE op = 'insert') AS inserted
  FROM bench_postprocessing_events
"""
_LATENCIES = """
SELECT extract(epoch FROM min(e.committed_at) - r.result_created) * 1000
  FROM results r
  JOIN images i USING (image_id)
  JOIN services s ON s.name = r.service AND s.is_detector
  JOIN bench_merge_events e ON e.image_id = r.image_id AND r.result_id = ANY(e.result_ids)
 WHERE i.image_group = %s AND r.status = 'success'
 GROUP BY r.result_id, r.result_created
"""
# Every insert into postprocessing takes an id, whether it is stored or fails (its box was gone).
_IDS_USED = ("SELECT coalesce(pg_sequence_last_value(pg_get_serial_sequence('postprocessing', 'postprocessing_id')),"
             " 0)")
_END_STATE = """
SELECT
  (SELECT count(*) FROM postprocessing p JOIN images i USING (image_id)
    WHERE i.image_group = %(group)s AND p.merged_box_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM merged_boxes mb WHERE mb.merged_id = p.merged_box_id)) AS orphan_postprocessing,
  (SELECT count(*) FROM image_completeness WHERE image_group = %(group)s AND NOT consensus) AS missing_consensus,
  (SELECT count(*) FROM image_completeness c
    WHERE c.image_group = %(group)s AND c.consensus
      AND c.consensus_at < greatest(
            (SELECT max(r.result_created) FROM results r JOIN services s ON s.name = r.service
              WHERE r.image_id = c.image_id AND r.status = 'success' AND s.consensus_enabled),
            (SELECT changed_at FROM merged_images m WHERE m.image_id = c.image_id),
            (SELECT max(p.result_created) FROM postprocessing p
              WHERE p.image_id = c.image_id AND p.service IN ('face', 'pose')))) AS stale_consensus,
  (SELECT count(*) FROM merged_images m JOIN images i USING (image_id)
    WHERE i.image_group = %(group)s AND m.merged_at < (
          SELECT max(r.result_created) FROM results r JOIN services s ON s.name = r.service
           WHERE r.image_id = m.image_id AND r.status = 'success' AND s.is_detector)) AS stale_boxes,
  (SELECT count(*) FROM jobs j JOIN images i USING (image_id)
    WHERE i.image_group = %(group)s AND j.state IN ('running', 'dead')) AS stuck_jobs,
  (SELECT count(*) FROM postprocessing p JOIN images i USING (image_id)
    WHERE i.image_group = %(group)s AND p.merged_box_id IS NOT NULL) AS postprocessing_rows
"""


def run(database: Database, database_url: str, catalog: Catalog, *, images: int, amqp_url: str | None) -> None:
    offset = 21_000 + os.getpid() % 1000 * 10
    farm = subprocess.Popen(cli_argv("farm", "serve", "--port-offset", str(offset)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with database.connect() as conn:
        conn.execute(_MERGE_EVENTS)
        first_postprocessing_id = conn.execute(_IDS_USED).fetchone()[0]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="windmill-bench-images-") as folder, \
                bench_environment(catalog, database_url, None, port_offset=offset) as bench:
            copy_samples(Path(folder), images)
            remove_bench_rows(database)
            subprocess.run(cli_argv("images", "add", folder, "--group", BENCH_GROUP), env=bench.env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cpu_before = _children_cpu()
            for n, (role, service, concurrency) in enumerate(ROLES):
                args = ["worker", "--role", role, "--concurrency", str(concurrency), "--broker", "postgres"]
                if service:
                    args += ["--service", service]
                processes.append(subprocess.Popen(cli_argv(*args), env={**bench.env, "WORKER_ID": f"bench-{role}-{n}"},
                                                  stdout=subprocess.DEVNULL))
            time.sleep(2.0)  # the stand-in binds its ports, workers connect
            started = time.perf_counter()
            subprocess.run(cli_argv("submit", "--group", BENCH_GROUP, "--services", "primary", "--broker", "postgres"),
                           env=bench.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _wait_until_idle(database, processes)
            elapsed = time.perf_counter() - started
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(timeout=60)
            cpu = (_children_cpu() - cpu_before) / images
            with database.connect() as conn:
                latencies = sorted(row[0] for row in conn.execute(_LATENCIES, (BENCH_GROUP,)))
                end = dict(zip(("orphan_postprocessing", "missing_consensus", "stale_consensus", "stale_boxes",
                                "stuck_jobs", "postprocessing_rows"),
                               conn.execute(_END_STATE, {"group": BENCH_GROUP}).fetchone(), strict=True))
                allocated = conn.execute(_IDS_USED).fetchone()[0] - first_postprocessing_id
                stored, replaced, inserted = conn.execute(_WASTE).fetchone()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
        farm.terminate()
        farm.wait(timeout=30)
        with database.connect() as conn:
            conn.execute(_DROP_MERGE_EVENTS)
        remove_bench_rows(database)
    dropped = max(0, allocated - inserted)
    wasted = replaced + dropped
    calls = stored + dropped
    print(f"pipeline: {images} images, every primary service + merge + postprocessing + consensus + caption scoring, "
          f"{len(ROLES)} worker processes")
    print(f"  throughput           {images / elapsed:.1f} images/s ({elapsed:.1f} s)")
    print(f"  worker CPU           {cpu:.3f} CPU-s per image (all worker processes)")
    if latencies:
        print(f"  answer → boxes       p50 {_pct(latencies, 50):.0f} ms, p90 {_pct(latencies, 90):.0f} ms, "
              f"p99 {_pct(latencies, 99):.0f} ms, max {latencies[-1]:.0f} ms ({len(latencies)} detector answers)")
    print(f"  wasted postprocessing {wasted} of {calls} box answers ({100 * wasted / max(calls, 1):.1f} %): "
          f"{replaced} deleted with a replaced box, {dropped} for a box already gone")
    print(f"  at the end           orphaned postprocessing {end['orphan_postprocessing']}, stale consensus "
          f"{end['stale_consensus']}, missing consensus {end['missing_consensus']}, stale boxes "
          f"{end['stale_boxes']}, running/dead jobs {end['stuck_jobs']}")


def _wait_until_idle(database: Database, processes: list[subprocess.Popen[bytes]]) -> None:
    pending = ("SELECT EXISTS (SELECT 1 FROM jobs j JOIN images i USING (image_id) WHERE i.image_group = %s "
               "AND j.state IN ('queued', 'running', 'failed'))")
    quiet_since = None
    with database.connect() as conn:
        while True:
            if any(process.poll() is not None for process in processes):
                raise RuntimeError("a worker process died during the benchmark")
            if conn.execute(pending, (BENCH_GROUP,)).fetchone()[0]:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.perf_counter()
            elif time.perf_counter() - quiet_since > 0.5:  # nothing pending for a while: the last job's effects
                return                                     # (new jobs) would have shown by now
            time.sleep(0.05)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _pct(values: list[float], percent: int) -> float:
    return values[min(len(values) - 1, max(0, round(len(values) * percent / 100) - 1))]
