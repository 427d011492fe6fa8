"""Merge latency: from a detector answer's commit to the commit of the image's recomputed boxes, with an idle
merger worker process (NOTIFY wakes it). Each sample inserts one answer and watches for the boxes that read it."""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
import uuid

from psycopg.types.json import Jsonb

from windmill.db.connect import Database
from windmill.db.queries import fetch_value, query

DETECTORS = ("yolov8", "rtdetr", "detectron2", "clip", "xception")
GROUP = "windmill-bench-merge"


def _answer(rng: random.Random, objects: list[tuple[str, str, tuple[int, int, int, int]]]) -> dict:
    predictions = []
    for label, emoji, (x, y, w, h) in objects:
        jitter = [rng.randint(-4, 4) for _ in range(4)]
        predictions.append({"label": label, "emoji": emoji, "confidence": round(rng.uniform(0.5, 0.99), 3),
                            "bbox": {"x": x + jitter[0], "y": y + jitter[1], "width": w + jitter[2],
                                     "height": h + jitter[3]}})
    return {"service": "bench", "status": "success", "predictions": predictions}


def _box(rng: random.Random) -> tuple[int, int, int, int]:
    return rng.randint(0, 1500), rng.randint(0, 1000), rng.randint(40, 300), rng.randint(40, 300)


def run(database: Database, database_url: str, *, images: int = 60, boxes: int = 10, runs: int = 3) -> None:
    env = {**os.environ, "WINDMILL_DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", "WORKER_ID": "bench-merger"}
    merger = subprocess.Popen([sys.executable, "-m", "windmill", "worker", "--role", "merger", "--concurrency", "2"],
                              env=env, stdout=subprocess.DEVNULL)
    rng = random.Random(7)
    medians, p99s = [], []
    try:
        time.sleep(2.0)  # the worker connects and LISTENs
        with database.connect() as conn:
            for run_number in range(runs):
                latencies = []
                for _ in range(images):
                    image = {"filename": "bench.jpg", "path": f"/bench/{uuid.uuid4().hex}.jpg", "group": GROUP}
                    image_id = fetch_value(conn, "bench_add_image", image)
                    objects = [(*(("person", "🧑") if n % 3 == 0 else ("dog", "🐕")), _box(rng)) for n in range(boxes)]
                    for detector in DETECTORS:
                        time.sleep(0.01)  # idle pipeline: one answer at a time
                        result_id = fetch_value(conn, "bench_add_answer", {
                            "image_id": image_id, "service": detector, "task_id": uuid.uuid4(),
                            "data": Jsonb(_answer(rng, objects))})
                        committed = time.perf_counter()
                        merged = {"image_id": image_id, "result_id": result_id}
                        while not fetch_value(conn, "bench_merged_from", merged):
                            if time.perf_counter() - committed > 10:
                                raise RuntimeError("the merger did not recompute within 10 s")
                        latencies.append((time.perf_counter() - committed) * 1000)
                latencies.sort()
                medians.append(statistics.median(latencies))
                p99s.append(latencies[int(len(latencies) * 0.99) - 1])
                print(f"  run {run_number + 1}: {len(latencies)} answers, median {medians[-1]:.1f} ms, "
                      f"p99 {p99s[-1]:.1f} ms, max {latencies[-1]:.1f} ms", flush=True)
    finally:
        merger.terminate()
        merger.wait(timeout=30)
        with database.connect() as conn:
            conn.execute(query("bench_remove_group"), {"group": GROUP})
    print(f"merge latency (answer commit → boxes commit), {boxes} boxes × {len(DETECTORS)} detectors: "
          f"median {min(medians):.1f} / {statistics.median(medians):.1f} / {max(medians):.1f} ms, "
          f"p99 {min(p99s):.1f} / {statistics.median(p99s):.1f} / {max(p99s):.1f} ms (min / median / max of runs)")
