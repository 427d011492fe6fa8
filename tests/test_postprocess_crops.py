"""The postprocess worker cuts an image's boxes from one decode: the first box cut has the image's other boxes
with postprocessing still to come cut with it, for colors, which asks for them long after face and pose."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.farm_fixtures import running_farm
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.db.queries import query
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.jobs import Job, JobQueue
from windmill.roles.merger import merge_image
from windmill.roles.postprocess import PostprocessHandler
from windmill.roles.registry import RoleContext
from windmill.settings import settings_from_mapping

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
SETTINGS = settings_from_mapping({"WORKER_ID": "crops-test"})
PERSON = {"x": 100, "y": 40, "width": 150, "height": 300}
CAT = {"x": 300, "y": 200, "width": 120, "height": 90}


def boxes_to_crop(conn: psycopg.Connection, image_id: int) -> list[dict[str, int]]:
    return sorted((row[0] for row in conn.execute(query("image_boxes_to_crop"), {"image_id": image_id})),
                  key=lambda bbox: bbox["x"])


def test_a_person_box_cut_for_face_has_the_images_other_boxes_cut_with_it(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog) -> None:
    add_paths(conn, [SAMPLES / "coffee.jpg"])
    image_id = conn.execute("SELECT image_id FROM images").fetchone()[0]
    detections = [{"label": "person", "emoji": "🧑", "confidence": 0.95, "bbox": PERSON},
                  {"label": "cat", "emoji": "🐈", "confidence": 0.9, "bbox": CAT}]
    conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES (%s, 'yolov8', %s, %s, "
                 "'success')", (image_id, uuid.uuid4(), Jsonb({"predictions": detections})))
    with pool.connection() as worker_conn:
        merge_image(worker_conn, image_id, SETTINGS.harmony, "crops-test")
    jobs = {(queue, payload["merged_box_id"]) for queue, payload in conn.execute(
        "SELECT queue, payload FROM jobs WHERE queue LIKE 'postprocess%%'")}
    person_id, cat_id = (conn.execute("SELECT merged_id FROM merged_boxes WHERE merged_data->>'emoji' = %s",
                                      (emoji,)).fetchone()[0] for emoji in ("🧑", "🐈"))
    assert jobs == {("postprocess_colors", person_id), ("postprocess_face", person_id),
                    ("postprocess_pose", person_id), ("postprocess_colors", cat_id)}
    merged_bboxes = boxes_to_crop(conn, image_id)
    assert len(merged_bboxes) == 2, "both boxes have postprocessing to come"

    with running_farm(catalog, services=["colors", "face"]) as (_, shifted), FarmClient(shifted) as farm:
        images = ImageSource(SETTINGS)
        context = RoleContext(settings=SETTINGS, database=database, pool=pool, jobs=JobQueue(pool), catalog=shifted,
                              worker_id="crops-test", farm=farm, images=images)
        handler = PostprocessHandler(context, farm, images)
        assert handler.handle(Job(1, "postprocess_face", {"merged_box_id": person_id}, image_id, 1, 5), "face")
        assert (images.decoded_images.loads, images.crops.loads) == (1, 2), "the cat was cut with the person"
        assert handler.handle(Job(2, "postprocess_colors", {"merged_box_id": cat_id}, image_id, 1, 5), "colors")
        assert (images.decoded_images.loads, images.crops.loads, images.crops.hits) == (1, 2, 1)

    # The cat has all its postprocessing (colors): only the person's boxes are still to be cut.
    assert boxes_to_crop(conn, image_id) == [bbox for bbox in merged_bboxes if bbox["x"] < 200]
