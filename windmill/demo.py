"""`windmill-cli demo`: the whole pipeline on one machine — the stand-in farm, the bundled photographs, every
role in this process — with live progress, a summary and one PNG per image with its harmonized boxes."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg.rows import dict_row

from windmill.broker import JobTableBroker
from windmill.broker.choice import JOB_TABLE
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.db.queries import query
from windmill.errors import WindmillError
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.progress import Progress, wait_for
from windmill.render import render_image, save_png
from windmill.settings import Settings
from windmill.simfarm import SimFarm
from windmill.simfarm.server import SAMPLES_DIR
from windmill.worker.group import WorkerGroup
from windmill.worker.layout import SINGLE_MACHINE
from windmill.worker.runtime import WorkerOptions

DEMO_GROUP = "demo"


@dataclass
class DemoReport:
    images: int
    tasks: int
    seconds: float
    services: list[dict[str, Any]]
    products: list[dict[str, Any]]
    pictures: list[Path]


def _start_farm(catalog: Catalog) -> tuple[SimFarm, Catalog]:
    """The stand-in on a free range of ports (the real services' ports may be in use)."""
    for _ in range(20):
        offset = random.randrange(20_000, 50_000, 100)
        farm = SimFarm(catalog, port_offset=offset)
        try:
            farm.start()
        except WindmillError:
            continue
        return farm, catalog.with_port_offset(offset)
    raise WindmillError("found no free ports for the stand-in farm")


def run_demo(settings: Settings, database: Database, catalog: Catalog, out_dir: Path, *,
             photos: Path = SAMPLES_DIR, progress: Callable[[str], None] = print,
             timeout_s: float = 300.0) -> DemoReport:
    out_dir.mkdir(parents=True, exist_ok=True)
    farm, shifted = _start_farm(catalog)
    try:
        with database.pool(min_size=2, max_size=24, name="demo") as pool, database.connect() as conn:
            add_paths(conn, [photos], group=DEMO_GROUP)
            with database.connect() as reader:  # every pair again, so each run shows the whole pipeline
                report = submit(reader, conn, JobTableBroker(JobQueue(pool)), shifted.select("primary"),
                                group=DEMO_GROUP, force=True)
            progress(f"submitted {report.published} tasks: {report.images} photographs × 11 services")
            started = time.perf_counter()
            last_line = [""]

            def show_progress(now: Progress) -> None:
                line = f"{time.perf_counter() - started:5.1f}s  answers stored {now.answers}, jobs pending " \
                       f"{now.pending_jobs}"
                if line != last_line[0]:
                    progress(line)
                    last_line[0] = line

            with WorkerGroup(settings, database, pool, shifted, SINGLE_MACHINE, broker=JOB_TABLE,  # as submitted
                             options=WorkerOptions(poll_interval_s=0.2)):
                outcome = wait_for(conn, group=DEMO_GROUP, timeout_s=timeout_s, on_progress=show_progress)
            seconds = time.perf_counter() - started
            services = [vars(row) for row in outcome.services]
            with conn.cursor(row_factory=dict_row) as cursor:
                products = cursor.execute(query("group_image_products"), {"group": DEMO_GROUP}).fetchall()
            pictures = []
            for image in products:
                path = out_dir / f"{Path(image['image_filename']).stem}.png"
                save_png(render_image(conn, settings, image["image_id"], detectors=False), path)
                pictures.append(path)
    finally:
        farm.stop()
    return DemoReport(report.images, report.published, seconds, services, products, pictures)


def format_report(report: DemoReport) -> str:
    lines = [f"Done: {report.images} photographs through 11 services, boxes, postprocessing and consensus in "
             f"{report.seconds:.1f} s ({report.images / max(report.seconds, 1e-9):.1f} images/s).", "",
             "Service       done  failed"]
    lines += [f"{row['service']:<13} {row['done']:>4}  {row['failed']:>6}" for row in report.services]
    lines += ["", "Image                boxes  postprocessed  top consensus"]
    lines += [f"{row['image_filename']:<20} {row['boxes']:>5}  {row['postprocessed']:>13}  {row['top_emoji'] or '-'}"
              for row in report.products]
    lines += ["", f"Pictures with harmonized boxes: {report.pictures[0].parent}/" if report.pictures else ""]
    return "\n".join(lines)
