"""Answer normalisation, pure: the contract's JSON examples (spec §3) and every malformed variant."""

from __future__ import annotations

import copy
import json
import math

import orjson
import pytest

from windmill.farm import ServiceCallError, error_message, normalize_answer, normalize_score_answer
from windmill.farm.normalize import (
    canonical_bbox,
    clamp_bbox,
    describe_body,
    health_detail,
    parse_answer_json,
    parse_json,
)

META = {"processing_time": 0.046, "model_info": {"framework": "Ultralytics YOLOv8"}}

YOLO = {
    "service": "yolo",
    "status": "success",
    "predictions": [
        {
            "label": "person",
            "confidence": 0.912,
            "bbox": {"x": 212, "y": 48, "width": 231, "height": 371},
            "emoji": "🧑",
        },
        {"label": "dog", "confidence": 0.874, "bbox": {"x": 388, "y": 214, "width": 176, "height": 160}, "emoji": "🐶"},
        {"label": "dining table", "confidence": 0.641, "bbox": {"x": 0, "y": 150, "width": 640, "height": 277}},
    ],
    "metadata": META,
}

CLIP_DETECTION = {
    "service": "YOLO-CLIP-Detector",
    "status": "success",
    "predictions": [
        {
            "label": "golden_retriever",
            "emoji": "🐶",
            "confidence": 0.611,
            "bbox": {"x": 386, "y": 212, "width": 179, "height": 163},
            "merged_count": 2,
        },
    ],
    "full_image": [
        {"label": "living_room_scene", "emoji": "", "confidence": 0.287},
        {"label": "studio_couch", "emoji": "🪑", "confidence": 0.173},
    ],
    "metadata": {"processing_time": 0.932, "model_info": {"framework": "YOLO + CLIP"}},
}

FACE = {
    "service": "face",
    "status": "success",
    "predictions": [
        {
            "label": "face",
            "emoji": "🙂",
            "confidence": 0.912,
            "bbox": [81, 23, 58, 58],
            "keypoints": {"right_eye": [95, 41], "left_eye": [120, 40]},
        },
    ],
    "metadata": {"processing_time": 0.021, "model_info": {"framework": "MediaPipe"}},
}

BLIP = {
    "service": "blip",
    "status": "success",
    "predictions": [
        {
            "text": "a man sitting on a couch with a dog",
            "shiny": True,
            "emoji_mappings": [{"word": "man", "emoji": "🧑"}, {"word": "dog", "emoji": "🐶"}, {"word": "odd"}],
        },
    ],
    "metadata": {"processing_time": 0.412, "model_info": {"framework": "BLIP"}},
}

OCR = {
    "service": "ocr",
    "status": "success",
    "predictions": [
        {
            "text": "FRESH BREAD",
            "has_text": True,
            "emoji": "💬",
            "text_regions": [
                {"text": "FRESH BREAD", "confidence": 0.981, "bbox": {"x": 112, "y": 64, "width": 298, "height": 41}},
                {"text": "??", "confidence": "NaN", "bbox": {"x": 1, "y": 1, "width": 5, "height": 5}},
            ],
            "emoji_mappings": [{"word": "bread", "emoji": "🍞"}],
        },
    ],
    "metadata": {"processing_time": 0.318, "model_info": {"framework": "PaddleOCR"}},
}

POSE = {
    "service": "pose",
    "status": "success",
    "predictions": [
        {
            "landmarks": {"nose": {"x": 0.512, "y": 0.118, "z": -0.223, "visibility": 0.94}},
            "pose_analysis": {"joint_angles": {"left_elbow": 130.9}},
        },
    ],
    "metadata": {"processing_time": 0.212, "model_info": {"framework": "MediaPipe Pose"}},
}

V3_ERROR = {
    "service": "yolo",
    "status": "error",
    "predictions": [],
    "error": {"message": "File not found: /data/img/123.jpg"},
    "metadata": {"processing_time": 0.001},
}
LEGACY_ERROR = {"error": "File too large", "status": "error"}


def with_prediction(base: dict, index: int = 0, **changes: object) -> dict:
    answer = copy.deepcopy(base)
    answer["predictions"][index].update(changes)
    return answer


def test_a_contract_answer_keeps_its_fields_and_gains_canonical_ones():
    data = normalize_answer("yolov8", YOLO)
    assert data["service"] == "yolov8" and data["reported_service"] == "yolo"
    assert data["metadata"] == META and data["status"] == "success"
    assert [p["label"] for p in data["predictions"]] == ["person", "dog", "dining table"]
    assert data["predictions"][0] == YOLO["predictions"][0]
    assert data["predictions"][2]["emoji"] == ""  # missing emoji and "" are the same
    assert "normalization_notes" not in data
    assert YOLO["predictions"][2].get("emoji") is None  # the input is not modified


@pytest.mark.parametrize(
    ("service", "answer", "check"),
    [
        (
            "clip",
            CLIP_DETECTION,
            lambda d: d["full_image"][0]["emoji"] == "" and d["predictions"][0]["merged_count"] == 2,
        ),
        ("clip", CLIP_DETECTION, lambda d: d["reported_service"] == "YOLO-CLIP-Detector"),
        ("face", FACE, lambda d: d["predictions"][0]["bbox"] == {"x": 81, "y": 23, "width": 58, "height": 58}),
        ("face", FACE, lambda d: d["predictions"][0]["keypoints"]["right_eye"] == [95, 41]),
        ("blip", BLIP, lambda d: d["predictions"][0]["shiny"] is True and d["predictions"][0]["emoji"] == ""),
        ("blip", BLIP, lambda d: d["predictions"][0]["emoji_mappings"][2] == {"word": "odd", "emoji": ""}),
        ("blip", BLIP, lambda d: "reported_service" not in d),
        ("ocr", OCR, lambda d: [r["text"] for r in d["predictions"][0]["text_regions"]] == ["FRESH BREAD"]),
        ("ocr", OCR, lambda d: "emoji" not in d["predictions"][0]["text_regions"][0]),
        ("pose", POSE, lambda d: d["predictions"][0]["landmarks"]["nose"]["x"] == 0.512),
    ],
    ids=[
        "full-image-empty-emoji",
        "two-stage-service-name",
        "face-list-bbox",
        "face-keypoints-kept",
        "blip-shiny-kept",
        "mapping-missing-emoji",
        "same-name-not-reported",
        "ocr-nan-region-dropped",
        "ocr-region-no-emoji",
        "pose-untouched",
    ],
)
def test_each_service_shape_normalises(service, answer, check):
    assert check(normalize_answer(service, answer))


@pytest.mark.parametrize("service", ["nsfw2", "blip"])
def test_a_one_prediction_answer_without_a_usable_prediction_is_malformed_not_nothing_found(service):
    # NSFW, OCR, colors, metadata and captions always answer one prediction (spec §2.3): stored as a success with
    # none, a bad confidence read as "no NSFW detected" or "no caption".
    answer = {"service": service, "status": "success", "metadata": META,
              "predictions": [{"confidence": True, "emoji": "", "nsfw": False}]}
    with pytest.raises(ServiceCallError, match=r"its one prediction is unusable \(prediction 0 dropped: confidence"
                       ) as failure:
        normalize_answer(service, answer)
    assert failure.value.kind == "malformed"
    empty = {"service": service, "status": "success", "metadata": META, "predictions": []}
    with pytest.raises(ServiceCallError, match=r"no prediction, where this service always answers one") as failure:
        normalize_answer(service, empty)
    assert failure.value.kind == "malformed"
    assert normalize_answer("face", empty | {"service": "face"})["predictions"] == []  # no face: nothing found
    # A detector finding nothing usable did find nothing: still a success.
    assert normalize_answer("yolov8", with_prediction(YOLO, 0, confidence=True) | {
        "predictions": [with_prediction(YOLO, 0, confidence=True)["predictions"][0]]})["predictions"] == []


@pytest.mark.parametrize(
    ("confidence", "kept", "note"),
    [
        (0.5, 0.5, None),
        (1, 1.0, None),
        (0, 0.0, None),
        ("0.87", 0.87, 'confidence "0.87" read as 0.87'),
        (1.0000001, 1.0, None),
        (float("nan"), None, "confidence is NaN"),
        ("NaN", None, "confidence is NaN"),
        (float("inf"), None, "confidence is infinite"),
        ("high", None, 'confidence "high" is not a number'),
        (None, None, "confidence is null"),
        (True, None, "confidence true is not a number"),
        ([0.5], None, "confidence is a array, not a number"),
        (-0.2, None, "confidence -0.2 is outside 0…1"),
        (87, None, "confidence 87 is outside 0…1"),
    ],
)
def test_confidences_are_floats_or_the_prediction_is_dropped(confidence, kept, note):
    data = normalize_answer("yolov8", with_prediction(YOLO, 1, confidence=confidence))
    labels = [p["label"] for p in data["predictions"]]
    if kept is None:
        assert labels == ["person", "dining table"]
    else:
        assert data["predictions"][1]["confidence"] == kept
        assert isinstance(data["predictions"][1]["confidence"], float)
    notes = data.get("normalization_notes", [])
    if note is None:
        assert notes == []
    else:
        assert any(note in line for line in notes), notes


@pytest.mark.parametrize(
    ("bbox", "image_size", "expected", "note"),
    [
        ({"x": 10, "y": 20, "width": 30, "height": 40}, None, {"x": 10, "y": 20, "width": 30, "height": 40}, None),
        ([10, 20, 30, 40], None, {"x": 10, "y": 20, "width": 30, "height": 40}, None),
        ([10.5, 20, 30, 40.25], None, {"x": 10.5, "y": 20, "width": 30, "height": 40.25}, None),
        ({"x": "10", "y": 20, "width": 30, "height": 40}, None, {"x": 10, "y": 20, "width": 30, "height": 40}, None),
        ([-12, -4, 58, 58], None, {"x": 0, "y": 0, "width": 46, "height": 54}, "clamped to [0, 0, 46, 54]"),
        ([600, 400, 100, 100], (640, 427), {"x": 600, "y": 400, "width": 40, "height": 27}, "clamped"),
        ([700, 10, 50, 50], (640, 427), None, "lies outside the image"),
        ([-100, -100, 50, 50], None, None, "lies outside the image"),
        ({"x": 1, "y": 2, "width": 0, "height": 5}, None, None, "has no area"),
        ({"x": 1, "y": 2, "width": -3, "height": 5}, None, None, "has no area"),
        ({"x": 1, "y": 2, "width": 3}, None, None, "lacks height"),
        ([1, 2, 3], None, None, "list of 3 items"),
        ("10,20,30,40", None, None, "is a string, not a box"),
        ({"x": float("nan"), "y": 2, "width": 3, "height": 4}, None, None, "x is NaN"),
        ({"x": "left", "y": 2, "width": 3, "height": 4}, None, None, 'x "left" is not a number'),
    ],
    ids=[
        "dict",
        "list",
        "fractional",
        "numeric-string",
        "negative-origin",
        "past-the-edge",
        "right-of-image",
        "above-left",
        "zero-width",
        "negative-width",
        "missing-key",
        "short-list",
        "string",
        "nan",
        "word",
    ],
)
def test_boxes_become_canonical_dicts_or_drop_their_prediction(bbox, image_size, expected, note):
    answer = with_prediction(FACE, bbox=bbox)
    data = normalize_answer("face", answer, image_size=image_size)
    if expected is None:
        assert data["predictions"] == []
    else:
        assert data["predictions"][0]["bbox"] == expected
    notes = data.get("normalization_notes", [])
    assert (note is None and notes == []) or any(note in line for line in notes), notes


def test_a_null_bbox_is_removed_not_fatal():
    data = normalize_answer("detectron2", with_prediction(YOLO, 0, bbox=None))
    assert "bbox" not in data["predictions"][0] and len(data["predictions"]) == 3


@pytest.mark.parametrize(
    ("answer", "kind", "message"),
    [
        (V3_ERROR, "rejected", "File not found: /data/img/123.jpg"),
        (LEGACY_ERROR, "rejected", "File too large"),
        ({"status": "error", "error": {}}, "rejected", "no message"),
        ({"status": "error", "error": {"code": 7}}, "rejected", '{"code": 7}'),
        ({"status": "success", "metadata": {}}, "malformed", "no predictions list (found none)"),
        ({"status": "success", "predictions": None}, "malformed", "no predictions list (found none)"),
        ({"status": "success", "predictions": {"a": 1}}, "malformed", "(found a object)"),
        ({"service": "yolo", "predictions": []}, "malformed", "status is null, expected 'success'"),
        ({"status": "pending", "predictions": []}, "malformed", 'status is "pending"'),
        ([{"status": "success"}], "malformed", "a JSON array, not an object"),
        ("Internal Server Error", "malformed", "a JSON string, not an object"),
    ],
    ids=[
        "v3-envelope",
        "legacy-envelope",
        "empty-error",
        "error-without-message",
        "missing-predictions",
        "null-predictions",
        "object-predictions",
        "missing-status",
        "odd-status",
        "array",
        "string",
    ],
)
def test_error_envelopes_and_broken_answers_raise_classified_errors(answer, kind, message):
    with pytest.raises(ServiceCallError) as failure:
        normalize_answer("yolov8", answer)
    error = failure.value
    assert error.kind == kind and error.retryable is False
    assert message in error.message and error.message.startswith("yolov8: ")


def test_empty_predictions_are_a_valid_answer():
    data = normalize_answer("face", {"service": "face", "status": "success", "predictions": [], "metadata": {}})
    assert data["predictions"] == [] and "normalization_notes" not in data


@pytest.mark.parametrize(
    ("mutation", "note"),
    [
        ({"predictions": [1, "x", None, YOLO["predictions"][0]]}, "prediction 0 dropped: a number, not an object"),
        ({"full_image": "none"}, "full_image removed"),
        ({"metadata": None}, "metadata replaced: a null"),
        ({"metadata": {"processing_time": float("nan")}}, "answer.metadata.processing_time: nan replaced by null"),
    ],
)
def test_structural_faults_are_repaired_and_noted(mutation, note):
    answer = {**copy.deepcopy(YOLO), **mutation}
    data = normalize_answer("yolov8", answer)
    assert any(note in line for line in data["normalization_notes"]), data["normalization_notes"]
    json.dumps(data, allow_nan=False)  # storable as jsonb


def test_nothing_non_finite_or_nul_survives():
    answer = copy.deepcopy(POSE)
    answer["predictions"][0]["landmarks"]["nose"]["z"] = float("-inf")
    answer["predictions"][0]["label\x00"] = "pe\x00rson"
    data = normalize_answer("pose", answer)
    text = json.dumps(data, allow_nan=False, ensure_ascii=False)
    assert "\\u0000" not in text and "\x00" not in text
    assert data["predictions"][0]["landmarks"]["nose"]["z"] is None
    assert data["predictions"][0]["label"] == "person"


def test_what_jsonb_cannot_hold_is_made_storable_not_left_to_fail_every_attempt():
    # Each ended as a dead job with no row: the answer's write failed five times (orjson refuses an integer beyond
    # 64 bits and a lone surrogate; float() refused a 400-digit confidence).
    import orjson

    answer = json.loads('{"status": "success", "predictions": [{"label": "do\\ud800g", "emoji": "", '
                        '"confidence": 0.5}, {"label": "cat", "emoji": "", "confidence": 1' + "0" * 400 + '}], '
                        '"metadata": {"processing_time": 123456789012345678901234567890}}')
    data = normalize_answer("yolov8", answer)
    orjson.dumps(data)  # what writes the jsonb
    assert [prediction["label"] for prediction in data["predictions"]] == ["do\ufffdg"]
    assert data["metadata"]["processing_time"] is None
    assert any("is too large" in note for note in data["normalization_notes"]), data["normalization_notes"]


def _read(body: bytes) -> dict:
    """As the farm client reads an answer: parsed, and normalised with what the parse said of it."""
    payload, fit_as_read = parse_answer_json(body)
    return normalize_answer("pose", payload, fit_as_read=fit_as_read)


def _framework(data: dict) -> str:
    return data["metadata"]["model_info"]["framework"]


POSE_TEXT = json.dumps(POSE)


@pytest.mark.parametrize(("body", "fit", "check"), [
    # What orjson reads is fit for jsonb but for NUL characters, which only the escape can bring.
    (POSE_TEXT.encode(), True, lambda data: data == normalize_answer("pose", copy.deepcopy(POSE))),
    (POSE_TEXT.replace("MediaPipe", "Media\\u0000Pipe").encode(), False,
     lambda data: _framework(data) == "MediaPipe Pose"),
    # What orjson refuses goes to json, and what json reads is walked.
    (POSE_TEXT.replace("-0.223", "NaN").encode(), False,
     lambda data: data["predictions"][0]["landmarks"]["nose"]["z"] is None),
    (POSE_TEXT.replace("MediaPipe", "Media\\ud800Pipe").encode(), False,
     lambda data: _framework(data) == "Media\ufffdPipe Pose"),
    (POSE_TEXT.replace("0.212", "1" + "0" * 30).encode(), False,
     lambda data: data["metadata"]["processing_time"] is None),
], ids=["plain", "nul", "nan", "lone-surrogate", "long-integer"])
def test_an_answer_read_by_orjson_is_walked_for_what_jsonb_refuses_only_when_it_could_hold_it(body, fit, check):
    assert parse_answer_json(body)[1] is fit
    data = _read(body)
    assert check(data), data
    orjson.dumps(data)  # what writes the jsonb
    assert "\\u0000" not in json.dumps(data, allow_nan=False)


def test_an_answer_nested_deeper_than_jsonb_is_written_is_malformed_not_a_write_failing_every_attempt():
    # orjson reads 1,024 levels and the walk reaches about a thousand, but orjson writes 255 at most: such an answer
    # passed normalisation and its write failed on every attempt.
    deep: dict = {}
    for _ in range(300):
        deep = {"a": deep}
    for read in (lambda: _read(json.dumps({**POSE, "metadata": deep}).encode()),
                 lambda: normalize_answer("pose", {**copy.deepcopy(POSE), "metadata": deep})):
        with pytest.raises(ServiceCallError, match="not storable as jsonb: nested too deeply") as failure:
            read()
        assert failure.value.kind == "malformed" and not failure.value.retryable


def test_a_box_whose_far_edge_overflows_is_dropped():
    assert canonical_bbox({"x": 1e308, "y": 0, "width": 1e308, "height": 5}) == (
        None, "reaches past the largest number (its far edge is infinite)")
    answer = copy.deepcopy(YOLO)
    answer["predictions"][0]["bbox"] = {"x": 1e308, "y": 1, "width": 1e308, "height": 5}
    data = normalize_answer("yolov8", answer)  # no image size: nothing would have cut it
    assert [prediction["label"] for prediction in data["predictions"]] == ["dog", "dining table"]


def test_an_answer_keeps_its_thousand_most_confident_predictions():
    # One answer of 60,000 boxes took a worker to 23 GB in harmonization, which compares a class's boxes pairwise.
    answer = {"status": "success", "predictions": [
        {"label": "dog", "emoji": "🐕", "confidence": (index % 997) / 997,
         "bbox": {"x": index % 500, "y": 1, "width": 5, "height": 5}} for index in range(5000)]}
    data = normalize_answer("yolov8", answer)
    kept = data["predictions"]
    assert len(kept) == 1000
    assert min(prediction["confidence"] for prediction in kept) >= max(
        prediction["confidence"] for prediction in answer["predictions"]) * 0.79
    assert "4000 of 5000 predictions dropped: over 1000, the least confident" in data["normalization_notes"]


def test_a_label_of_thousands_of_characters_is_cut():
    # Without an emoji it became the box's class, and the merge's write overflowed an index row on every attempt.
    answer = {"status": "success", "predictions": [{"label": "cat" * 2000, "emoji": "", "confidence": 0.9,
                                                    "bbox": {"x": 1, "y": 1, "width": 5, "height": 5}}]}
    data = normalize_answer("yolov8", answer)
    assert data["predictions"][0]["label"] == ("cat" * 2000)[:200]
    assert "prediction 0: a label of 6000 characters cut to its first 200" in data["normalization_notes"]


def test_an_emoji_of_thousands_of_characters_is_no_emoji():
    # It became the box's class, and the merge's write overflowed an index row on every attempt.
    answer = {"status": "success", "predictions": [{"label": "cat", "emoji": "x" * 6000, "confidence": 0.9,
                                                    "bbox": {"x": 1, "y": 1, "width": 5, "height": 5}}]}
    data = normalize_answer("yolov8", answer)
    assert data["predictions"][0]["emoji"] == ""
    assert "prediction 0: an emoji of 6000 characters is no emoji, treated as none" in data["normalization_notes"]


def test_notes_are_capped():
    answer = copy.deepcopy(YOLO)
    answer["predictions"] = [{"label": "x", "confidence": "bad"}] * 50
    notes = normalize_answer("yolov8", answer)["normalization_notes"]
    assert len(notes) == 21 and notes[-1] == "… and 30 more"


@pytest.mark.parametrize(
    ("payload", "score", "error"),
    [
        ({"service": "clip", "status": "success", "similarity_score": 0.297, "caption": "a dog"}, 0.297, None),
        ({"service": "clip", "status": "success", "similarity_score": "0.31"}, 0.31, None),
        ({"service": "clip", "status": "success", "similarity_score": -0.05}, -0.05, None),
        ({"service": "clip", "status": "success", "similarity_score": None}, None, "similarity_score is null"),
        ({"service": "clip", "status": "success", "similarity_score": float("nan")}, None, "similarity_score is NaN"),
        ({"service": "clip", "status": "success", "similarity_score": 3.5}, None, "outside -1…1"),
        ({"service": "clip", "status": "success"}, None, "similarity_score is null"),
        (
            {
                "service": "clip",
                "status": "error",
                "similarity_score": None,
                "error": {"message": "Must provide non-empty caption string"},
            },
            None,
            "Must provide non-empty caption",
        ),
    ],
)
def test_score_answers_need_a_finite_similarity(payload, score, error):
    if error is None:
        data = normalize_score_answer("caption_score", payload)
        assert data["similarity_score"] == pytest.approx(score) and data["service"] == "caption_score"
    else:
        with pytest.raises(ServiceCallError, match=error):
            normalize_score_answer("caption_score", payload)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (V3_ERROR, "File not found: /data/img/123.jpg"),
        (LEGACY_ERROR, "File too large"),
        ({"status": "unhealthy", "reason": "model not loaded"}, "model not loaded"),
        ({"error": "line one\nline two\t\ttabs"}, "line one line two tabs"),
        ({"error": "x" * 5000}, "x" * 199 + "…"),
        ({"status": "success"}, None),
        ([1, 2], None),
    ],
)
def test_error_messages_come_from_either_envelope_on_one_line(payload, message):
    assert error_message(payload) == message


FLASK_404 = (
    b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    b"<p>The requested URL was not found on the server. If you entered the URL manually please check your "
    b"spelling and try again.</p>\n"
)


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (FLASK_404, "text/html; charset=utf-8", "HTML page: 404 Not Found — Not Found — The requested URL"),
        (b"<html><body><h1>500 &amp; worse</h1></body></html>", None, "HTML page: 500 & worse"),
        (json.dumps(V3_ERROR).encode(), "application/json", "File not found: /data/img/123.jpg"),
        (b'{"error":"Internal server error","status":"error"}\n', "application/json", "Internal server error"),
        (b"upstream timed out\r\n", "text/plain", "upstream timed out"),
        (b"", None, "empty body"),
        (b"\xff\xfe\x00garbage", None, "\ufffd\ufffd"),
        (b"A" * 100_000, "text/plain", "A" * 199 + "…"),
    ],
)
def test_error_bodies_are_described_in_one_short_line(body, content_type, expected):
    described = describe_body(body, content_type)
    assert described.startswith(expected) and "\n" not in described and len(described) <= 220


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"status":"healthy","model_status":"loaded","device":"cuda"}', "healthy"),
        (b'{"status":"unhealthy","reason":"CUDA missing","service":"YOLOv8"}', "unhealthy: CUDA missing"),
        (b'{"error":"Internal server error","status":"error"}', "Internal server error"),
        (FLASK_404, "HTML page: 404 Not Found"),
    ],
)
def test_health_details_are_short(body, expected):
    assert health_detail(body).startswith(expected)


def test_json_parsing_reports_what_is_wrong():
    assert parse_json(b'{"confidence": NaN}')["confidence"] != 0  # Python's json reads NaN; normalisation drops it
    assert math.isnan(parse_json(b"NaN"))
    # What orjson refuses and Python's json reads, read as before.
    assert parse_json(b'\xef\xbb\xbf{"a": 1}') == {"a": 1}
    assert parse_json(b'{"id": 123456789012345678901234567890}')["id"] == 123456789012345678901234567890
    assert parse_json(b'{"x": 1e400}')["x"] == math.inf
    for body, reason in [(b"<html>", "not JSON"), (b"\xff\xfe", "not UTF-8"), (b"[" * 100_000, "nested too deeply")]:
        with pytest.raises(ValueError, match=reason):
            parse_json(body)


@pytest.mark.parametrize(
    ("box", "size", "expected"),
    [
        ({"x": 0, "y": 0, "width": 10, "height": 10}, (5, 5), {"x": 0, "y": 0, "width": 5, "height": 5}),
        ({"x": 4.5, "y": 0, "width": 10, "height": 10}, (5, 5), {"x": 4.5, "y": 0, "width": 0.5, "height": 5}),
        ({"x": 5, "y": 0, "width": 10, "height": 10}, (5, 5), None),
        ({"x": -5, "y": -5, "width": 10, "height": 10}, None, {"x": 0, "y": 0, "width": 5, "height": 5}),
    ],
)
def test_clamp_bbox(box, size, expected):
    assert clamp_bbox(box, size) == expected
    assert canonical_bbox(box)[1] is None
