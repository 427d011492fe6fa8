"""What harmony accepts: emoji and label grouping, answer shapes, and malformed answers that it skips."""

from __future__ import annotations

import math

import pytest

from windmill.emoji import normalize_emoji
from windmill.harmony import DetectorResult, HarmonyConfig, harmonize


def box(label, emoji, confidence, x, y, width, height):
    prediction = {"label": label, "confidence": confidence, "bbox": {"x": x, "y": y, "width": width, "height": height}}
    if emoji is not None:
        prediction["emoji"] = emoji
    return prediction


def result(result_id, service, *predictions):
    return DetectorResult(result_id, service, {"predictions": list(predictions)})


def summary(boxes):
    return [(b.cluster_id, b.bbox, b.contributing_services) for b in boxes]


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        pytest.param("🏞\ufe0f", "🏞", id="variation-selector"),
        pytest.param("🏞", "🏞", id="plain"),
        pytest.param("☕\ufe0f", "☕", id="selector-on-bmp-emoji"),
        pytest.param("🐕\u180b", "🐕", id="mongolian-selector"),
        pytest.param(" 🐕 ", "🐕", id="spaces"),
        pytest.param("🧑", "🧑", id="person"),
        pytest.param("👩", "🧑", id="woman"),
        pytest.param("👨", "🧑", id="man"),
        pytest.param("🧒", "🧑", id="child"),
        pytest.param("👩🏽", "🧑", id="skin-tone"),
        pytest.param("👨\u200d🍳", "🧑", id="zwj-person-sequence"),
        pytest.param("🐕\u200d🦺", "🐕🦺", id="zwj-other-sequence-loses-joiner"),
        pytest.param("", "", id="empty"),
        pytest.param(None, "", id="missing"),
    ],
)
def test_emoji_normalisation(raw, normalised):
    assert normalize_emoji(raw) == normalised


def _both_see(first, second, confidence=0.6):
    """rtdetr and yolov8 each see one box at the same place, differing only as given."""
    return [
        result(1, "rtdetr", box(*first, confidence, 0, 0, 100, 100)),
        result(2, "yolov8", box(*second, confidence, 0, 0, 100, 100)),
    ]


@pytest.mark.parametrize(
    ("first", "second", "cluster_id", "emoji"),
    [
        pytest.param(("park", "🏞\ufe0f"), ("park", "🏞"), "🏞_1", "🏞", id="selector-or-not"),
        pytest.param(("woman", "👩"), ("man", "👨"), "🧑_1", "🧑", id="people"),
        pytest.param(("cook", "👨\u200d🍳"), ("person", "🧑"), "🧑_1", "🧑", id="zwj-person"),
        pytest.param(("dog", None), ("dog", ""), "dog_1", "", id="missing-emoji-is-empty-emoji"),
        pytest.param(("dining table", None), ("Dining_Table", ""), "dining_table_1", "", id="label-fallback"),
        pytest.param(("", None), (None, None), "object_1", "", id="nothing-at-all"),
    ],
)
def test_grouping_by_normalised_emoji_then_label(first, second, cluster_id, emoji):
    [merged] = harmonize(_both_see(first, second))
    assert (merged.cluster_id, merged.emoji, merged.detection_count) == (cluster_id, emoji, 2)


def test_different_labels_with_one_emoji_are_one_class():
    [merged] = harmonize(_both_see(("man", "🧑"), ("person", "🧑")))
    assert merged.labels == ("man", "person")


def test_a_box_without_emoji_borrows_the_emoji_of_its_label():
    # yolov8 looks "dining table" up verbatim and finds no emoji; detectron2 finds one (§2.9).
    results = [
        result(1, "detectron2", box("dining table", "🍽\ufe0f", 0.9, 0, 0, 100, 100)),
        result(2, "yolov8", box("dining table", None, 0.9, 0, 0, 100, 100)),
    ]
    assert summary(harmonize(results)) == [("🍽_1", (0, 0, 100, 100), ("detectron2", "yolov8"))]
    assert summary(harmonize(results, HarmonyConfig(emoji_from_labels=False))) == [
        ("dining_table_1", (0, 0, 100, 100), ("yolov8",)),
        ("🍽_1", (0, 0, 100, 100), ("detectron2",)),
    ]


def test_two_rows_of_one_service_are_one_voice():
    results = [
        result(1, "yolov8", box("dog", "🐕", 0.6, 0, 0, 100, 100)),
        result(2, "yolov8", box("dog", "🐕", 0.6, 0, 0, 100, 100)),
    ]
    assert harmonize(results) == []


# Malformed answers. The baseline is one person that rtdetr and yolov8 agree on; a malformed prediction
# added far away at 0.99 would show up as a second box if it were not skipped.

BASELINE = [result(1, "rtdetr", box("person", "🧑", 0.6, 0, 0, 100, 100))]


def _with_extra(prediction):
    return [*BASELINE, result(2, "yolov8", box("person", "🧑", 0.6, 0, 0, 100, 100), prediction)]


def _far(bbox, confidence=0.99):
    return {"label": "dog", "emoji": "🐕", "confidence": confidence, "bbox": bbox}


@pytest.mark.parametrize(
    "prediction",
    [
        pytest.param(None, id="none"),
        pytest.param(5, id="number"),
        pytest.param("dog", id="string"),
        pytest.param([], id="list"),
        pytest.param({"label": "dog", "emoji": "🐕", "confidence": 0.99}, id="no-bbox"),
        pytest.param(_far(None), id="bbox-none"),
        pytest.param(_far({}), id="bbox-empty-dict"),
        pytest.param(_far([]), id="bbox-empty-list"),
        pytest.param(_far([500, 0, 50]), id="bbox-three-numbers"),
        pytest.param(_far("500,0,50,50"), id="bbox-string"),
        pytest.param(_far({"x": 500, "y": 0, "width": 50}), id="bbox-missing-height"),
        pytest.param(_far({"x": 500, "y": 0, "width": 0, "height": 50}), id="zero-width"),
        pytest.param(_far({"x": 500, "y": 0, "width": 50, "height": -5}), id="negative-height"),
        pytest.param(_far([500, 0, -50, 50]), id="negative-width-list"),
        pytest.param(_far({"x": 500, "y": 0, "width": math.nan, "height": 50}), id="nan-width"),
        pytest.param(_far({"x": math.inf, "y": 0, "width": 50, "height": 50}), id="infinite-x"),
        pytest.param(_far({"x": "abc", "y": 0, "width": 50, "height": 50}), id="text-x"),
        pytest.param(_far({"x": True, "y": 0, "width": 50, "height": 50}), id="boolean-x"),
        pytest.param(_far({"x": 500, "y": 0, "width": "nan", "height": 50}), id="nan-text-width"),
        pytest.param(_far({"x": 10**400, "y": 0, "width": 50, "height": 50}), id="huge-integer-x"),
        pytest.param(_far({"x": 500, "y": 0, "width": 50, "height": None}), id="none-height"),
    ],
)
def test_a_malformed_prediction_is_skipped(prediction):
    assert summary(harmonize(_with_extra(prediction))) == [("🧑_1", (0, 0, 100, 100), ("rtdetr", "yolov8"))]


@pytest.mark.parametrize(
    "prediction",
    [
        pytest.param(_far([500, 0, 50, 50]), id="list-bbox"),
        pytest.param(_far((500, 0, 50, 50)), id="tuple-bbox"),
        pytest.param(_far({"x": "500", "y": "0", "width": "50", "height": "50"}), id="numeric-strings"),
        pytest.param(_far({"x": 500.0, "y": 0.0, "width": 50.0, "height": 50.0}), id="floats"),
        pytest.param(_far({"x": 500, "y": 0, "width": 50, "height": 50, "extra": 1}), id="extra-keys"),
        pytest.param(_far([500, 0, 50, 50], confidence="0.99"), id="confidence-as-text"),
        pytest.param(_far([500, 0, 50, 50], confidence=95), id="confidence-above-one-is-one"),
    ],
)
def test_other_shapes_of_a_good_prediction_are_read(prediction):
    boxes = harmonize(_with_extra(prediction))
    assert [(b.cluster_id, b.bbox) for b in boxes] == [("🐕_1", (500, 0, 50, 50)), ("🧑_1", (0, 0, 100, 100))]


@pytest.mark.parametrize(
    "confidence",
    [math.nan, math.inf, -1, "high", None, True, [0.9]],
    ids=["nan", "infinite", "negative", "text", "none", "boolean", "list"],
)
def test_an_unreadable_confidence_counts_as_zero(confidence):
    # rtdetr's 0.6 box and yolov8's box 20 px to the right with no usable confidence: the weighted box is
    # rtdetr's alone, and the mean confidence is (0.6 + 0) / 2.
    results = [*BASELINE, result(2, "yolov8", box("person", "🧑", confidence, 20, 0, 100, 100))]
    [merged] = harmonize(results)
    assert merged.bbox == (0, 0, 100, 100)
    assert merged.avg_confidence == 0.3
    # Alone, such a box can never be a loud single voice.
    assert harmonize([result(3, "yolov8", box("dog", "🐕", confidence, 0, 0, 10, 10))]) == []


def test_a_missing_confidence_counts_as_zero():
    prediction = {"label": "person", "emoji": "🧑", "bbox": {"x": 20, "y": 0, "width": 100, "height": 100}}
    [merged] = harmonize([*BASELINE, result(2, "yolov8", prediction)])
    assert merged.avg_confidence == 0.3


@pytest.mark.parametrize(
    "data",
    [None, "text", 7, [1, 2], {}, {"predictions": None}, {"predictions": {"a": 1}}, {"predictions": "x"}],
    ids=["none", "text", "number", "list", "empty", "predictions-none", "predictions-dict", "predictions-text"],
)
def test_an_answer_without_a_prediction_list_adds_no_box(data):
    boxes = harmonize([*BASELINE, DetectorResult(2, "yolov8", data)])
    assert boxes == []
    both = [*BASELINE, result(3, "yolov8", box("person", "🧑", 0.6, 0, 0, 100, 100)), DetectorResult(2, "clip", data)]
    [merged] = harmonize(both)
    assert merged.source_result_ids == (1, 2, 3)


def test_a_result_id_that_is_not_an_integer_is_left_out_of_the_ids_but_its_boxes_count():
    [merged] = harmonize(
        [*BASELINE, DetectorResult(None, "yolov8", {"predictions": [box("person", "🧑", 0.6, 0, 0, 100, 100)]})]
    )  # type: ignore[arg-type]
    assert merged.contributing_services == ("rtdetr", "yolov8")
    assert merged.source_result_ids == (1,)


def test_full_image_entries_are_left_to_voting():
    data = {"predictions": [], "full_image": [{"label": "dog", "emoji": "🐕", "confidence": 0.99}]}
    assert harmonize([DetectorResult(1, "clip", data)]) == []


def test_face_style_list_boxes_cluster_with_dict_boxes():
    results = [
        DetectorResult(1, "rtdetr", {"predictions": [box("person", "🧑", 0.6, -5, 0, 100, 100)]}),
        DetectorResult(
            2,
            "yolov8",
            {"predictions": [{"label": "person", "emoji": "🧑", "confidence": 0.6, "bbox": [-5, 0, 100, 100]}]},
        ),
    ]
    # No image size given: a box reaching past the left edge keeps its coordinates.
    assert summary(harmonize(results)) == [("🧑_1", (-5, 0, 100, 100), ("rtdetr", "yolov8"))]


@pytest.mark.parametrize(
    ("bbox", "clamped"),
    [
        pytest.param((-10, -10, 50, 50), (0, 0, 40, 40), id="top-left-corner"),
        pytest.param((90, 90, 50, 50), (90, 90, 10, 10), id="bottom-right-corner"),
        pytest.param((10, 10, 20, 20), (10, 10, 20, 20), id="inside"),
        pytest.param((200, 200, 10, 10), None, id="outside"),
        pytest.param((100, 0, 10, 10), None, id="on-the-right-edge"),
    ],
)
def test_boxes_are_clamped_to_the_image_when_its_size_is_known(bbox, clamped):
    boxes = harmonize([result(1, "yolov8", box("dog", "🐕", 0.9, *bbox))], image_size=(100, 100))
    assert [b.bbox for b in boxes] == ([clamped] if clamped else [])


@pytest.mark.parametrize("image_size", [(0, 100), (100,), ("wide", 100), (100, -1)])
def test_a_wrong_image_size_is_refused(image_size):
    with pytest.raises(ValueError, match="image_size"):
        harmonize(BASELINE, image_size=image_size)
