"""Image URLs that fail for a passing reason (HTTP 5xx, 429, 408, a timeout, a refused or broken connection) are
retried with backoff and a bounded count, then recorded as an error row with the reason; permanent failures stay
one error row at once. The single-flight image cache keeps no passing failure. A local HTTP server fails N times,
then serves."""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from tests.test_images import _ImageHandler
from tests.test_service_rabbitmq import results_count, start_worker
from tests.test_service_role import SAMPLES, run_service_worker, unfinished
from windmill.broker import JobTableBroker
from windmill.broker.rabbitmq import RabbitMQBroker
from windmill.catalog import Catalog
from windmill.collection import add_urls
from windmill.db.connect import Database
from windmill.image_cache import ImageSource, SingleFlightCache
from windmill.images import BadImage, ImageUnavailable, load_image_bytes
from windmill.images.load import public_addresses
from windmill.jobs import JobQueue
from windmill.producer import submit
from windmill.settings import settings_from_mapping

JPEG = (SAMPLES / "chelsea.jpg").read_bytes()
SETTINGS = settings_from_mapping({"WINDMILL_ALLOW_PRIVATE_URLS": "true", "WORKER_ID": "download-test"})


class _FlakyHandler(_ImageHandler):
    """`/fail/<n>/<status>/<name>`: the first n requests of that path answer <status>, later ones the JPEG;
    `/cut/<n>/<name>`: the first n send half the body and close; `/silent`: no answer; anything else: 404."""

    hits: Counter[str]
    lock: threading.Lock
    release: threading.Event

    def do_GET(self) -> None:
        with self.lock:
            self.hits[self.path] += 1
            hit = self.hits[self.path]
        parts = self.path.strip("/").split("/")
        if parts[0] == "fail" and hit <= int(parts[1]):
            self._send(int(parts[2]), b"try again later", "text/plain")
        elif parts[0] == "cut" and hit <= int(parts[1]):
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(JPEG)))
            self.end_headers()
            self.wfile.write(JPEG[: len(JPEG) // 2])
            self.close_connection = True
        elif parts[0] in ("fail", "cut"):
            self._send(200, JPEG, "image/jpeg")
        elif parts[0] == "silent":
            self.release.wait(10)
        elif parts[0] == "slow-head":  # a byte of the head at a time, each within the read timeout (slow loris)
            with contextlib.suppress(OSError):
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"x" * 100:
                    if self.release.wait(0.1):
                        break
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
            self.close_connection = True
        else:
            self._send(404, b"not found", "text/plain")


class FlakyServer:
    def __init__(self) -> None:
        handler = type("Handler", (_FlakyHandler,), {"hits": Counter(), "lock": threading.Lock(),
                                                     "release": threading.Event()})
        self.handler = handler
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def hits(self, path: str) -> int:
        with self.handler.lock:
            return self.handler.hits[path]


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    server = FlakyServer()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.handler.release.set()
        server.server.shutdown()
        server.server.server_close()
        thread.join(5)


def a_closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- the loader's verdict ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "reason"), [
    ("/fail/1/500/a.jpg", "answered HTTP 500"),
    ("/fail/1/503/a.jpg", "answered HTTP 503"),
    ("/fail/1/429/a.jpg", "answered HTTP 429"),
    ("/fail/1/408/a.jpg", "answered HTTP 408"),
    ("/cut/1/a.jpg", "cannot download image URL"),
    ("/silent", "did not answer within 0.5 s"),
    # It held the thread for good: each byte came within the wait httpx bounds.
    ("/slow-head", "did not answer within 0.5 s"),
])
def test_passing_download_failures_are_image_unavailable_and_the_next_try_succeeds(
        flaky: FlakyServer, path: str, reason: str) -> None:
    started = time.monotonic()
    with pytest.raises(ImageUnavailable, match=reason):
        load_image_bytes(None, flaky.url + path, allow_private_urls=True, timeout=0.5)
    assert time.monotonic() - started < 3
    if path not in ("/silent", "/slow-head"):
        assert load_image_bytes(None, flaky.url + path, allow_private_urls=True, timeout=2) == JPEG


def test_a_refused_connection_is_image_unavailable() -> None:
    with pytest.raises(ImageUnavailable, match="cannot download image URL"):
        load_image_bytes(None, f"http://127.0.0.1:{a_closed_port()}/a.jpg", allow_private_urls=True, timeout=2)


@pytest.mark.parametrize("allow_private_urls", [False, True])
@pytest.mark.parametrize(("dns_error", "verdict"),
                         [(socket.EAI_NONAME, BadImage), (socket.EAI_AGAIN, ImageUnavailable)])
def test_a_host_name_that_does_not_exist_is_a_bad_image_and_a_silent_dns_server_a_passing_failure(
        monkeypatch: pytest.MonkeyPatch, allow_private_urls: bool, dns_error: int, verdict: type[Exception]) -> None:
    # The verdict is the name's, not the setting's: with private URLs allowed, a name that did not exist was retried.
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: object, *arguments: object, **options: object) -> object:
        if host == "images.example.invalid":
            raise socket.gaierror(dns_error, "the name does not resolve")
        return real_getaddrinfo(host, *arguments, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(verdict) as failed:
        load_image_bytes(None, "http://images.example.invalid/a.jpg", allow_private_urls=allow_private_urls, timeout=2)
    assert type(failed.value) is verdict and "cannot resolve image URL host images.example.invalid" in str(failed.value)


@pytest.mark.parametrize("path", ["/nope.jpg", "/fail/1/403/a.jpg", "/fail/1/410/a.jpg"])
def test_a_url_answering_4xx_stays_a_bad_image(flaky: FlakyServer, path: str) -> None:
    with pytest.raises(BadImage, match="answered HTTP 4"):
        load_image_bytes(None, flaky.url + path, allow_private_urls=True, timeout=2)


# -- the single-flight cache -------------------------------------------------------------------------------------


def test_the_image_cache_keeps_a_bad_image_but_downloads_again_after_a_passing_failure(flaky: FlakyServer) -> None:
    images = ImageSource(SETTINGS)
    with pytest.raises(ImageUnavailable):
        images.prepared(1, None, flaky.url + "/fail/1/503/a.jpg")
    assert images.prepared(1, None, flaky.url + "/fail/1/503/a.jpg").data  # the image's next service: a new try
    assert flaky.hits("/fail/1/503/a.jpg") == 2
    for _ in range(2):
        with pytest.raises(BadImage):
            images.prepared(2, None, flaky.url + "/nope.jpg")
    assert flaky.hits("/nope.jpg") == 1, "a bad image stays bad: downloaded once"


def test_callers_waiting_on_a_load_that_failed_for_a_passing_reason_try_again_themselves() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(4)
    loading, fail_now = threading.Event(), threading.Event()
    loads: list[int] = []

    def load() -> str:
        loads.append(1)
        if len(loads) == 1:
            loading.set()
            fail_now.wait(10)
            raise ImageUnavailable("image URL answered HTTP 503 Service Unavailable")
        return "pixels"

    outcomes: dict[str, object] = {}

    def first() -> None:
        try:
            outcomes["first"] = cache.get("image", load)
        except ImageUnavailable as error:
            outcomes["first"] = error

    owner = threading.Thread(target=first)
    owner.start()
    assert loading.wait(10)
    waiter = threading.Thread(target=lambda: outcomes.setdefault("waiter", cache.get("image", load)))
    waiter.start()
    wait_until(lambda: cache.hits == 1, message="the second caller to wait on the load in progress")
    fail_now.set()
    owner.join(10)
    waiter.join(10)
    assert isinstance(outcomes["first"], ImageUnavailable)
    assert outcomes["waiter"] == "pixels"
    assert len(loads) == 2


# -- a task whose image URL fails, end to end ------------------------------------------------------------------------


def add_flaky_images(conn: psycopg.Connection, flaky: FlakyServer) -> dict[str, int]:
    """Three URL images: one failing twice then served, one always answering 503, one 404."""
    urls = {"passing": "/fail/2/503/passing.jpg", "down": "/fail/99/503/down.jpg", "missing": "/missing.jpg"}
    add_urls(conn, [flaky.url + path for path in urls.values()])
    ids = dict(conn.execute("SELECT image_url, image_id FROM images").fetchall())
    return {name: ids[flaky.url + path] for name, path in urls.items()}


def assert_retried_then_recorded(conn: psycopg.Connection, images: dict[str, int], services: list[str]) -> None:
    rows = {(image, service): (status, message) for image, service, status, message in conn.execute(
        "SELECT image_id, service, status, error_message FROM results").fetchall()}
    assert len(rows) == 3 * len(services) == conn.execute("SELECT count(*) FROM results").fetchone()[0]
    for service in services:
        assert rows[images["passing"], service] == ("success", None)
        assert rows[images["down"], service][0] == "error"
        assert "answered HTTP 503" in rows[images["down"], service][1]
        assert rows[images["missing"], service][0] == "error"
        assert "answered HTTP 404" in rows[images["missing"], service][1]


def test_through_the_job_table_a_passing_failure_is_retried_and_a_404_is_recorded_at_once(
        database: Database, pool: ConnectionPool, conn: psycopg.Connection, catalog: Catalog,
        flaky: FlakyServer) -> None:
    images = add_flaky_images(conn, flaky)
    with running_farm(catalog) as (_, shifted):
        with database.connect() as reader:
            submit(reader, conn, JobTableBroker(JobQueue(pool)), shifted.select("nsfw2,metadata"))
        run_service_worker(database, pool, shifted, "nsfw2,metadata", lambda: unfinished(conn), settings=SETTINGS)
    assert_retried_then_recorded(conn, images, ["nsfw2", "metadata"])
    attempts = dict(conn.execute("SELECT image_id, max(attempts) FROM jobs GROUP BY image_id").fetchall())
    assert attempts[images["missing"]] == 1, "a 404 is recorded at once"
    assert attempts[images["down"]] == 5, "an image that stays unavailable is retried to the queue's limit"
    assert 2 <= attempts[images["passing"]] <= 3


def test_through_rabbitmq_a_passing_failure_is_retried_and_a_404_is_recorded_at_once(
        amqp_url: str, database: Database, pool: ConnectionPool, conn: psycopg.Connection,
        private_queues: Catalog, flaky: FlakyServer) -> None:
    images = add_flaky_images(conn, flaky)
    with running_farm(private_queues) as (_, catalog):
        with database.connect() as reader, RabbitMQBroker(amqp_url) as broker:
            published = submit(reader, conn, broker, catalog.select("nsfw2")).published
        worker, thread = start_worker(amqp_url, database, pool, catalog, "nsfw2", settings=SETTINGS, max_attempts=3)
        try:
            wait_until(lambda: results_count(conn) >= published, timeout=60, message="a row per task")
        finally:
            worker.request_stop()
            thread.join(timeout=60)
    assert_retried_then_recorded(conn, images, ["nsfw2"])
    assert flaky.hits("/fail/99/503/down.jpg") == 3, "tried as often as the queue allows, then recorded"
    assert flaky.hits("/missing.jpg") == 1
    assert conn.execute("SELECT count(*) FROM service_tasks_in_flight").fetchone()[0] == 0




def test_an_ipv6_address_is_judged_by_the_ipv4_address_it_embeds() -> None:
    # NAT64 and 6to4 of 8.8.8.8 pass, as a plain public IPv6 address does; NAT64 of 169.254.169.254 is refused and
    # the refusal names the address it leads to.
    for address in ("64:ff9b::808:808", "2002:808:808::1", "2606:4700:4700::1111"):
        assert [str(found) for found in public_addresses(address, 80)] == [address]
    with pytest.raises(BadImage, match=r"resolves to 64:ff9b::a9fe:a9fe \(169\.254\.169\.254\), a link-local "):
        public_addresses("64:ff9b::a9fe:a9fe", 80)
