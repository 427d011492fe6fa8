"""The Animal Farm contract (spec/animal-farm-api.md) as the real services answer it, section by section.

The spec's own example answers (tests/data/answers/contract_examples.json) and error bodies are served byte for byte
as Flask sends them (§2.6: compact, sorted keys, escaped non-ASCII, a trailing newline) by a scripted HTTP service,
and read through the FarmClient: what a real service's answer becomes, how each failure is classified, and what
the requests look like. The stand-in (windmill.simfarm) is held to the same request rules where it must be strict
for the tests and benchmarks that use it to be honest.
"""

from __future__ import annotations

import copy
import dataclasses
import http.server
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from PIL import Image

from windmill.catalog import Service, load_catalog
from windmill.farm import FarmClient, ServiceCallError
from windmill.images import PreparedImage, prepare_image
from windmill.simfarm import SimFarm

CATALOG = load_catalog()
EXAMPLES: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "answers" / "contract_examples.json").read_text(encoding="utf-8"))
SECTIONS = {"blip": "3.1", "ollama": "3.2", "clip": "3.5", "xception": "3.7", "yolov8": "3.8", "rtdetr": "3.9",
            "detectron2": "3.10", "face": "3.11", "pose": "3.12", "colors": "3.13", "ocr": "3.14", "nsfw2": "3.15",
            "metadata": "3.16"}
JSON = "application/json"
HTML = "text/html; charset=utf-8"
# The ports this suite's services take, apart from the stand-ins' random offsets of the other suites.
PORTS = range(7500, 7600)


def flask_bytes(document: Any) -> bytes:
    """§2.6: what Flask's jsonify sends."""
    return (json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode()


def scene(width: int = 640, height: int = 427) -> PreparedImage:
    """The examples' scene is a 640×427 photo (§3): boxes of the examples lie inside it."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 110, 100)).save(buffer, "JPEG")
    return prepare_image(buffer.getvalue())


SCENE = scene()


def _bound(make: Any) -> Any:
    """What `make(port)` gives for the first free port of PORTS."""
    for port in PORTS:
        try:
            return make(port)
        except OSError:
            continue
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ScriptedService:
    """One HTTP service answering every request with the scripted status, content type and body; records requests."""

    def __init__(self) -> None:
        self.answer: tuple[int, str, bytes] = (200, JSON, b"{}")
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._answer(b"")

            def do_POST(self) -> None:
                self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

            def _answer(self, body: bytes) -> None:
                split = urlsplit(self.path)
                outer.requests.append({"method": self.command, "path": split.path, "body": body,
                                       "query": {k: v[0] for k, v in parse_qs(split.query).items()}})
                status, content_type, answer = outer.answer
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = _bound(lambda port: http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def service(self, name: str, **changes: Any) -> Service:
        return dataclasses.replace(CATALOG[name], host="127.0.0.1", port=self.server.server_address[1], **changes)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def service() -> Iterator[ScriptedService]:
    scripted = ScriptedService()
    yield scripted
    scripted.stop()


@pytest.fixture
def client() -> Iterator[FarmClient]:
    with FarmClient(CATALOG, allow_private_urls=True) as farm_client:
        yield farm_client


def v3_error(service_field: str, message: str, **metadata: Any) -> dict[str, Any]:
    """§2.4: the V3 error envelope."""
    return {"service": service_field, "status": "error", "predictions": [], "error": {"message": message},
            "metadata": {"processing_time": 0.001, **metadata}}


# ---------------------------------------------------------------------------------------------------------------
# §3: every service's example answer, as the real service sends it, read through the client


@pytest.mark.parametrize("name", list(SECTIONS), ids=[f"spec{SECTIONS[name]}-{name}" for name in SECTIONS])
def test_the_spec_example_answer_keeps_every_field_through_the_client(service, client, name):
    example = EXAMPLES[name]
    service.answer = (200, JSON, flask_bytes(example))
    data = client.analyze(service.service(name), SCENE).data
    assert "normalization_notes" not in data, data["normalization_notes"]
    assert data["service"] == name and data["status"] == "success" and data["metadata"] == example["metadata"]
    assert data.get("reported_service", name) == example["service"]  # "yolo", the two-stage SERVICE_NAMEs (§1)
    assert data.get("full_image") == example.get("full_image")  # two-stage detectors' classifications (§3.5)
    assert len(data["predictions"]) == len(example["predictions"])
    for got, sent in zip(data["predictions"], example["predictions"], strict=True):
        expected = {"emoji": "", **copy.deepcopy(sent)}  # a missing emoji reads as "" (§2.9)
        if isinstance(sent.get("bbox"), list):  # face's [x, y, w, h] (§3.11)
            expected["bbox"] = dict(zip(("x", "y", "width", "height"), sent["bbox"], strict=True))
        assert got == expected


def test_section_3_4_the_score_example_and_its_error_variant(service, client):
    service.answer = (200, JSON, flask_bytes(EXAMPLES["caption_score"]))
    path = "/data/img/123.jpg"
    answer = client.score_answer(service.service("caption_score"), None, "a man sitting on a couch with a dog",
                                 image_path=path)
    assert service.requests[-1]["method"] == "GET" and service.requests[-1]["path"] == "/score"
    assert service.requests[-1]["query"] == {"file": path, "caption": "a man sitting on a couch with a dog"}
    assert answer.data["similarity_score"] == 0.297 and answer.data["image_source"] == "file"
    assert answer.data["caption"] == "a man sitting on a couch with a dog"
    service.answer = (400, JSON, flask_bytes({"service": "clip", "status": "error", "similarity_score": None,
                                              "error": {"message": "Must provide non-empty caption string"},
                                              "metadata": {"processing_time": 0.0}}))
    with pytest.raises(ServiceCallError) as failure:
        client.score_answer(service.service("caption_score"), None, "a dog", image_path=path)
    assert (failure.value.kind, failure.value.retryable) == ("http_4xx", False)
    assert "Must provide non-empty caption string" in failure.value.message


# ---------------------------------------------------------------------------------------------------------------
# §2.4, §2.7, §3: error bodies and status codes, classified


ERRORS = [
    ("spec2.4-v3-file-not-found", "yolov8", 400, JSON,
     flask_bytes(v3_error("yolo", "File not found: /data/img/123.jpg")), "rejected"),
    ("spec2.4-legacy-413", "yolov8", 413, JSON,
     flask_bytes({"error": "File too large", "status": "error"}), "rejected"),
    ("spec2.4-legacy-400", "detectron2", 400, JSON,
     flask_bytes({"error": "Bad request", "status": "error"}), "http_4xx"),
    ("spec2.4-legacy-500", "blip", 500, JSON,
     flask_bytes({"error": "Internal server error", "status": "error"}), "http_5xx"),
    ("spec2.4-too-large-in-code", "rtdetr", 400, JSON,
     flask_bytes(v3_error("rtdetr", "File too large. Maximum size: 8MB")), "rejected"),
    ("spec2.4-download-failed", "rtdetr", 400, JSON, flask_bytes(v3_error(
        "rtdetr", "Failed to download/process image: 404 Client Error: NOT FOUND for url: http://img.test/a.jpg")),
     "rejected"),
    ("spec2.4-not-an-image-url", "yolov8", 400, JSON, flask_bytes(v3_error("yolo", "URL does not point to an image")),
     "rejected"),
    # The two-stage detectors answer a missing ?file= with a 500: the same refusal as everyone's 400, not a fault.
    ("spec3.5-two-stage-file-not-found-500", "clip", 500, JSON, flask_bytes(v3_error(
        "YOLO-CLIP-Detector", "Failed to load image file: File not found: /data/img/123.jpg")), "rejected"),
    ("spec3.7-two-stage-file-not-found-500", "xception", 500, JSON, flask_bytes(v3_error(
        "YOLO11n-Xception-Detector", "Failed to load image file: File not found: /data/img/123.jpg")), "rejected"),
    ("spec3.5-two-stage-model-failure-500", "clip", 500, JSON,
     flask_bytes(v3_error("YOLO-CLIP-Detector", "Detection failed: CUDA out of memory")), "http_5xx"),
    ("spec3.3-clip-download-500", "caption_score", 500, JSON,
     flask_bytes(v3_error("clip", "Internal error: HTTPConnectionPool(host='img.test'): timed out")), "http_5xx"),
    ("spec3.12-pose-post-without-file", "pose", 400, JSON, flask_bytes(v3_error(
        "pose", "No file provided in POST request", model_info={"framework": "MediaPipe Pose"})), "http_4xx"),
    ("spec3.16-metadata-both-inputs", "metadata", 400, JSON, flask_bytes(v3_error(
        "metadata", "Cannot provide both 'url' and 'file' parameters - choose one",
        model_info={"framework": "ExifTool + PIL + OpenCV + NumPy"})), "http_4xx"),
    ("spec2.1-html-404", "yolov8", 404, HTML, b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n"
     b"<h1>Not Found</h1>\n<p>The requested URL was not found on the server.</p>\n", "http_4xx"),
    ("spec2.1-html-405", "yolov8", 405, HTML, b"<!doctype html>\n<html lang=en>\n"
     b"<title>405 Method Not Allowed</title>\n<h1>Method Not Allowed</h1>\n"
     b"<p>The method is not allowed for the requested URL.</p>\n", "http_4xx"),
]


@pytest.mark.parametrize(("name", "status", "content_type", "body", "kind"), [case[1:] for case in ERRORS],
                         ids=[case[0] for case in ERRORS])
def test_error_answers_are_classified_as_the_spec_says(service, client, name, status, content_type, body, kind):
    service.answer = (status, content_type, body)
    with pytest.raises(ServiceCallError) as failure:
        client.analyze(service.service(name), SCENE)
    error = failure.value
    assert (error.kind, error.status_code) == (kind, status), error.message
    assert error.retryable is (kind == "http_5xx")


def test_section_2_7_an_undecodable_upload_500_is_named_but_stays_passing(service, client):
    service.answer = (500, JSON, flask_bytes(v3_error(
        "colors", "Failed to process uploaded image: cannot identify image file <_io.BytesIO object>")))
    with pytest.raises(ServiceCallError) as failure:
        client.analyze(service.service("colors"), SCENE)
    assert (failure.value.kind, failure.value.retryable, failure.value.refuses_the_upload) == ("http_5xx", True, True)


# ---------------------------------------------------------------------------------------------------------------
# §2.2, §3.13: the extra parameters travel where every service reads them


def test_section_3_13_colors_regions_travel_in_the_query_string_of_an_upload(service, client):
    service.answer = (200, JSON, flask_bytes(EXAMPLES["colors"]))
    client.analyze(service.service("colors"), SCENE, extra={"regions": 4})
    request = service.requests[-1]
    assert request["method"] == "POST" and request["path"] == "/v3/analyze"
    assert request["query"] == {"regions": "4"}  # colors reads `?regions=` (§3.13), not a form field
    assert b'name="regions"' not in request["body"]


def test_section_2_2_ollama_parameters_travel_in_the_query_string_too(service, client):
    service.answer = (200, JSON, flask_bytes(EXAMPLES["ollama"]))
    client.analyze(service.service("ollama"), SCENE, extra={"prompt": "one word & no more", "temperature": 0.1})
    assert service.requests[-1]["query"] == {"prompt": "one word & no more", "temperature": "0.1"}


# ---------------------------------------------------------------------------------------------------------------
# The stand-in reads the parameters where the real services read them


def test_section_3_13_the_stand_in_colors_reads_regions_from_the_query_string_only():
    upload = {"file": ("crop.jpg", SCENE.data, "image/jpeg")}
    # colors' port 7770 moved into PORTS
    offset = next(offset for offset in range(PORTS.start - 7770, PORTS.stop - 7770) if _free(7770 + offset))
    with SimFarm(CATALOG, services=["colors"], port_offset=offset):
        catalog = CATALOG.with_port_offset(offset)
        url = catalog["colors"].base_url + "/v3/analyze"
        as_field = httpx.post(url, files=upload, data={"regions": "4"}).json()
        in_query = httpx.post(url + "?regions=4", files=upload).json()
        with FarmClient(catalog) as farm_client:
            through_client = farm_client.analyze(catalog["colors"], SCENE, extra={"regions": 9}).data
    assert "regions_analyzed" not in as_field["metadata"]  # a form field is not read: single-region answer
    assert in_query["metadata"]["regions_analyzed"] == 4
    assert through_client["metadata"]["regions_analyzed"] == 9
