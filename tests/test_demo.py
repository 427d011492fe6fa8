"""The demo, small and end to end: every service, boxes, postprocessing, consensus, pictures; twice."""

from __future__ import annotations

from pathlib import Path

import psycopg
from PIL import Image

from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.demo import DEMO_GROUP, format_report, run_demo
from windmill.settings import settings_from_mapping
from windmill.simfarm.server import SAMPLES_DIR


def test_the_demo_runs_the_whole_pipeline_and_can_run_again(database: Database, conn: psycopg.Connection,
                                                            catalog: Catalog, tmp_path: Path) -> None:
    settings = settings_from_mapping({"WORKER_ID": "demo-test"})
    photos = sorted(SAMPLES_DIR.glob("*.jpg"))
    for attempt in (1, 2):
        report = run_demo(settings, database, catalog, tmp_path / "out", progress=lambda line: None)
        assert report.images == len(photos) and report.tasks == 11 * len(photos), attempt
        assert all(row["done"] == len(photos) and row["failed"] == 0 for row in report.services)
        assert len(report.services) == 11
        assert sum(row["boxes"] for row in report.products) > len(photos)
        assert sum(1 for row in report.products if row["top_emoji"]) == len(photos)
        summary = format_report(report)
        assert "astronaut.jpg" in summary and "images/s" in summary
    # One picture per photograph, of the photograph's size.
    for photo in photos:
        picture = tmp_path / "out" / f"{photo.stem}.png"
        with Image.open(picture) as drawn, Image.open(photo) as original:
            assert drawn.size == original.size
    # The second run recomputed; the products still hold one box set and one consensus per image.
    images = conn.execute("SELECT count(*) FROM images WHERE image_group = %s", (DEMO_GROUP,)).fetchone()[0]
    assert images == len(photos)
    assert conn.execute("SELECT count(*) FROM consensus").fetchone()[0] == len(photos)
    duplicates = conn.execute("SELECT count(*) FROM (SELECT image_id, crop_key FROM merged_boxes "
                              "GROUP BY 1, 2 HAVING count(*) > 1) AS d").fetchone()[0]
    assert duplicates == 0
