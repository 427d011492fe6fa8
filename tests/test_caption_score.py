"""The caption scorer's CPU per call: the image of a caption is sent without decoding its pixels again (a service
answered on it, so the process that sent it decoded them), and what is stored is what it was."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from PIL import ImageFile
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from tests.farm_fixtures import running_farm
from windmill.catalog import Catalog
from windmill.collection import add_paths
from windmill.db.connect import Database
from windmill.farm import FarmClient
from windmill.image_cache import ImageSource
from windmill.jobs import JobQueue
from windmill.roles.caption_score import CaptionScorer
from windmill.roles.registry import RoleContext
from windmill.settings import settings_from_mapping

COFFEE = Path(__file__).resolve().parent.parent / "windmill" / "samples" / "coffee.jpg"
SETTINGS = settings_from_mapping({"WORKER_ID": "caption-score-test"})


@pytest.fixture
def scorer(pool: ConnectionPool, database: Database, catalog: Catalog) -> Iterator[CaptionScorer]:
    with running_farm(catalog) as (_, farm_catalog), FarmClient(farm_catalog) as farm:
        context = RoleContext(settings=SETTINGS, database=database, pool=pool, jobs=JobQueue(pool),
                              catalog=farm_catalog, worker_id="caption-score-test", farm=farm,
                              images=ImageSource(SETTINGS))
        scorer = CaptionScorer(context, farm, context.images)
        yield scorer
        scorer.writes.close()


def test_a_captioned_jpeg_is_scored_without_decoding_its_pixels_again(
        conn: psycopg.Connection, scorer: CaptionScorer, monkeypatch: pytest.MonkeyPatch) -> None:
    add_paths(conn, [COFFEE])
    image = conn.execute("SELECT image_id FROM images").fetchone()[0]
    caption = conn.execute("INSERT INTO results (image_id, service, task_id, data, status) VALUES "
                           "(%s, 'blip', %s, %s, 'success') RETURNING result_id",
                           (image, uuid.uuid4(), Jsonb({"predictions": [{"text": "a cup of coffee"}]}))).fetchone()[0]
    decodes: list[str] = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda picture: decodes.append("decode") or load(picture))

    scored = scorer.score(image, "blip")
    assert decodes == [], "BLIP answered on the image: its pixels were decoded when it was sent to BLIP"
    assert scored is not None and scored.status == "success"
    assert scorer.store(scored) == "success"
    stored = conn.execute("SELECT source_result_id, data FROM postprocessing WHERE image_id = %s "
                          "AND service = 'caption_score_blip'", (image,)).fetchone()
    assert stored[0] == caption and stored[1]["caption"] == "a cup of coffee"
    assert isinstance(stored[1]["similarity_score"], float)
    assert scorer.images.prepared(image, str(COFFEE), None, decoded_before=True).data == COFFEE.read_bytes()
