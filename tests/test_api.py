"""The Python API (windmill.Windmill): the README's example runs as written; paging, typed records and waiting."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPOSITORY
from tests.farm_fixtures import running_farm
from windmill import Windmill
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.errors import WindmillError
from windmill.record import image_record
from windmill.settings import settings_from_mapping
from windmill.simfarm.server import SAMPLES_DIR


def readme_example() -> str:
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def api_settings(database: Database, database_url: str):
    return settings_from_mapping({"WINDMILL_DATABASE_URL": database_url, "WORKER_ID": "api-test"})


def add_rows(conn: psycopg.Connection, groups: list[str]) -> list[int]:
    return [conn.execute("INSERT INTO images (image_filename, image_path, image_group) VALUES (%s, %s, %s) "
                         "RETURNING image_id", (f"{n}.jpg", f"/x/{n}.jpg", group)).fetchone()[0]
            for n, group in enumerate(groups)]


def test_the_readme_example_runs_the_pipeline(database: Database, database_url: str, catalog: Catalog,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    photos = sorted(SAMPLES_DIR.glob("*.jpg"))[:2]
    (tmp_path / "photos").mkdir()
    for photo in photos:
        shutil.copy(photo, tmp_path / "photos")
    monkeypatch.chdir(tmp_path)
    for name in ("WINDMILL_AMQP_URL", "QUEUE_HOST", "WINDMILL_ENV_FILE", "DB_HOST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WINDMILL_DATABASE_URL", database_url)
    monkeypatch.setenv("WINDMILL_HOME", str(tmp_path / "home"))
    with running_farm(catalog) as (_, shifted):
        monkeypatch.setenv("WINDMILL_PORT_OFFSET", str(shifted["blip"].port - catalog["blip"].port))
        exec(compile(readme_example(), "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{len(photos)} images, {11 * len(photos)} answers, 0 jobs pending"
    for photo, line in zip(photos, lines[1:], strict=True):
        assert line.startswith(f"{photo.name}: 11 services answered; boxes "), line
        assert not line.endswith("consensus -"), line  # every photograph got its vote


def test_iter_images_pages_through_one_group_in_id_order(api_settings, conn: psycopg.Connection) -> None:
    ids = add_rows(conn, ["a", "b", "a", "a", "b", "a", "a"])
    wanted = [image_id for image_id, group in zip(ids, "abaabaa", strict=True) if group == "a"]
    with Windmill(api_settings) as windmill:
        assert [image.image_id for image in windmill.iter_images(group="a", page_size=2)] == wanted
        assert [image.image_id for image in windmill.iter_images(page_size=3, after_id=ids[1])] == ids[2:]


def test_the_typed_record_is_the_record_show_prints(api_settings, conn: psycopg.Connection) -> None:
    [image_id] = add_rows(conn, ["g"])
    for status, error in (("error", "HTTP 500"), ("success", None)):  # the success is the later answer
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status, error_message) "
                     "VALUES (%s, 'blip', gen_random_uuid(), '{}', %s, %s)", (image_id, status, error))
    with Windmill(api_settings) as windmill:
        record = windmill.image(image_id)
        with pytest.raises(WindmillError, match="no image with id 999"):
            windmill.image(999)
    assert record.as_dict() == image_record(conn, image_id) | {"extraction_info": record.as_dict()["extraction_info"]}
    assert record.image.image_filename == "0.jpg" and record.image.image_created.tzinfo is not None
    assert [answer.status for answer in record.answers["blip"]] == ["success", "error"]
    assert record.latest("blip").status == "success" and record.latest("clip") is None
    assert record.merge is None and record.consensus is None


def test_wait_counts_answers_of_the_named_services_not_only_jobs(api_settings, conn: psycopg.Connection) -> None:
    """Tasks in RabbitMQ are not in the job table: with no job pending, wait still waits for their answers."""
    [image_id] = add_rows(conn, ["g"])
    with Windmill(api_settings) as windmill:
        assert windmill.wait(group="g").pending_jobs == 0  # no services named: nothing to wait for
        with pytest.raises(WindmillError, match="did not finish within"):
            windmill.wait(group="g", services=["blip"], timeout_s=0.3, poll_interval_s=0.05)
        conn.execute("INSERT INTO results (image_id, service, task_id, data, status, error_message) "
                     "VALUES (%s, 'blip', gen_random_uuid(), '{}', 'timeout', 'no answer within 30 s')", (image_id,))
        # A voter's final row queues the image's vote (sql/0104); no consensus worker runs here: it is done.
        conn.execute("UPDATE jobs SET state = 'done' WHERE queue = 'consensus'")
        done = windmill.wait(group="g", services=["blip"], timeout_s=30, poll_interval_s=0.05)
    assert [(row.service, row.done, row.failed) for row in done.services] == [("blip", 0, 1)]


def test_a_closed_windmill_says_how_to_open_it(api_settings) -> None:
    with pytest.raises(WindmillError, match="use it in a `with` block"):
        Windmill(api_settings).count_images()
