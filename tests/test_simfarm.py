"""The Animal Farm stand-in over real HTTP: envelopes, quirks, errors, determinism, disagreement, faults."""

from __future__ import annotations

import email.utils
import functools
import io
import json
import random
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from windmill.catalog import Catalog
from windmill.errors import WindmillError
from windmill.simfarm import SimFarm
from windmill.simfarm.annotations import AnnotationIndex, sidecar_path_for
from windmill.simfarm.answers import Answerer, Options
from windmill.simfarm.contract import PROFILES
from windmill.simfarm.detections import iou
from windmill.simfarm.faults import Fault, FaultPlan, FaultRates
from windmill.simfarm.inputs import Picture
from windmill.simfarm.metadata import analyze as analyze_metadata
from windmill.simfarm.palettes import SYSTEMS, nearest, nearest_markers
from windmill.simfarm.server import SAMPLES_DIR

ASTRONAUT = SAMPLES_DIR / "astronaut.jpg"
COFFEE = SAMPLES_DIR / "coffee.jpg"
DETECTORS = ("yolov8", "rtdetr", "detectron2", "clip", "xception")


def start_farm(catalog: Catalog, **options: Any) -> SimFarm:
    """A started farm on a random free block of ports (catalog ports 7770–7799 + offset)."""
    for _ in range(20):
        farm = SimFarm(catalog, port_offset=random.randrange(20000, 50000), **options)
        try:
            farm.start()
            return farm
        except WindmillError:
            continue
    raise RuntimeError("no free block of ports")


def jpeg(color: tuple[int, int, int] | None = None, size: tuple[int, int] = (64, 48), exif: Any = None) -> bytes:
    """A solid colour (or, without a colour, deterministic noise) as JPEG bytes."""
    if color is None:
        noise = random.Random(5).randbytes(size[0] * size[1] * 3)
        image = Image.frombytes("RGB", size, noise)
    else:
        image = Image.new("RGB", size, color)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **({"exif": exif} if exif is not None else {}))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def farm(catalog: Catalog) -> Iterator[SimFarm]:
    farm = start_farm(catalog)
    yield farm
    farm.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tiny local web server with two samples and a text file, for `?url=`."""
    root = tmp_path_factory.mktemp("site")
    shutil.copy(ASTRONAUT, root / "astronaut.jpg")
    shutil.copy(COFFEE, root / "coffee.jpg")
    (root / "notes.txt").write_text("not an image")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def upload(client: httpx.Client, farm: SimFarm, service: str, data: bytes, filename: str = "image.jpg",
           fields: dict[str, str] | None = None) -> httpx.Response:
    path = farm.services[service].endpoint
    return client.post(farm.base_url(service) + path, files={"file": (filename, data, "image/jpeg")}, data=fields)


def analyze(client: httpx.Client, farm: SimFarm, service: str, data: bytes) -> dict[str, Any]:
    response = upload(client, farm, service, data)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_catalog_service_has_a_simulation(catalog: Catalog) -> None:
    assert set(catalog.names) <= set(PROFILES)


@pytest.mark.parametrize("service", sorted(PROFILES))
def test_upload_gets_the_services_success_envelope(
    farm: SimFarm, client: httpx.Client, service: str
) -> None:
    if service == "caption_score":  # no upload at df57b25 (test_caption_score_takes_no_upload): its file
        response = client.get(farm.base_url(service) + "/score",
                              params={"file": str(ASTRONAUT), "caption": "an astronaut in an orange suit"})
    else:
        response = upload(client, farm, service, ASTRONAUT.read_bytes(), "astronaut.jpg")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    profile = PROFILES[service]
    assert body["status"] == "success"
    if service == "caption_score":
        assert body["service"] == "clip"
        assert set(body) == {"service", "status", "similarity_score", "caption", "image_source", "metadata"}
        assert body["metadata"]["model_info"] == {"framework": "OpenAI", "model": "ViT-L/14"}
        return
    assert body["service"] == profile.service_field
    assert isinstance(body["predictions"], list)
    assert isinstance(body["metadata"]["processing_time"], float)
    assert body["metadata"]["model_info"]["framework"] == profile.framework
    assert set(body) <= {"service", "status", "predictions", "metadata", "full_image"}


def test_service_names_keep_their_quirks(farm: SimFarm, client: httpx.Client) -> None:
    data = ASTRONAUT.read_bytes()
    assert analyze(client, farm, "yolov8", data)["service"] == "yolo"
    assert analyze(client, farm, "clip", data)["service"] == "YOLO-CLIP-Detector"
    assert analyze(client, farm, "xception", data)["service"] == "YOLO11n-Xception-Detector"


def test_answers_carry_the_current_date(farm: SimFarm, client: httpx.Client) -> None:
    def date() -> datetime:
        return email.utils.parsedate_to_datetime(upload(client, farm, "blip", ASTRONAUT.read_bytes()).headers["Date"])

    before = datetime.now(UTC).replace(microsecond=0)
    first = date()
    time.sleep(1.1)  # the header has one-second resolution: the next answer is dated a later second
    second = date()
    assert before <= first < second <= datetime.now(UTC)


def test_bodies_are_serialized_like_flask(farm: SimFarm, client: httpx.Client) -> None:
    raw = upload(client, farm, "blip", ASTRONAUT.read_bytes()).content
    document = json.loads(raw)
    assert raw == (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode()
    assert raw.isascii() and b"\\ud83d" in raw  # emoji escaped as surrogate pairs
    assert raw.index(b'"metadata"') < raw.index(b'"predictions"') < raw.index(b'"service"')


def test_get_file_and_get_url_answer_like_an_upload(farm: SimFarm, client: httpx.Client, image_site: str) -> None:
    for service in ("yolov8", "colors", "blip", "metadata"):
        base = farm.base_url(service) + "/v3/analyze"
        uploaded = analyze(client, farm, service, COFFEE.read_bytes())
        by_file = client.get(base, params={"file": str(COFFEE)})
        by_url = client.get(base, params={"url": f"{image_site}/coffee.jpg"})
        assert by_file.status_code == by_url.status_code == 200
        assert by_file.json() == by_url.json() == uploaded


def test_legacy_v2_routes_translate_their_parameters(farm: SimFarm, client: httpx.Client) -> None:
    response = client.get(farm.base_url("yolov8") + "/v2/analyze_file", params={"file_path": str(COFFEE)})
    assert response.status_code == 200
    assert response.json() == analyze(client, farm, "yolov8", COFFEE.read_bytes())
    assert client.get(farm.base_url("clip") + "/v2/analyze_file", params={"file_path": str(COFFEE)}).status_code == 404


def test_face_answers_a_list_bbox_and_six_keypoints(farm: SimFarm, client: httpx.Client) -> None:
    faces = analyze(client, farm, "face", ASTRONAUT.read_bytes())["predictions"]
    assert len(faces) == 1
    face = faces[0]
    assert face["label"] == "face" and face["emoji"] == "🙂"
    assert isinstance(face["bbox"], list) and len(face["bbox"]) == 4 and all(isinstance(v, int) for v in face["bbox"])
    assert set(face["keypoints"]) == {
        "right_eye", "left_eye", "nose_tip", "mouth_center", "right_ear_tragion", "left_ear_tragion"
    }
    assert face["keypoints"]["right_eye"][0] < face["keypoints"]["left_eye"][0]  # the subject's right


def test_face_and_pose_answer_person_crops_without_a_sidecar(farm: SimFarm, client: httpx.Client) -> None:
    crop = Image.open(ASTRONAUT).crop((20, 14, 362, 512))
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=90)
    faces = analyze(client, farm, "face", buffer.getvalue())["predictions"]
    assert len(faces) == 1
    _, y, width, _ = faces[0]["bbox"]
    assert y < crop.height / 3 and 0 < width < crop.width
    poses = analyze(client, farm, "pose", buffer.getvalue())["predictions"]
    assert len(poses) == 1
    landmarks = poses[0]["landmarks"]
    assert len(landmarks) == 33
    assert all(-0.1 <= point["x"] <= 1.1 and -0.1 <= point["y"] <= 1.1 for point in landmarks.values())
    assert set(poses[0]["pose_analysis"]["joint_angles"]) == {"left_elbow", "right_elbow", "left_knee", "right_knee"}
    assert not set(poses[0]) & {"label", "emoji", "confidence", "bbox"}


def test_two_stage_detectors_always_send_emoji_and_full_image(farm: SimFarm, client: httpx.Client) -> None:
    for service in ("clip", "xception"):
        body = analyze(client, farm, service, ASTRONAUT.read_bytes())
        assert body["predictions"] and all("emoji" in p and isinstance(p["bbox"], dict) for p in body["predictions"])
        assert body["full_image"] and all(set(e) == {"label", "emoji", "confidence"} for e in body["full_image"])
        confidences = [p["confidence"] for p in body["predictions"]]
        assert confidences == sorted(confidences, reverse=True)


def test_detectors_disagree_but_find_the_same_objects(farm: SimFarm, client: httpx.Client) -> None:
    person = (20.0, 14.0, 362.0, 512.0)  # the astronaut, from the sidecar
    boxes = {}
    for service in ("yolov8", "rtdetr", "detectron2"):
        predictions = analyze(client, farm, service, ASTRONAUT.read_bytes())["predictions"]
        people = [p for p in predictions if p["label"] == "person"]
        assert len(people) == 1, service
        box = people[0]["bbox"]
        boxes[service] = (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"])
        assert iou(boxes[service], person) > 0.7
        assert people[0]["emoji"] == "🧑"
    assert len(set(boxes.values())) == 3  # jittered differently per detector


def test_coffee_is_seen_with_coco_labels_and_emoji_conventions(farm: SimFarm, client: httpx.Client) -> None:
    yolo = analyze(client, farm, "yolov8", COFFEE.read_bytes())["predictions"]
    detectron = analyze(client, farm, "detectron2", COFFEE.read_bytes())["predictions"]
    assert "cup" in {p["label"] for p in yolo} | {p["label"] for p in detectron}
    for prediction in yolo:  # verbatim lookup: "dining table" has no emoji
        if prediction["label"] == "dining table":
            assert "emoji" not in prediction
    for prediction in detectron:  # spaces → "_": "dining_table" maps
        if prediction["label"] == "dining table":
            assert prediction["emoji"] == "🍽️"


def test_image_without_sidecar_gets_no_detections(farm: SimFarm, client: httpx.Client) -> None:
    noise = jpeg(size=(320, 240))
    for service in DETECTORS:
        body = analyze(client, farm, service, noise)
        assert body["predictions"] == [] and "full_image" not in body, service
    blip = analyze(client, farm, "blip", noise)["predictions"][0]
    assert blip["text"].startswith("a photo with mostly") and "emoji_mappings" in blip
    assert "emoji_mappings" not in analyze(client, farm, "ollama", noise)["predictions"][0]
    ocr = analyze(client, farm, "ocr", noise)["predictions"][0]
    assert ocr == {"text": "", "has_text": False, "emoji": "", "text_regions": [], "emoji_mappings": []}


def test_same_bytes_give_the_same_body(farm: SimFarm, client: httpx.Client) -> None:
    data = ASTRONAUT.read_bytes()
    first = upload(client, farm, "rtdetr", data).content
    assert upload(client, farm, "rtdetr", data, "other-name.jpg").content == first
    fresh = Answerer(AnnotationIndex([SAMPLES_DIR]))  # no cache: computed anew
    fresh.index.scan()
    assert fresh.analyze(PROFILES["rtdetr"], Picture(data, "upload"), {}) == first


def test_colors_name_a_palette_computed_from_the_pixels(farm: SimFarm, client: httpx.Client) -> None:
    red = analyze(client, farm, "colors", jpeg((230, 20, 20)))["predictions"][0]
    assert "Red" in red["primary"]["copic"] and red["primary"]["temperature"] == "warm"
    assert set(red["primary"]) == {"hex", "temperature", "copic"}
    blue = analyze(client, farm, "colors", jpeg((30, 60, 200)))["predictions"][0]
    assert blue["primary"]["temperature"] == "cool"
    palette = analyze(client, farm, "colors", COFFEE.read_bytes())["predictions"][0]["palette"]
    assert 2 <= len(palette["colors"]) <= 8
    assert len({color["hex"] for color in palette["colors"]}) == len(palette["colors"])
    regional = client.get(farm.base_url("colors") + "/v3/analyze", params={"file": str(COFFEE), "regions": "4"})
    assert regional.json()["metadata"]["regions_analyzed"] == 4


def test_a_marker_colour_is_named_by_its_first_marker() -> None:
    for system, markers in SYSTEMS.items():
        for marker in markers:
            first_of_that_colour = next(m for m in markers if m.rgb == marker.rgb)
            assert nearest(system, marker.rgb) is first_of_that_colour
    white = nearest("copic", (255, 255, 255))
    assert all(sum((a - b) ** 2 for a, b in zip(m.rgb, (255, 255, 255), strict=True))
               >= sum((a - b) ** 2 for a, b in zip(white.rgb, (255, 255, 255), strict=True)) for m in SYSTEMS["copic"])


def test_a_palette_is_named_at_once_as_colour_by_colour() -> None:
    rng = random.Random(11)
    for system, markers in SYSTEMS.items():
        # Marker colours (ties between markers of one colour), midpoints of two markers (ties in distance), others.
        colours = [marker.rgb for marker in markers]
        colours += [tuple((a + b) // 2 for a, b in zip(rng.choice(markers).rgb, rng.choice(markers).rgb,
                                                       strict=True)) for _ in range(300)]
        colours += [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(300)]
        assert nearest_markers(system, colours) == [nearest(system, colour) for colour in colours]
    assert nearest_markers("copic", []) == []


def test_metadata_reports_real_dimensions_format_and_exif(farm: SimFarm, client: httpx.Client) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Windmill Optics"  # Make
    exif[0x0110] = "Test Model"  # Model
    data = jpeg((120, 130, 140), size=(90, 60), exif=exif)
    prediction = analyze(client, farm, "metadata", data)["predictions"][0]
    assert prediction["dimensions"] == {"height": 60, "width": 90}
    assert prediction["aspect_ratio"] == {"category": "landscape", "ratio": 1.5}
    assert prediction["file"] == {"file_size": len(data), "file_type": "jpeg"}
    assert prediction["exif_data"] == {"EXIF:Make": "Windmill Optics", "EXIF:Model": "Test Model"}
    reencoded = analyze_metadata(Image.open(io.BytesIO(data)), data, "jpeg", reencode=True)
    assert "exif_data" not in reencoded and reencoded["file"]["file_type"] == "jpeg"


def test_caption_score_prefers_a_caption_that_names_the_image(farm: SimFarm, client: httpx.Client) -> None:
    base = farm.base_url("caption_score") + "/score"

    def score(caption: str) -> float:
        response = client.get(base, params={"file": str(COFFEE), "caption": caption})
        assert response.status_code == 200 and response.json()["image_source"] == "file"
        return response.json()["similarity_score"]

    assert score("a cup of espresso on a saucer") > score("a giraffe riding a skateboard") + 0.05
    missing = client.get(base, params={"file": str(COFFEE)})
    assert missing.status_code == 400
    assert missing.json()["similarity_score"] is None
    assert missing.json()["error"]["message"] == "Must provide non-empty caption string"


def test_caption_score_takes_no_upload_as_the_clip_of_df57b25(farm: SimFarm, client: httpx.Client,
                                                              catalog: Catalog) -> None:
    # Spec §3.4: a multipart image upload is not supported, only `url` or `file`. The stand-in once took one, and
    # hid that every caption score sent to the real service came back 400.
    response = upload(client, farm, "caption_score", ASTRONAUT.read_bytes(), "astronaut.jpg",
                      {"caption": "an astronaut in an orange suit"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Must provide either url or file parameter"
    # `farm serve --score-uploads`: as the clip-score service of 2026, which the benchmarks' baseline needs.
    taking = start_farm(catalog, services=["caption_score"], score_uploads=True)
    try:
        response = upload(client, taking, "caption_score", ASTRONAUT.read_bytes(), "astronaut.jpg",
                          {"caption": "an astronaut in an orange suit"})
        assert response.status_code == 200 and response.json()["image_source"] == "upload"
    finally:
        taking.stop()


@pytest.mark.parametrize(
    ("service", "params", "status", "message"),
    [
        ("yolov8", {}, 400, "Must provide either 'url' or 'file' parameter, or POST a file"),
        ("blip", {}, 400, "Must provide either url or file parameter, or POST a file"),
        ("metadata", {}, 400, "Must provide either 'url' or 'file' parameter"),
        ("yolov8", {"url": "http://x/a.jpg", "file": "/a.jpg"}, 400, "Cannot provide both 'url' and 'file' parameters"),
        ("pose", {"url": "http://x/a.jpg", "file": "/a.jpg"}, 400,
         "Cannot provide both 'url' and 'file' parameters - choose one"),
        ("yolov8", {"file": "/nowhere/a.jpg"}, 400, "File not found: /nowhere/a.jpg"),
        ("clip", {"file": "/nowhere/a.jpg"}, 500, "Failed to load image file: File not found: /nowhere/a.jpg"),
        ("rtdetr", {"file": "/nowhere/a.txt"}, 400, "File type not allowed"),
        ("yolov8", {"url": "not a url"}, 400, "Invalid URL format"),
    ],
)
def test_input_errors_use_the_v3_envelope(
    farm: SimFarm, client: httpx.Client, service: str, params: dict[str, str], status: int, message: str
) -> None:
    response = client.get(farm.base_url(service) + "/v3/analyze", params=params)
    assert response.status_code == status
    body = response.json()
    assert body["status"] == "error" and body["predictions"] == []
    assert body["service"] == PROFILES[service].service_field
    assert body["error"] == {"message": message}
    assert ("model_info" in body["metadata"]) == (service in ("metadata", "pose"))


def test_url_that_is_not_an_image_is_refused(farm: SimFarm, client: httpx.Client, image_site: str) -> None:
    response = client.get(farm.base_url("yolov8") + "/v3/analyze", params={"url": f"{image_site}/notes.txt"})
    assert (response.status_code, response.json()["error"]["message"]) == (400, "URL does not point to an image")
    missing = client.get(farm.base_url("ocr") + "/v3/analyze", params={"url": f"{image_site}/gone.jpg"})
    assert missing.status_code == 400
    assert missing.json()["error"]["message"].startswith("Failed to download/process image: 404 Client Error")


def test_undecodable_images_get_each_services_code(farm: SimFarm, client: httpx.Client) -> None:
    junk = b"these bytes are no image"
    yolo = upload(client, farm, "yolov8", junk)
    assert yolo.status_code == 500
    assert yolo.json()["error"]["message"].startswith("Failed to process uploaded image: cannot identify image file")
    assert upload(client, farm, "metadata", junk).status_code == 400
    assert upload(client, farm, "blip", junk).json()["error"]["message"].startswith("Internal error: ")


def test_upload_rules(farm: SimFarm, client: httpx.Client) -> None:
    assert upload(client, farm, "face", ASTRONAUT.read_bytes(), "notes.txt").json()["error"]["message"] == (
        "File type not allowed"
    )
    # httpx drops an empty filename, so the part is written by hand.
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename=""\r\n\r\nxyz\r\n--b--\r\n'
    empty_name = client.post(farm.base_url("ocr") + "/v3/analyze", content=body,
                             headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert (empty_name.status_code, empty_name.json()["error"]["message"]) == (400, "No file selected")
    no_file = client.post(farm.base_url("metadata") + "/v3/analyze", data={"other": "x"})
    assert (no_file.status_code, no_file.json()["error"]["message"]) == (400, "No file provided in POST request")
    falls_through = client.post(farm.base_url("yolov8") + "/v3/analyze", params={"file": str(COFFEE)}, data={"a": "b"})
    assert falls_through.status_code == 200


def test_legacy_handlers_answer_with_string_errors(farm: SimFarm, client: httpx.Client) -> None:
    too_large = upload(client, farm, "yolov8", b"\xff" * (8 * 1024 * 1024 + 10))
    assert (too_large.status_code, too_large.json()) == (413, {"error": "File too large", "status": "error"})
    bad = client.post(farm.base_url("detectron2") + "/v3/analyze", content=b"--nope",
                      headers={"Content-Type": "multipart/form-data; boundary=abc"})
    assert (bad.status_code, bad.json()) == (400, {"error": "Bad request", "status": "error"})
    oversized_v3 = upload(client, farm, "nsfw2", b"\xff" * (8 * 1024 * 1024 + 10))
    assert oversized_v3.json()["error"]["message"] == "File too large. Maximum size: 8MB"


def test_unknown_paths_and_methods_get_html(farm: SimFarm, client: httpx.Client) -> None:
    missing = client.get(farm.base_url("yolov8") + "/v4/analyze")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert b"<title>404 Not Found</title>" in missing.content
    wrong = client.put(farm.base_url("yolov8") + "/v3/analyze")
    assert wrong.status_code == 405 and b"Method Not Allowed" in wrong.content


def test_port_7778_is_also_the_clip_classification_backend(farm: SimFarm, client: httpx.Client) -> None:
    body = client.get(farm.base_url("caption_score") + "/v3/analyze", params={"file": str(COFFEE)}).json()
    assert body["service"] == "clip" and body["metadata"]["model_info"] == {"framework": "OpenAI"}
    labels = [p["label"] for p in body["predictions"]]
    assert "coffee cup" in labels  # natural text with spaces
    confidences = [p["confidence"] for p in body["predictions"]]
    assert confidences == sorted(confidences, reverse=True) and sum(confidences) < 1


def test_ollama_reports_the_prompt_and_model_it_was_given(farm: SimFarm, client: httpx.Client) -> None:
    response = upload(client, farm, "ollama", COFFEE.read_bytes(), fields={"prompt": "What is this?", "model": "m"})
    assert response.json()["metadata"]["model_info"] == {"framework": "Ollama", "model": "m", "prompt": "What is this?"}


def test_shiny_is_absent_unless_injected() -> None:
    index = AnnotationIndex([SAMPLES_DIR])
    index.scan()
    picture = Picture(ASTRONAUT.read_bytes(), "upload")
    plain = json.loads(Answerer(index).analyze(PROFILES["yolov8"], picture, {}))
    assert all("shiny" not in p for p in plain["predictions"])
    shiny = json.loads(Answerer(index, Options(shiny_rate=1.0)).analyze(PROFILES["yolov8"], picture, {}))
    assert all(p["shiny"] is True for p in shiny["predictions"])


def test_options_and_head_are_answered_like_flask(farm: SimFarm, client: httpx.Client) -> None:
    options = client.options(farm.base_url("yolov8") + "/v3/analyze")
    assert options.status_code == 200 and "POST" in options.headers["allow"]
    head = client.head(farm.base_url("yolov8") + "/health")
    assert head.status_code == 200 and head.content == b""


def test_every_service_is_healthy(farm: SimFarm, client: httpx.Client) -> None:
    for service in farm.services:
        response = client.get(farm.base_url(service) + "/health")
        assert response.status_code == 200 and response.json()["status"] == "healthy", service


def test_sidecars_are_found_by_content_in_annotation_dirs(catalog: Catalog, tmp_path: Path,
                                                          client: httpx.Client) -> None:
    shutil.copy(SAMPLES_DIR / "chelsea.jpg", tmp_path / "kitty.jpg")
    shutil.copy(SAMPLES_DIR / "chelsea.boxes.json", sidecar_path_for(tmp_path / "kitty.jpg"))
    cat = Image.open(SAMPLES_DIR / "chelsea.jpg").resize((200, 133))
    cat.save(tmp_path / "small.jpg", quality=80)
    farm = start_farm(catalog, services=["detectron2"], annotation_dirs=[tmp_path])
    try:
        predictions = analyze(client, farm, "detectron2", (tmp_path / "kitty.jpg").read_bytes())["predictions"]
        assert [p["label"] for p in predictions if p["label"] == "cat"] == ["cat"]
        # The bundled samples are not in this farm's directories: no sidecar, no detections.
        assert analyze(client, farm, "detectron2", ASTRONAUT.read_bytes())["predictions"] == []
    finally:
        farm.stop()


def test_index_rescans_lazily_on_a_miss(tmp_path: Path) -> None:
    now = [0.0]
    index = AnnotationIndex([tmp_path], rescan_interval_s=5.0, clock=lambda: now[0])
    index.scan()
    data = COFFEE.read_bytes()
    digest = Picture(data, "upload").digest
    (tmp_path / "late.jpg").write_bytes(data)
    shutil.copy(SAMPLES_DIR / "coffee.boxes.json", tmp_path / "late.boxes.json")
    assert index.for_digest(digest) is None  # scanned moments ago: no rescan yet
    now[0] = 6.0
    found = index.for_digest(digest)
    assert found is not None and found.objects[0].label == "cup"


def test_the_index_finds_images_in_sub_folders_by_any_suffix_case_and_skips_broken_links(tmp_path: Path) -> None:
    (tmp_path / "deep" / "deeper").mkdir(parents=True)
    shutil.copy(COFFEE, tmp_path / "deep" / "deeper" / "mug.JPG")
    shutil.copy(SAMPLES_DIR / "coffee.boxes.json", tmp_path / "deep" / "deeper" / "mug.boxes.json")
    shutil.copy(SAMPLES_DIR / "chelsea.boxes.json", tmp_path / "gone.boxes.json")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a link to nothing is not an image
    index = AnnotationIndex([tmp_path])
    index.scan()
    found = index.for_digest(Picture(COFFEE.read_bytes(), "upload").digest)
    assert found is not None and found.objects[0].label == "cup"
    assert len(index._by_digest) == 1


def test_a_look_alike_added_by_a_rescan_is_found(tmp_path: Path) -> None:
    # The look-alike table is kept between searches: a rescan that indexes a new image must reach it.
    now = [0.0]
    index = AnnotationIndex([tmp_path], rescan_interval_s=5.0, clock=lambda: now[0])
    index.scan()
    with Image.open(COFFEE) as original:
        look_alike = original.convert("RGB").resize((original.width // 2, original.height // 2))
    assert index.for_look_alike(look_alike) is None
    shutil.copy(COFFEE, tmp_path / "late.jpg")
    shutil.copy(SAMPLES_DIR / "coffee.boxes.json", tmp_path / "late.boxes.json")
    now[0] = 6.0
    assert index.for_digest("not an indexed digest") is None  # the miss rescans
    found = index.for_look_alike(look_alike)
    assert found is not None and found.objects[0].label == "cup"
    assert index.for_look_alike(look_alike.crop((0, 0, 40, 90))) is None  # another aspect: no candidate


def test_the_start_up_scan_makes_the_look_alike_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first crop's search must not make thumbnails of the whole index: it held every other search behind the
    lock, past the crops' timeout on a slow machine."""
    index = AnnotationIndex([SAMPLES_DIR])
    index.scan()

    def no_opening(*args: object, **kwargs: object) -> None:
        raise AssertionError("a search opened an indexed image")

    monkeypatch.setattr("windmill.simfarm.annotations.Image.open", no_opening)
    crop = Image.new("RGB", (60, 140), "gray")
    assert index.for_look_alike(crop) is None


def test_an_unreadable_image_beside_a_sidecar_is_left_out_of_the_look_alikes(tmp_path: Path) -> None:
    shutil.copy(COFFEE, tmp_path / "mug.jpg")
    shutil.copy(SAMPLES_DIR / "coffee.boxes.json", tmp_path / "mug.boxes.json")
    (tmp_path / "broken.jpg").write_bytes(b"not an image at all")
    shutil.copy(SAMPLES_DIR / "chelsea.boxes.json", tmp_path / "broken.boxes.json")
    index = AnnotationIndex([tmp_path])
    index.scan()  # starts; the broken file is indexed by its digest but has no thumbnail
    with Image.open(COFFEE) as original:
        look_alike = original.convert("RGB").resize((original.width // 2, original.height // 2))
    found = index.for_look_alike(look_alike)
    assert found is not None and found.objects[0].label == "cup"


def test_sidecars_scale_to_a_resized_copy() -> None:
    index = AnnotationIndex([SAMPLES_DIR])
    sidecar = index.beside(COFFEE)
    assert sidecar is not None
    half = sidecar.fitted(300, 200)
    assert half.objects[0].bbox == tuple(round(v / 2) for v in sidecar.objects[0].bbox)


def test_a_taken_port_is_a_one_sentence_error(catalog: Catalog) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        farm = SimFarm(catalog, services=["yolov8"], port_offset=port - catalog["yolov8"].port)
        with pytest.raises(WindmillError, match=f"cannot serve yolov8 on 127.0.0.1:{port}"):
            farm.start()


def test_fault_rates_are_validated(catalog: Catalog) -> None:
    with pytest.raises(WindmillError, match="between 0 and 1"):
        SimFarm(catalog, error_rate=1.5)
    with pytest.raises(WindmillError, match="add up to"):
        SimFarm(catalog, error_rate=0.6, timeout_rate=0.6)


def test_fault_decisions_are_reproducible_per_seed() -> None:
    rates = FaultRates(error_rate=0.05, timeout_rate=0.02, malformed_rate=0.01)

    def run(seed: int) -> list[Fault]:
        plan = FaultPlan(rates, seed)
        return [plan.decide("yolov8").fault for _ in range(5000)]

    first = run(7)
    assert run(7) == first and run(8) != first
    errors = first.count(Fault.ERROR) / len(first)
    assert 0.04 < errors < 0.06
    assert 0.01 < first.count(Fault.TIMEOUT) / len(first) < 0.03


def test_injected_errors_and_malformed_bodies(catalog: Catalog, client: httpx.Client) -> None:
    failing = start_farm(catalog, services=["yolov8", "ocr"], error_rate=1.0)
    try:
        for service in ("yolov8", "ocr"):
            for _ in range(6):
                response = upload(client, failing, service, COFFEE.read_bytes())
                assert response.status_code == 500
                assert response.json()["status"] == "error"
    finally:
        failing.stop()
    garbled = start_farm(catalog, services=["yolov8"], malformed_rate=1.0, seed=3)
    try:
        kinds = set()
        for _ in range(12):
            response = upload(client, garbled, "yolov8", COFFEE.read_bytes())
            kinds.add(response.headers["content-type"].split(";")[0])
            with pytest.raises(json.JSONDecodeError):
                json.loads(response.content)
        assert kinds == {"application/json", "text/html"}
    finally:
        garbled.stop()


def test_partial_error_rate_is_roughly_honoured(catalog: Catalog, client: httpx.Client) -> None:
    farm = start_farm(catalog, services=["nsfw2"], error_rate=0.3, seed=11)
    try:
        statuses = [upload(client, farm, "nsfw2", COFFEE.read_bytes()).status_code for _ in range(150)]
    finally:
        farm.stop()
    assert 0.18 < statuses.count(500) / len(statuses) < 0.42
    assert set(statuses) == {200, 500}


def test_injected_timeouts_hold_the_request_until_stop(catalog: Catalog) -> None:
    farm = start_farm(catalog, services=["rtdetr", "blip"], timeout_rate=1.0, broken_blip_health=True)
    try:
        with httpx.Client(timeout=0.3) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                upload(impatient, farm, "rtdetr", COFFEE.read_bytes())
            health = impatient.get(farm.base_url("blip") + "/health")  # /health is never faulted
            assert (health.status_code, health.json()) == (500, {"error": "Internal server error", "status": "error"})
    finally:
        farm.stop()  # must release the held request promptly


def test_a_re_encoded_sample_still_finds_its_sidecar(farm: SimFarm, client: httpx.Client) -> None:
    # Clients convert grayscale JPEGs to RGB before sending: new bytes, same picture, same annotations.
    with Image.open(SAMPLES_DIR / "camera.jpg") as original:
        buffer = io.BytesIO()
        original.convert("RGB").resize((256, 256)).save(buffer, "JPEG", quality=90)
    labels = {p["label"] for p in analyze(client, farm, "yolov8", buffer.getvalue())["predictions"]}
    assert "person" in labels
    # A different picture of the same size does not borrow them.
    assert analyze(client, farm, "yolov8", jpeg((90, 90, 90), size=(512, 512)))["predictions"] == []


def test_a_stand_in_that_is_restarted_listens_below_the_ports_outgoing_connections_take() -> None:
    # Stopped, its ports are free for the machine's outgoing connections to take, and the restart failed with
    # "Address already in use" (seen in CI): tests and the chaos run keep it below the ephemeral range.
    from windmill.simfarm.ports import ephemeral_floor, restartable_offset

    rng = random.Random(7)
    offsets = {restartable_offset(7799, rng) for _ in range(500)}
    assert all(offset + 7799 < ephemeral_floor() for offset in offsets) and len(offsets) > 50
