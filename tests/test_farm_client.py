"""The Animal Farm client over real HTTP on loopback: request shapes, pooling, and failure classification."""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import http.client
import http.server
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

import windmill
from tests.conftest import wait_until
from tests.farm_fixtures import running_farm
from windmill.catalog import Catalog, Service, load_catalog
from windmill.db.jsonb import dumps as jsonb_text
from windmill.farm import FarmClient, ServiceCallError, check_services, format_health_table
from windmill.images import BadImage, PreparedImage, prepare_image, prepared_jpeg

CATALOG = load_catalog()


def jpeg(width: int = 80, height: int = 60) -> PreparedImage:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (30, 120, 200)).save(buffer, "JPEG")
    return prepare_image(buffer.getvalue())


IMAGE = jpeg()
SAMPLE_FILE = Path(windmill.__file__).parent / "samples" / "chelsea.jpg"
FLASK_500 = (
    b"<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>\n"
    b"<p>The server encountered an internal error and was unable to complete your request.</p>\n"
)


def success(predictions: list, **extra: object) -> dict:
    return {
        "service": "yolo",
        "status": "success",
        "predictions": predictions,
        "metadata": {"processing_time": 0.05, "model_info": {"framework": "Ultralytics YOLOv8"}},
        **extra,
    }


def parse_multipart(content_type: str, body: bytes) -> dict[str, dict]:
    message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        parts[name] = {
            "filename": part.get_filename(),
            "content_type": part.get_content_type(),
            "value": part.get_payload(decode=True),
        }
    return parts


class FarmStandIn(http.server.BaseHTTPRequestHandler):
    """Contract-shaped answers, one path per case; every request is recorded for inspection."""

    protocol_version = "HTTP/1.1"  # keep-alive, as Flask behind a real server
    state: dict

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer("GET", b"")

    def do_POST(self) -> None:
        if self.path == "/early413":  # refused on its headers: the upload is never read, the connection closed
            self.close_connection = True
            return self._send(413, b'{"error": "File too large", "status": "error"}')
        length = int(self.headers.get("Content-Length", "0"))
        self._answer("POST", self.rfile.read(length))

    def _answer(self, method: str, body: bytes) -> None:
        split = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(split.query).items()}
        parts = parse_multipart(self.headers["Content-Type"], body) if method == "POST" and body else {}
        fields = {name: part["value"].decode() for name, part in parts.items() if part["filename"] is None}
        upload = parts.get("file")
        self.state["requests"].append(
            {
                "method": method,
                "path": split.path,
                "query": query,
                "fields": fields,
                "upload": upload,
                "content_type": self.headers.get("Content-Type", ""),
                "peer": self.client_address,
            }
        )
        route = getattr(self, "route_" + split.path.strip("/").replace("/", "_").replace("-", "_"), None)
        if route is None:
            self._send(404, b"<!doctype html><title>404 Not Found</title><h1>Not Found</h1>", "text/html")
        else:
            route(query, fields, upload)

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except ConnectionError:  # the client stopped reading an oversized body, as it should
            self.close_connection = True

    def _json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload, sort_keys=True, separators=(",", ":")).encode() + b"\n")

    # -- routes ---------------------------------------------------------------------------------

    def route_v3_analyze(self, query, fields, upload):
        if upload is None and "url" not in query and "file" not in query:
            return self._json(
                400,
                {
                    "service": "yolo",
                    "status": "error",
                    "predictions": [],
                    "error": {"message": "Must provide either 'url' or 'file' parameter, or POST a file"},
                    "metadata": {"processing_time": 0.0},
                },
            )
        box = {"x": 5, "y": 6, "width": 20, "height": 10}
        self._json(200, success([{"label": "dog", "confidence": 0.874, "bbox": box, "emoji": "🐶"}]))

    def route_score(self, query, fields, upload):
        caption = fields.get("caption") or query.get("caption")
        self._json(
            200,
            {
                "service": "clip",
                "status": "success",
                "similarity_score": 0.297,
                "caption": caption,
                "image_source": "file",
                "metadata": {"processing_time": 0.061},
            },
        )

    def route_messy(self, query, fields, upload):
        predictions = [
            {"label": "face", "emoji": "🙂", "confidence": 0.9, "bbox": [-10, 50, 40, 40], "keypoints": {}},
            {"label": "face", "confidence": float("nan"), "bbox": [1, 1, 5, 5]},
            {"label": "face", "confidence": "0.4", "bbox": {"x": 70, "y": 5, "width": 50, "height": 5}},
            {"label": "face", "confidence": 0.5, "bbox": {"x": 500, "y": 5, "width": 50, "height": 5}},
        ]
        self._send(200, json.dumps(success(predictions, service="face")).encode())  # allow_nan: a NaN literal

    def route_nul(self, query, fields, upload):
        # A NUL character, which jsonb cannot hold, comes in JSON text only as the escape.
        box = {"x": 5, "y": 6, "width": 20, "height": 10}
        self._send(200, json.dumps(success([{"label": "d\x00og", "confidence": 0.874, "bbox": box}])).encode())

    def route_answer_then_close(self, query, fields, upload):
        # A keep-alive answer (no "Connection: close"), then the service closes the connection while it is idle,
        # as a server does at its keep-alive timeout.
        self.route_v3_analyze(query, fields, upload)
        self.close_connection = True

    def route_html500(self, *_):
        self._send(500, FLASK_500, "text/html; charset=utf-8")

    def route_legacy500(self, *_):
        self._json(500, {"error": "Internal server error", "status": "error"})

    def route_busy(self, *_):
        self._json(429, {"error": "Too many requests", "status": "error"})

    def route_v3_400(self, *_):
        self._json(
            400,
            {
                "service": "face",
                "status": "error",
                "predictions": [],
                "error": {"message": "Cannot provide both 'url' and 'file' parameters"},
                "metadata": {"processing_time": 0.0},
            },
        )

    def route_legacy413(self, *_):
        self._json(413, {"error": "File too large", "status": "error"})

    def route_type400(self, *_):
        self._json(
            400,
            {
                "service": "face",
                "status": "error",
                "predictions": [],
                "error": {"message": "File type not allowed"},
                "metadata": {"processing_time": 0.0},
            },
        )

    def route_not_json(self, *_):
        self._send(200, b"OK then", "text/plain")

    def route_html200(self, *_):
        self._send(200, b"<!doctype html><html><title>Welcome to nginx!</title></html>", "text/html")

    def route_no_predictions(self, *_):
        self._json(200, {"service": "yolo", "status": "success", "metadata": {}})

    def route_error200(self, *_):
        self._json(
            200,
            {
                "service": "yolo",
                "status": "error",
                "predictions": [],
                "error": {"message": "Detection failed: bad input"},
            },
        )

    def route_huge(self, *_):
        self._send(200, b'{"status":"success","predictions":[],"pad":"' + b"x" * (11 * 1024 * 1024) + b'"}')

    def route_huge_stream(self, *_):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            self.wfile.write(b'{"status":"success","predictions":[],"pad":"')
            for _ in range(11 * 16):
                self.wfile.write(b"x" * 65536)
        except OSError:
            pass
        self.close_connection = True

    def route_slow(self, *_):
        self.state["release"].wait(10)
        self.close_connection = True

    def route_slow_head(self, *_):
        """The head a byte at a time, each within the read timeout: no read ever waits long enough to time out."""
        try:
            for byte in b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n":
                if self.state["release"].wait(0.15):
                    break
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True

    def route_drip(self, *_):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(20):
                if self.state["release"].wait(0.15):
                    break
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:
            pass
        self.close_connection = True

    def route_hang_up(self, *_):
        self.close_connection = True  # no answer at all

    def route_cut_body(self, *_):  # 200 and a Content-Length, then the connection closes 10 bytes into the body
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "120")
        self.end_headers()
        self.wfile.write(b'{"service":')
        self.close_connection = True

    def route_cut_headers(self, *_):  # the connection closes before the blank line that ends the headers
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        self.close_connection = True

    def route_moved(self, *_):
        self.send_response(302)
        self.send_header("Location", "/v3/analyze")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def route_health(self, *_):
        status, payload = self.state["health"]
        self._json(status, payload)


class PeerRecordingServer(http.server.ThreadingHTTPServer):
    """Records the client address of every connection it has closed (state["closed"])."""

    state: dict

    def process_request_thread(self, request: socket.socket, client_address: tuple[str, int]
                               ) -> None:  # type: ignore[override]
        super().process_request_thread(request, client_address)  # ends by closing the connection
        self.state["closed"].add(client_address)


class StandIn:
    def __init__(self, health: tuple[int, object] = (200, {"status": "healthy"})) -> None:
        self.state = {"requests": [], "release": threading.Event(), "health": health, "closed": set()}
        handler = type("Handler", (FarmStandIn,), {"state": self.state})
        server = type("Server", (PeerRecordingServer,), {"state": self.state})
        self.server = server(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[dict]:
        return self.state["requests"]

    def service(self, name: str = "yolov8", **changes: object) -> Service:
        return dataclasses.replace(CATALOG[name], host="127.0.0.1", port=self.port, **changes)

    def stop(self) -> None:
        self.state["release"].set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def farm() -> Iterator[StandIn]:
    stand_in = StandIn()
    yield stand_in
    stand_in.stop()


@pytest.fixture
def client(farm) -> Iterator[FarmClient]:
    with FarmClient(CATALOG, allow_private_urls=True) as farm_client:
        yield farm_client


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Requests


def test_upload_sends_multipart_file_with_an_extension(farm, client):
    answer = client.analyze(farm.service(), IMAGE)
    request = farm.requests[-1]
    assert request["method"] == "POST" and request["path"] == "/v3/analyze"
    assert request["upload"]["filename"] == "image.jpg" and request["upload"]["content_type"] == "image/jpeg"
    assert request["upload"]["value"] == IMAGE.data
    assert answer.service == "yolov8" and answer.status_code == 200
    assert answer.data["service"] == "yolov8" and answer.data["reported_service"] == "yolo"
    assert answer.data["predictions"][0]["bbox"] == {"x": 5, "y": 6, "width": 20, "height": 10}
    assert 0 < answer.processing_time < 5


def test_uploads_of_one_client_share_a_multipart_boundary_other_clients_do_not(farm, client):
    client.analyze(farm.service("yolov8"), IMAGE)
    client.score(farm.service("caption_score"), IMAGE, "a cat")
    first, second = farm.requests[-2:]
    assert first["content_type"].startswith("multipart/form-data; boundary=windmill-")
    assert second["content_type"] == first["content_type"]
    assert second["fields"] == {"caption": "a cat"} and second["upload"]["value"] == IMAGE.data
    with FarmClient(CATALOG) as other:
        other.analyze(farm.service("yolov8"), IMAGE)
    assert farm.requests[-1]["content_type"] != first["content_type"]


def test_extra_parameters_travel_in_the_query_string(farm, client):
    # An upload's too: colors reads `?regions=` from the query string only (spec §3.13), ollama either.
    client.analyze(farm.service("colors"), IMAGE, extra={"regions": 4})
    assert farm.requests[-1]["query"] == {"regions": "4"} and farm.requests[-1]["fields"] == {}
    client.analyze(
        farm.service("ollama", request_mode="url"),
        image_url="http://img.test/a.jpg",
        extra={"prompt": "one word & no more"},
    )
    assert farm.requests[-1]["query"] == {"url": "http://img.test/a.jpg", "prompt": "one word & no more"}


def test_url_mode_encodes_the_url_exactly(farm, client):
    tricky = "http://images.test/a b/ü.jpg?x=1&y=2#frag"
    client.analyze(farm.service(request_mode="url"), IMAGE, image_url=tricky)
    request = farm.requests[-1]
    assert request["method"] == "GET" and request["query"] == {"url": tricky} and request["upload"] is None


def test_each_mode_falls_back_to_the_input_it_has(farm, client):
    client.analyze(farm.service(request_mode="url"), IMAGE)
    assert farm.requests[-1]["method"] == "POST"
    client.analyze(farm.service(), image_url="http://images.test/x.jpg")
    assert farm.requests[-1]["method"] == "GET"
    with pytest.raises(ValueError, match="needs an image or an image_url"):
        client.analyze(farm.service())


def test_file_mode_gives_the_service_the_path_and_falls_back_without_one(farm, client):
    path = "/images/a b/ü&1.jpg"
    client.analyze(farm.service(request_mode="file"), IMAGE, image_path=path, extra={"regions": 4})
    request = farm.requests[-1]
    assert request["method"] == "GET" and request["query"] == {"file": path, "regions": "4"}
    assert request["upload"] is None
    client.score(farm.service("caption_score", request_mode="file"), None, "a dog", image_path=path)
    assert farm.requests[-1]["query"] == {"file": path, "caption": "a dog"}
    client.analyze(farm.service(request_mode="file"), IMAGE, image_url="http://images.test/x.jpg")  # no path
    assert farm.requests[-1]["query"] == {"url": "http://images.test/x.jpg"}
    client.analyze(farm.service(request_mode="file"), IMAGE)  # neither: the bytes
    assert farm.requests[-1]["method"] == "POST"


def test_private_image_urls_are_refused_before_any_request(farm):
    before = len(farm.requests)
    with FarmClient(CATALOG) as strict, pytest.raises(BadImage, match="loopback address"):
        strict.analyze(farm.service(request_mode="url"), image_url=f"http://127.0.0.1:{farm.port}/x.jpg")
    with FarmClient(CATALOG) as strict, pytest.raises(BadImage, match="scheme 'file'"):
        strict.analyze(farm.service(request_mode="url"), image_url="file:///etc/passwd")
    assert len(farm.requests) == before


def test_connections_are_kept_alive_per_service(farm, client):
    for _ in range(3):
        client.analyze(farm.service(), IMAGE)
    assert len({request["peer"] for request in farm.requests[-3:]}) == 1
    # Another service has a pool of its own (threads of one service never lock another's pool).
    client.analyze(farm.service("rtdetr"), IMAGE)
    client.analyze(farm.service("rtdetr"), IMAGE)
    rtdetr_peers = {request["peer"] for request in farm.requests[-2:]}
    assert len(rtdetr_peers) == 1 and rtdetr_peers.isdisjoint({farm.requests[-3]["peer"]})


def test_a_connection_the_service_closed_while_idle_is_not_reused(farm, client):
    client.analyze(farm.service(endpoint="/answer-then-close"), IMAGE)
    peer = farm.requests[-1]["peer"]
    wait_until(lambda: peer in farm.state["closed"])  # the service's end of the idle connection is closed
    answer = client.analyze(farm.service(), IMAGE)  # the same service: its pool holds the closed connection
    assert answer.status_code == 200
    assert farm.requests[-1]["peer"] != farm.requests[-2]["peer"]


def test_every_upload_carries_its_own_parameters_beside_the_same_file_part(farm, client):
    png = prepare_image(_png_bytes())
    client.analyze(farm.service("colors"), png, extra={"regions": 4, "note": 'say "cheese"\r\n--windmill-'})
    client.analyze(farm.service("ollama"), IMAGE, extra={"prompt": "one word: ü"})
    client.score(farm.service("caption_score"), png, "a dog")
    colors, ollama, score = farm.requests[-3:]
    assert colors["query"] == {"regions": "4", "note": 'say "cheese"\r\n--windmill-'} and colors["fields"] == {}
    assert ollama["query"] == {"prompt": "one word: ü"} and ollama["fields"] == {}
    assert score["fields"] == {"caption": "a dog"}
    assert [request["upload"]["filename"] for request in (colors, ollama, score)] == ["image.png", "image.jpg",
                                                                                      "image.png"]
    assert [request["upload"]["content_type"] for request in (colors, ollama, score)] == [
        "image/png", "image/jpeg", "image/png"]
    assert colors["upload"]["value"] == score["upload"]["value"] == png.data
    assert ollama["upload"]["value"] == IMAGE.data


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(buffer, "PNG")
    return buffer.getvalue()


def test_services_are_found_by_catalog_name(farm):
    catalog = Catalog(tuple(farm.service(service.name) for service in CATALOG.services))
    with FarmClient(catalog) as named:
        assert named.analyze("detectron2", IMAGE).service == "detectron2"


def test_score_posts_file_and_caption(farm, client):
    score = client.score(farm.service("caption_score"), IMAGE, "a man sitting on a couch with a dog")
    request = farm.requests[-1]
    assert score == pytest.approx(0.297)
    assert request["path"] == "/score" and request["fields"] == {"caption": "a man sitting on a couch with a dog"}
    assert request["upload"]["filename"] == "image.jpg"
    answer = client.score_answer(
        farm.service("caption_score", request_mode="url"), None, "a dog", image_url="http://images.test/1.jpg"
    )
    assert farm.requests[-1]["query"] == {"url": "http://images.test/1.jpg", "caption": "a dog"}
    assert answer.data["caption"] == "a dog"
    with pytest.raises(ServiceCallError, match="empty caption") as failure:
        client.score(farm.service("caption_score"), IMAGE, "  ")
    assert failure.value.kind == "rejected"


def test_a_nul_character_in_an_answer_is_removed_before_it_is_stored(farm, client):
    data = client.analyze(farm.service("yolov8", endpoint="/nul"), IMAGE).data
    assert data["predictions"][0]["label"] == "dog"
    assert "\\u0000" not in jsonb_text(data).decode()


def test_messy_boxes_are_clamped_to_the_uploaded_image(farm, client):
    data = client.analyze(farm.service("face", endpoint="/messy"), IMAGE).data  # IMAGE is 80 × 60
    assert [p["bbox"] for p in data["predictions"]] == [
        {"x": 0, "y": 50, "width": 30, "height": 10},
        {"x": 70, "y": 5, "width": 10, "height": 5},
    ]
    assert data["predictions"][1]["confidence"] == 0.4 and data["predictions"][0]["emoji"] == "🙂"
    notes = " | ".join(data["normalization_notes"])
    assert "prediction 1 dropped: confidence is NaN" in notes and "prediction 3 dropped" in notes
    # A crop's answer: its boxes are clamped once moved into the whole image, not to the crop.
    kept = client.analyze(farm.service("face", endpoint="/messy"), IMAGE, clamp_to_image=False).data
    assert [p["bbox"] for p in kept["predictions"]] == [{"x": -10, "y": 50, "width": 40, "height": 40},
                                                        {"x": 70, "y": 5, "width": 50, "height": 5},
                                                        {"x": 500, "y": 5, "width": 50, "height": 5}]


# ---------------------------------------------------------------------------------------------
# Failure classification


@pytest.mark.parametrize(
    ("endpoint", "kind", "retryable", "status", "message"),
    [
        ("/html500", "http_5xx", True, 500, "HTTP 500: HTML page: 500 Internal Server Error"),
        ("/legacy500", "http_5xx", True, 500, "HTTP 500: Internal server error"),
        ("/busy", "http_429", True, 429, "HTTP 429: Too many requests"),
        ("/v3-400", "http_4xx", False, 400, "HTTP 400: Cannot provide both 'url' and 'file' parameters"),
        ("/type400", "rejected", False, 400, "HTTP 400: File type not allowed"),
        ("/legacy413", "rejected", False, 413, "HTTP 413: File too large"),
        ("/nowhere", "http_4xx", False, 404, "HTTP 404: HTML page: 404 Not Found"),
        ("/not-json", "malformed", False, 200, "malformed answer: not JSON"),
        ("/html200", "malformed", False, 200, "HTML page: Welcome to nginx!"),
        ("/no-predictions", "malformed", False, 200, "no predictions list"),
        ("/error200", "rejected", False, 200, "Detection failed: bad input"),
        ("/huge", "malformed", False, 200, "over the 8 MiB limit"),
        ("/huge-stream", "malformed", False, 200, "body is over the 8 MiB limit"),
        ("/hang-up", "network", True, None, "Server disconnected"),
        # cut short: the connection closed mid-answer, which may pass (once recorded as malformed: not JSON)
        ("/cut-body", "network", True, None, "the connection closed after 11 of 120 bytes"),
        ("/cut-headers", "network", True, None, "the connection closed in the answer's headers"),
        ("/moved", "http_other", False, 302, "HTTP 302"),
    ],
)
def test_failures_are_classified(farm, client, endpoint, kind, retryable, status, message):
    with pytest.raises(ServiceCallError) as failure:
        client.analyze(farm.service(endpoint=endpoint), IMAGE)
    error = failure.value
    assert (error.kind, error.retryable, error.status_code) == (kind, retryable, status)
    assert message in error.message, error.message
    assert error.message.startswith("yolov8: ") and "\n" not in error.message and len(error.message) < 340


def test_colors_and_faces_http_500_for_an_undecodable_upload_is_named_as_such(farm, client):
    """Spec §2.7: colors and face answer an upload they cannot decode with HTTP 500, as the stand-in does."""
    junk = prepared_jpeg(b"these bytes are no image", 80, 60)
    with running_farm(CATALOG, services=["colors", "face"]) as (_, catalog), FarmClient(catalog) as stand_in:
        for service in ("colors", "face"):
            with pytest.raises(ServiceCallError) as refused:
                stand_in.analyze(catalog[service], junk)
            assert (refused.value.kind, refused.value.retryable, refused.value.refuses_the_upload) == (
                "http_5xx", True, True), refused.value
    for endpoint in ("/html500", "/legacy500"):  # a 500 for another reason stays merely passing
        with pytest.raises(ServiceCallError) as failure:
            client.analyze(farm.service(endpoint=endpoint), IMAGE)
        assert not failure.value.refuses_the_upload


def test_an_answer_sent_before_the_upload_was_read_is_still_read(farm, client):
    big = prepared_jpeg(b"\xff" * (24 * 1024 * 1024), 4000, 3000)  # more than the socket buffers hold
    with pytest.raises(ServiceCallError) as failure:
        client.analyze(farm.service(endpoint="/early413"), big)
    assert (failure.value.kind, failure.value.status_code) == ("rejected", 413)
    assert "File too large" in failure.value.message


def test_a_refused_connection_is_a_retryable_connect_error():
    service = dataclasses.replace(CATALOG["yolov8"], host="127.0.0.1", port=closed_port())
    with FarmClient(CATALOG) as fresh, pytest.raises(ServiceCallError) as failure:
        fresh.analyze(service, IMAGE)
    assert failure.value.kind == "connect" and failure.value.retryable
    assert "cannot connect to http://127.0.0.1:" in failure.value.message


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [("/slow", "no answer within 0.4 s"), ("/drip", "no complete answer within 0.4 s"),
     # It held a worker's thread for good: each byte of the head came within the timeout (a slow-loris answer).
     ("/slow-head", "no answer within 0.4 s")],
)
def test_a_silent_or_dripping_service_times_out(farm, client, endpoint, message):
    started = time.monotonic()
    with pytest.raises(ServiceCallError) as failure:
        client.analyze(farm.service(endpoint=endpoint, timeout_s=0.4), IMAGE)
    assert time.monotonic() - started < 2.0
    error = failure.value
    assert error.kind == "timeout" and error.retryable and error.result_status == "timeout"
    assert message in error.message


def test_the_client_still_works_after_failures(farm, client):
    for endpoint in ("/hang-up", "/html500", "/huge"):
        with pytest.raises(ServiceCallError):
            client.analyze(farm.service(endpoint=endpoint), IMAGE)
    assert client.analyze(farm.service(), IMAGE).status_code == 200


# ---------------------------------------------------------------------------------------------
# Health


def test_check_services_probes_every_service_and_formats_a_table(farm):
    broken = StandIn(health=(500, {"error": "Internal server error", "status": "error"}))
    unhealthy = StandIn(health=(503, {"status": "unhealthy", "reason": "model not loaded"}))
    try:
        services = (
            farm.service("yolov8"),
            broken.service("blip"),
            unhealthy.service("rtdetr"),
            dataclasses.replace(CATALOG["ollama"], host="127.0.0.1", port=closed_port()),
        )
        catalog = Catalog(services)
        with FarmClient(catalog) as probe:
            results = check_services(catalog, probe)
    finally:
        broken.stop()
        unhealthy.stop()
    assert [r.service for r in results] == ["yolov8", "blip", "rtdetr", "ollama"]
    assert [r.ok for r in results] == [True, False, False, False]
    assert [r.status_code for r in results] == [200, 500, 503, None]
    assert results[0].detail == "healthy" and results[1].detail.endswith("; Internal server error")
    assert results[2].detail == "unhealthy: model not loaded" and "cannot connect" in results[3].detail
    table = format_health_table(results)
    lines = table.splitlines()
    assert lines[0].split() == ["SERVICE", "URL", "STATUS", "HTTP", "LATENCY", "DETAIL"]
    assert lines[1].split()[:4] == ["yolov8", f"http://127.0.0.1:{farm.port}/health", "ok", "200"]
    assert lines[4].split()[2:4] == ["DOWN", "-"]
    assert lines[-1] == "1 of 4 services healthy"


# ---------------------------------------------------------------------------------------------
# Against the Animal Farm stand-in (windmill.simfarm), when it is there


def test_every_service_of_the_stand_in_answers_through_the_client():
    with running_farm(CATALOG) as (_, catalog), FarmClient(catalog) as stand_in_client:
        assert all(result.ok for result in check_services(catalog, stand_in_client))
        for service in catalog.services:
            if service.name == "caption_score":  # the shipped catalog gives it the image's file (spec §3.4)
                assert service.request_mode == "file"
                score = stand_in_client.score(service, None, "a dog on a couch", image_path=str(SAMPLE_FILE))
                assert -1.0 <= score <= 1.0
                continue
            answer = stand_in_client.analyze(service, IMAGE)
            assert answer.data["service"] == service.name
            assert isinstance(answer.data["predictions"], list)


# -- reading an answer's header fields -------------------------------------------------------------------------------

HEADER_BLOCKS = [
    b"Content-Type: application/json\r\nContent-Length: 12\r\n\r\n",
    b"content-length:12\r\nCONNECTION: Keep-Alive\r\nX-Spaced:   padded value  \r\n\r\n",
    b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Folded: first\r\n  second line\r\n\r\n",
    b"Transfer-Encoding: chunked\r\nServer: \xe9t\xe9\r\n\r\n",
    b"\r\n",
]


@pytest.mark.parametrize("block", HEADER_BLOCKS, ids=["plain", "odd-case-and-spaces", "repeated-and-folded",
                                                      "chunked-latin1", "none"])
def test_header_fields_read_as_the_email_parser_reads_them(block):
    """The transport reads header fields itself (the email parser cost as much as the rest of an answer); what it
    gives is what http.client's parser gives."""
    from windmill.farm.transport import _Headers

    ours = _Headers(http.client._read_headers(io.BytesIO(block)))
    theirs = http.client.parse_headers(io.BytesIO(block))
    for name in ("content-type", "Content-Length", "connection", "x-spaced", "set-cookie", "x-folded",
                 "transfer-encoding", "server", "missing"):
        assert ours.get(name) == theirs.get(name), name
        assert ours.get_all(name) == theirs.get_all(name), name
    assert ours.items() == theirs.items()


def test_a_chunked_answer_and_one_without_a_length_are_read_whole():
    """Both are framed by header fields the transport reads itself: a chunked body, and one that ends when the
    service closes the connection."""
    body = json.dumps({"status": "success", "predictions": [{"text": "a cat", "confidence": 0.9}]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if self.path.startswith("/chunked"):
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for part in (body[:5], body[5:]):
                    self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for endpoint in ("/chunked", "/closing"):
            service = dataclasses.replace(CATALOG["blip"], host="127.0.0.1", port=server.server_address[1],
                                          endpoint=endpoint)
            with FarmClient(Catalog((service,))) as client:
                for _ in range(2):  # the second call on a reused (chunked) or a new (closed) connection
                    answer = client.analyze(service, IMAGE)
                    assert answer.data["predictions"][0]["text"] == "a cat", endpoint
    finally:
        server.shutdown()
        server.server_close()


def test_farm_check_says_blips_health_is_known_broken_at_df57b25():
    # Spec §2.8: BLIP's /health answers 500 whatever its state; the table said only "DOWN 500 Internal server error".
    with running_farm(CATALOG, services=["blip"], broken_blip_health=True) as (_, catalog), \
            FarmClient(catalog) as client:
        [result] = check_services(catalog, client, services=[catalog["blip"]])
    assert not result.ok and result.status_code == 500
    assert result.detail == "broken at df57b25, 500 always (spec §2.8): try an analyze; Internal server error"
    assert "broken at df57b25, 500 always (spec §2.8): try an analyze" in format_health_table([result])
