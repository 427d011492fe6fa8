"""`web`: a real Chromium loads every page of the dashboard served over a processed collection and the DOM shows
what SQL holds (progress, queues, failures, workers; gallery filters and pages; an image's boxes, detector layers,
faces, poses, consensus and answers); a screenshot of each page is taken. The dashboard works as the monitor role
and shows no secret; pictures come only from the image roots; retrying dead jobs needs --allow-actions, this
dashboard's own form and a same-origin request; a foreign Host header is refused; the command binds 127.0.0.1."""

from __future__ import annotations

import io
import re
import secrets
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from PIL import Image
from psycopg import sql
from psycopg.types.json import Jsonb

from tests.browser_fixtures import WINDOW
from tests.conftest import PYTHON, REPOSITORY, signal_a_thread_not_main
from tests.results_fixtures import SAMPLE_GROUP, SAMPLES, URL_GROUP, processed_collection
from windmill.catalog import Catalog
from windmill.db.connect import Database
from windmill.errors import WindmillError
from windmill.settings import settings_from_mapping
from windmill.web import running_dashboard
from windmill.web.app import create_app
from windmill.web.data import Dashboard

DEAD_QUEUE = "postprocess_colors"
DEAD_REASON = "colors: HTTP 500 five times"
# The dead job is the last one of its queue (the pipeline's own jobs came before it); a retry clears its error.
DEAD_JOB_STATE = "SELECT state FROM jobs WHERE id = (SELECT max(id) FROM jobs WHERE queue = %s)"
MONITOR_LOGIN = "windmill_web_test_monitor"
SECRET = f"Sec-{secrets.token_hex(6)}"


@pytest.fixture(scope="module")
def collection(database_url: str, catalog: Catalog) -> Iterator[Database]:
    """The processed samples, plus a dead job and a live worker for the overview."""
    with processed_collection(database_url, catalog) as database, database.connect() as conn:
        conn.execute("INSERT INTO jobs (queue, image_id, state, attempts, last_error) "
                     "VALUES (%s, 2, 'dead', 5, %s)", (DEAD_QUEUE, DEAD_REASON))
        conn.execute("INSERT INTO workers (worker_id, role, service, hostname, pid, services_down) "
                     "VALUES ('web-test@host', 'merger', NULL, 'host', 4242, %s)",
                     (Jsonb({"rtdetr": {"seconds": 12.5, "reason": "rtdetr: cannot connect to <host>"}}),))
        yield database


def settings_for(database_url: str, **extra: str) -> Any:
    return settings_from_mapping({"WINDMILL_DATABASE_URL": database_url, "WINDMILL_IMAGE_ROOTS": str(SAMPLES),
                                  "WORKER_ID": "web-test", **extra})


@pytest.fixture(scope="module")
def site(collection: Database, database_url: str, catalog: Catalog) -> Iterator[str]:
    """A read-only dashboard with gallery pages of 3 images; yields its URL."""
    with running_dashboard(settings_for(database_url), catalog, collection, port=0, gallery_page=3) as running:
        yield running.url


@pytest.fixture
def conn(collection: Database) -> Iterator[psycopg.Connection]:
    with collection.connect() as connection:
        yield connection


def page_text_once_loaded(browser: Any, element_id: str, timeout_s: float = 10.0) -> str:
    """The text of an element of the page a click navigates to: the click returns before the new page is there."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def loaded(driver: Any) -> str | bool:
        try:
            return driver.find_element(By.ID, element_id).text or False
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    return WebDriverWait(browser, timeout_s).until(loaded)


def visit(browser: Any, url: str, tmp_path: Path, name: str) -> Any:
    """Load a page, take its screenshot and check it is a picture of the page (not blank); return the driver."""
    browser.get(url)
    assert "Traceback" not in browser.page_source
    shot = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(shot))
    with Image.open(shot) as picture:
        assert picture.width == WINDOW[0] and picture.height > WINDOW[1] // 2
        assert len(picture.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20, "a blank screenshot"
    return browser


def texts(browser: Any, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [element.text for element in browser.find_elements(By.CSS_SELECTOR, selector)]


def loaded(browser: Any, selector: str) -> list[int]:
    """The natural widths of the images matched (0: not loaded)."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(i => i.naturalWidth)", selector)


# -- the pages -------------------------------------------------------------------------------------------------------


def test_overview_shows_progress_queues_failures_and_workers(browser, site: str, conn, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    visit(browser, site + "/", tmp_path, "overview")
    assert browser.find_element(By.CSS_SELECTOR, 'meta[http-equiv="refresh"]').get_attribute("content") == "5"
    for service, done, failed in conn.execute("SELECT service, done, failed FROM service_progress "
                                              "WHERE category NOT IN ('spatial_only', 'postprocessing')"):
        row = browser.find_element(By.ID, f"service-{service}")
        assert row.find_element(By.CSS_SELECTOR, "td.done").text == str(done)
        assert row.find_elements(By.TAG_NAME, "td")[4].text == str(failed)
    postprocessing = conn.execute("SELECT service, done, failed FROM postprocessing_progress").fetchall()
    assert {service for service, _done, _failed in postprocessing} >= {"face", "pose", "caption_score"}
    for service, done, failed in postprocessing:
        row = browser.find_element(By.ID, f"postprocessing-{service}")
        assert [cell.text for cell in row.find_elements(By.TAG_NAME, "td")[1:3]] == [str(done), str(failed)]
    images = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    assert browser.find_element(By.ID, "total-images").text == f"images {images}"
    queues = dict(conn.execute("SELECT queue, dead FROM queue_depths"))
    assert {row.get_attribute("id").removeprefix("queue-") for row in
            browser.find_elements(By.CSS_SELECTOR, "#queues tbody tr")} == set(queues)
    assert browser.find_element(By.ID, f"queue-{DEAD_QUEUE}").find_elements(By.TAG_NAME, "td")[6].text == "1"
    reasons = texts(browser, "#failures td.reason")
    assert "blip: the image answered HTTP 404" in reasons and "colors: HTTP 500 five times" in reasons
    assert len(reasons) == conn.execute("SELECT count(*) FROM (SELECT 1 FROM recent_failures LIMIT 10) f").fetchone()[0]
    assert texts(browser, "#workers tr.alive td:first-child") == ["web-test@host"]
    down = browser.find_element(By.ID, "services-down").text  # what the live worker's heartbeat says is down
    assert "rtdetr for " in down and "(1 worker: rtdetr: cannot connect to <host>)" in down, down
    assert browser.find_elements(By.CSS_SELECTOR, "#queues button") == []  # read-only: no action offered


def gallery_ids(browser: Any) -> list[int]:
    from selenium.webdriver.common.by import By

    return [int(figure.get_attribute("id").removeprefix("image-"))
            for figure in browser.find_elements(By.CSS_SELECTOR, "#grid figure")]


def test_gallery_pages_newest_first_with_thumbnails_and_filters(browser, site: str, conn, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    visit(browser, site + "/gallery", tmp_path, "gallery")
    seen = gallery_ids(browser)
    while browser.find_elements(By.ID, "older"):  # keyset pages of 3, following the links
        browser.find_element(By.ID, "older").click()
        seen += gallery_ids(browser)
    assert seen == [row[0] for row in conn.execute("SELECT image_id FROM images ORDER BY image_id DESC")]

    browser.get(f"{site}/gallery?group={SAMPLE_GROUP}")
    assert all(width > 0 for width in loaded(browser, "#grid img")), "every sample's thumbnail loads"
    first = gallery_ids(browser)[0]
    top = conn.execute("SELECT consensus_data #>> '{votes,consensus,0,emoji}' FROM consensus WHERE image_id = %s",
                       (first,)).fetchone()[0]
    assert texts(browser, f"#image-{first} .emoji")[0].startswith(top)
    # An emoji of a thumbnail filters the gallery by it: the images whose consensus holds it.
    browser.find_element(By.CSS_SELECTOR, f"#image-{first} .emoji a").click()
    holding = [row[0] for row in conn.execute(
        "SELECT image_id FROM consensus WHERE consensus_data->'votes'->'consensus' @> jsonb_build_array("
        "jsonb_build_object('emoji', %s::text)) ORDER BY image_id DESC", (top,))]
    assert gallery_ids(browser)[:3] == holding[:3] and first in holding
    # The same emoji typed with (or without) its presentation selector finds the same images (it found none).
    variant = top.replace("\ufe0f", "") if "\ufe0f" in top else top + "\ufe0f"
    browser.get(f"{site}/gallery?emoji={quote(variant)}")
    assert gallery_ids(browser)[:3] == holding[:3]

    browser.get(f"{site}/gallery?status=failed")
    assert gallery_ids(browser) == [row[0] for row in conn.execute(
        "SELECT image_id FROM image_completeness WHERE cardinality(failed) > 0 ORDER BY image_id DESC")]
    assert texts(browser, "#grid .badge") == ["failed"] * len(gallery_ids(browser))
    browser.get(f"{site}/gallery?status=incomplete&group={URL_GROUP}")
    assert gallery_ids(browser) == [row[0] for row in conn.execute(
        "SELECT image_id FROM images WHERE image_group = %s", (URL_GROUP,))]



def test_an_image_page_draws_boxes_faces_poses_and_switches_detector_layers(browser, site: str, conn,
                                                                             tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    image_id = conn.execute("SELECT image_id FROM images WHERE image_filename = 'ascent.jpg'").fetchone()[0]
    visit(browser, f"{site}/images/{image_id}", tmp_path, "image")
    assert httpx.get(f"{site}/images/{image_id}/picture.jpg").headers["content-type"] == "image/jpeg"
    boxes = conn.execute("SELECT count(*) FROM merged_boxes WHERE image_id = %s", (image_id,)).fetchone()[0]
    assert len(browser.find_elements(By.CSS_SELECTOR, ".layer-merged .merged-box")) == boxes > 0
    faces = conn.execute("SELECT coalesce(sum(jsonb_array_length(data->'predictions')), 0) FROM postprocessing "
                         "WHERE image_id = %s AND service = 'face' AND status = 'success'", (image_id,)).fetchone()[0]
    assert len(browser.find_elements(By.CSS_SELECTOR, ".layer-faces rect.face")) == faces > 0
    assert len(browser.find_elements(By.CSS_SELECTOR, ".layer-poses line.bone")) > 0

    layers = browser.find_elements(By.CSS_SELECTOR, "g.layer[data-service]")
    detectors = conn.execute(
        "SELECT DISTINCT r.service FROM results r JOIN services s ON s.name = r.service "
        "WHERE r.image_id = %s AND r.status = 'success' AND s.is_detector ORDER BY 1", (image_id,)).fetchall()
    assert [layer.get_attribute("data-service") for layer in layers] == [row[0] for row in detectors]
    assert not any(layer.is_displayed() for layer in layers)  # detectors' raw boxes: off until switched on
    browser.find_element(By.CSS_SELECTOR, 'label[for="layer-0"]').click()
    assert layers[0].is_displayed() and not layers[1].is_displayed()
    browser.find_element(By.CSS_SELECTOR, 'label[for="layer-merged"]').click()
    assert not browser.find_element(By.CSS_SELECTOR, "g.layer-merged").is_displayed()
    browser.save_screenshot(str(tmp_path / "image-layers.png"))

    consensus = conn.execute("SELECT consensus_data FROM consensus WHERE image_id = %s", (image_id,)).fetchone()[0]
    assert texts(browser, "#consensus td.emoji") == [vote["emoji"] for vote in consensus["votes"]["consensus"]]
    answers = conn.execute("SELECT count(*) FROM results WHERE image_id = %s", (image_id,)).fetchone()[0]
    assert len(browser.find_elements(By.CSS_SELECTOR, "#answers details.answer")) == answers


def test_unknown_images_and_pictures_outside_the_roots_are_refused(collection: Database, database_url: str,
                                                                   catalog: Catalog, site: str, browser,
                                                                   tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    assert httpx.get(f"{site}/images/99999").status_code == 404
    assert httpx.get(f"{site}/images/99999/thumbnail.jpg").status_code == 404
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with running_dashboard(settings_for(database_url, WINDMILL_IMAGE_ROOTS=str(elsewhere)), catalog, collection,
                           port=0) as running:
        picture = httpx.get(f"{running.url}/images/1/picture.jpg")
        assert picture.status_code == 404 and "outside the allowed image roots" in picture.text
        # In the gallery a tile, not a broken picture (the thumbnail was the same 404 text)
        tile = httpx.get(f"{running.url}/images/1/thumbnail.jpg")
        assert (tile.status_code, tile.headers["content-type"]) == (200, "image/jpeg")
        with Image.open(io.BytesIO(tile.content)) as shown:
            assert shown.size == (320, 240)
        visit(browser, f"{running.url}/images/1", tmp_path, "outside")
        assert "outside the allowed image roots" in browser.find_element(By.ID, "picture-problem").text
        assert browser.find_elements(By.CSS_SELECTOR, "#boxes tr.box")  # the record is still shown


def test_a_foreign_host_header_is_refused_and_pages_forbid_scripts(site: str) -> None:
    port = site.rsplit(":", 1)[1]
    assert httpx.get(site + "/", headers={"Host": f"attacker.example:{port}"}).status_code == 421
    response = httpx.get(site + "/", headers={"Host": f"localhost:{port}"})
    assert response.status_code == 200
    assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': no script runs
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert "<script" not in response.text
    assert response.headers["cache-control"] == "no-store"  # live numbers, and with --allow-actions a form token


# -- the action ------------------------------------------------------------------------------------------------------


def test_dead_jobs_are_retried_only_with_allow_actions_and_only_from_the_own_form(
        browser, site: str, collection: Database, database_url: str, catalog: Catalog, conn, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    assert httpx.post(f"{site}/actions/retry", data={"queue": DEAD_QUEUE}).status_code == 403  # read-only
    # Read-only refuses even a request with the right token (the app built with a known one, on a real pool).
    with collection.pool(max_size=1, name="web-test") as pool:
        app = create_app(Dashboard(settings_for(database_url), catalog, pool), csrf_token="known")
        refused = app.test_client().post("/actions/retry", data={"queue": DEAD_QUEUE, "csrf_token": "known"})
        assert refused.status_code == 403
    with running_dashboard(settings_for(database_url), catalog, collection, port=0, allow_actions=True) as running:
        page = httpx.get(running.url + "/").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        for headers, form in (({"Origin": "https://attacker.example"}, {"queue": DEAD_QUEUE, "csrf_token": token}),
                              ({"Sec-Fetch-Site": "cross-site"}, {"queue": DEAD_QUEUE, "csrf_token": token}),
                              ({}, {"queue": DEAD_QUEUE, "csrf_token": "guessed"}),
                              ({}, {"queue": DEAD_QUEUE})):
            assert httpx.post(f"{running.url}/actions/retry", data=form, headers=headers).status_code == 403
        assert conn.execute(DEAD_JOB_STATE, (DEAD_QUEUE,)).fetchone()[0] == "dead"
        # A queue without dead jobs is said to be one, not answered "0 retried" as if it were a queue at rest.
        nothing = httpx.post(f"{running.url}/actions/retry", data={"queue": "mrege", "csrf_token": token},
                             follow_redirects=True)
        assert "that queue has no dead job to retry" in nothing.text
        # A problem is named by a code: words in a link are not shown as the dashboard's own (once they were).
        spoofed = httpx.get(running.url + "/", params={"problem": "Session expired: log in at http://evil.example"})
        assert "evil.example" not in spoofed.text and 'id="problem"' not in spoofed.text

        visit(browser, running.url + "/", tmp_path, "overview-actions")
        browser.find_element(By.ID, f"retry-{DEAD_QUEUE}").click()
        assert page_text_once_loaded(browser, "notice") == f"Queued 1 dead job(s) of {DEAD_QUEUE} again."
    assert conn.execute(DEAD_JOB_STATE, (DEAD_QUEUE,)).fetchone()[0] == "queued"
    conn.execute("UPDATE jobs SET state = 'dead', last_error = %s WHERE id = (SELECT max(id) FROM jobs "
                 "WHERE queue = %s)", (DEAD_REASON, DEAD_QUEUE))  # as the other tests expect


def test_a_retry_notice_comes_only_from_the_retry_not_from_a_link(
        collection: Database, database_url: str, catalog: Catalog, conn) -> None:
    with collection.pool(max_size=1, name="web-test") as pool:
        client = create_app(Dashboard(settings_for(database_url), catalog, pool), allow_actions=True,
                            csrf_token="known").test_client()
        # Words of the link's choosing, once shown (escaped) as "Queued 9999 dead job(s) of everything - …"
        spoofed = client.get("/", query_string={"retried": "9999", "queue": "everything - your database was wiped"})
        assert spoofed.status_code == 200
        assert "wiped" not in spoofed.text and 'id="notice"' not in spoofed.text
        done = client.post("/actions/retry", data={"queue": DEAD_QUEUE, "csrf_token": "known"}, follow_redirects=True)
        assert f"Queued 1 dead job(s) of {DEAD_QUEUE} again." in done.text
        altered = client.get("/", query_string={**done.request.args, "retried": "9999"})
        assert 'id="notice"' not in altered.text  # the signature covers the count and the queue
    conn.execute("UPDATE jobs SET state = 'dead', last_error = %s WHERE id = (SELECT max(id) FROM jobs "
                 "WHERE queue = %s)", (DEAD_REASON, DEAD_QUEUE))  # as the other tests expect


# -- least privilege, secrets, the command -----------------------------------------------------------------------------


@pytest.fixture
def monitor_url(collection: Database, database_url: str) -> Iterator[str]:
    """A login that is a member of windmill_monitor (deploy/roles.sql), with SECRET as its password."""
    parts = psycopg.conninfo.conninfo_to_dict(database_url)
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute((REPOSITORY / "deploy" / "roles.sql").read_text(encoding="utf-8"))
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (MONITOR_LOGIN,)).fetchone()
        admin.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
            sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(MONITOR_LOGIN), sql.Literal(SECRET)))
        admin.execute(sql.SQL("GRANT windmill_monitor TO {}").format(sql.Identifier(MONITOR_LOGIN)))
        yield (f"postgresql://{MONITOR_LOGIN}:{quote(SECRET)}@{parts.get('host', '127.0.0.1')}:"
               f"{parts.get('port', 5432)}/{parts['dbname']}")
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(MONITOR_LOGIN)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(MONITOR_LOGIN)))


def test_every_page_works_as_the_monitor_role_and_shows_no_secret(monitor_url: str, catalog: Catalog, browser,
                                                                  tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    settings = settings_for(monitor_url, WINDMILL_AMQP_URL=f"amqp://windmill:{SECRET}@127.0.0.1:5672/%2F")
    database = Database(monitor_url, application_name="windmill-web-test")
    with database.connect() as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == MONITOR_LOGIN
    with running_dashboard(settings, catalog, database, port=0, allow_actions=True) as running:
        for path in ("/", "/gallery", "/gallery?status=incomplete", "/images/1", "/images/7", "/images/1/picture.jpg",
                     "/images/2/thumbnail.jpg"):
            response = httpx.get(running.url + path)
            assert response.status_code == 200, (path, response.text[:300])
            assert SECRET not in response.text and quote(SECRET) not in response.text, path
        visit(browser, running.url + "/", tmp_path, "overview-monitor")
        assert "RabbitMQ queues" in browser.find_element(By.ID, "rabbitmq").text  # the broker's section, secret-free
        browser.find_element(By.ID, f"retry-{DEAD_QUEUE}").click()  # the monitor role may not: said so, in a sentence
        assert "may not retry jobs" in page_text_once_loaded(browser, "problem")
        assert SECRET not in browser.page_source


def test_the_command_serves_on_127_0_0_1_by_default(worker_env: dict[str, str], collection: Database,
                                                      tmp_path: Path) -> None:
    process = subprocess.Popen([PYTHON, "-m", "windmill", "web", "--port", "0"], env=worker_env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"Windmill dashboard on (http://127\.0\.0\.1:\d+)/ \(read-only\)", line)
        assert found, line
        assert httpx.get(found.group(1) + "/gallery").status_code == 200
    finally:
        signal_a_thread_not_main(process.pid, signal.SIGINT)  # Ctrl-C, taken by a server thread: it still stops
        process.wait(timeout=30)
        process.stdout.close()
    assert process.returncode == 0


def test_thumbnails_are_jpeg_pictures_of_the_image(site: str) -> None:
    response = httpx.get(f"{site}/images/1/thumbnail.jpg")
    with Image.open(io.BytesIO(response.content)) as thumbnail:
        assert thumbnail.format == "JPEG" and max(thumbnail.size) == 320


def test_a_host_name_that_does_not_resolve_is_one_sentence(collection: Database, database_url: str,
                                                           catalog: Catalog) -> None:
    with pytest.raises(WindmillError) as refused, running_dashboard(settings_for(database_url), catalog, collection,
                                                                    host="nosuchhost.invalid", port=0):
        pass
    assert str(refused.value) == ("cannot serve the dashboard on nosuchhost.invalid:0: the host name does not "
                                  "resolve to an address")


def test_pages_answer_at_once_after_the_servers_connections_were_closed(
        collection: Database, database_url: str, catalog: Catalog, conn: psycopg.Connection) -> None:
    # After PostgreSQL closed the dashboard's connections (a restart, a terminated backend), the next pages were
    # 503 "Database unavailable", one per dead connection, until the pool had dropped them all.
    database = Database(database_url, application_name="windmill-web-outage-test")
    with running_dashboard(settings_for(database_url), catalog, database, port=0) as running:
        for _ in range(3):
            assert httpx.get(f"{running.url}/", timeout=30).status_code == 200
        closed = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE application_name = 'windmill-web-outage-test'").fetchone()[0]
        assert closed >= 1
        for _ in range(3):
            assert httpx.get(f"{running.url}/", timeout=30).status_code == 200


def test_a_parameter_postgresql_cannot_take_is_a_400_not_a_server_error(
        collection: Database, database_url: str, catalog: Catalog) -> None:
    # A gallery page past the last bigint, or a group with a NUL byte, reached PostgreSQL and came back as HTTP 500
    # with a traceback in the log.
    with collection.pool(max_size=1, name="web-test") as pool:
        client = create_app(Dashboard(settings_for(database_url), catalog, pool)).test_client()
        for query in ("before=99999999999999999999999", "before=-1", "group=%00", "emoji=a%00b"):
            assert client.get(f"/gallery?{query}").status_code == 400, query
        assert client.get("/images/99999999999999999999999").status_code == 404
        assert client.get("/images/99999999999999999999999/thumbnail.jpg").status_code == 404
        assert client.get("/gallery?before=5").status_code == 200


def test_the_overview_says_when_a_newer_windmill_migrated_the_database_under_it(site: str, conn) -> None:
    """Migrations only add, so an old dashboard still reads; it says that it leaves out what the newer one records."""
    assert 'id="overtaken"' not in httpx.get(site + "/").text
    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')")
    try:
        page = httpx.get(site + "/")
    finally:
        conn.execute("DELETE FROM schema_migrations WHERE version = 9999")
    assert page.status_code == 200
    assert ('<p class="problem" id="overtaken">a newer Windmill migrated this database while this dashboard ran '
            '(migration 9999, which this one does not have); its pages leave out what that version records: upgrade '
            'Windmill here to the version that ran `init-db`.</p>') in page.text, page.text
