"""Harmony end to end: the reference's worked examples, clustering, the democratic filter and the output."""

from __future__ import annotations

import ast
import itertools
import json
import random
import sys
from pathlib import Path

import pytest

import windmill.harmony
from windmill.harmony import DetectorResult, HarmonyConfig, MergedBox, harmonize

REFERENCE = HarmonyConfig.reference()


def box(label, emoji, confidence, x, y, width, height):
    prediction = {"label": label, "confidence": confidence, "bbox": {"x": x, "y": y, "width": width, "height": height}}
    if emoji is not None:
        prediction["emoji"] = emoji
    return prediction


def result(result_id, service, *predictions, **extra):
    return DetectorResult(result_id, service, {"predictions": list(predictions), **extra})


def person(confidence, x, y, width, height, label="person", emoji="🧑"):
    return box(label, emoji, confidence, x, y, width, height)


def summary(boxes: list[MergedBox]):
    return [(b.cluster_id, b.bbox, b.contributing_services) for b in boxes]


# §7.12: the reference's worked example, one image with 4 spatial results.
EXAMPLE_7_12 = [
    result(
        106,
        "clip",
        box("bench", "🪑", 0.42, 20, 380, 120, 60),
        full_image=[
            {"label": "dog", "emoji": "🐕", "confidence": 0.64},
            {"label": "park", "emoji": "🏞️", "confidence": 0.3},
        ],
    ),
    result(103, "detectron2", person(0.99, 95, 45, 210, 410), box("frisbee", "🥏", 0.90, 300, 200, 40, 40)),
    result(102, "rtdetr", person(0.95, 110, 40, 190, 420), box("dog", "🐕", 0.70, 360, 310, 140, 110)),
    result(
        101,
        "yolov8",
        person(0.92, 100, 50, 200, 400),
        box("dog", "🐕", 0.80, 350, 300, 150, 120),
        person(0.55, 500, 60, 80, 200),
    ),
]


def test_reference_mode_reproduces_the_worked_example_of_7_12():
    rows = {b.cluster_id: b.to_merged_data() for b in harmonize(EXAMPLE_7_12, REFERENCE)}
    assert set(rows) == {"🧑_1", "🥏_1", "🐕_1"}  # the second yolov8 person (0.55) and the bench (0.42) drop

    people = rows["🧑_1"]
    assert people["merged_bbox"] == {"x": 95, "y": 40, "width": 210, "height": 420}
    assert people["detection_count"] == 3
    assert people["avg_confidence"] == 0.953
    assert people["contributing_services"] == ["detectron2", "rtdetr", "yolov8"]
    assert [(d["service"], d["confidence"]) for d in people["detections"]] == [
        ("detectron2", 0.99),
        ("rtdetr", 0.95),
        ("yolov8", 0.92),
    ]
    assert people["labels"] == ["person"]
    assert people["emoji"] == "🧑"

    frisbee = rows["🥏_1"]
    assert frisbee["merged_bbox"] == {"x": 300, "y": 200, "width": 40, "height": 40}
    assert (frisbee["detection_count"], frisbee["avg_confidence"]) == (1, 0.9)

    dog = rows["🐕_1"]
    assert dog["merged_bbox"] == {"x": 350, "y": 300, "width": 150, "height": 120}
    assert (dog["detection_count"], dog["avg_confidence"]) == (2, 0.75)
    assert dog["contributing_services"] == ["rtdetr", "yolov8"]

    for row in rows.values():
        # Every row read, sorted (the reference kept query order: [106, 103, 102, 101]).
        assert row["source_result_ids"] == [101, 102, 103, 106]
        assert row["harmonization_algorithm"] == "union_find_union_v1"


def test_default_mode_fuses_the_worked_example_by_confidence():
    boxes = {b.cluster_id: b for b in harmonize(EXAMPLE_7_12)}
    assert set(boxes) == {"🧑_1", "🥏_1", "🐕_1"}
    # Edges weighted 0.99 : 0.95 : 0.92, worked out in test_harmony_geometry (ref-7.12-people).
    assert boxes["🧑_1"].bbox == (102, 45, 200, 410)
    # x1 = (360*.7 + 350*.8) / 1.5 = 354.67 → 355, y1 = (310*.7 + 300*.8) / 1.5 = 304.67 → 305,
    # x2 = y2 = both 500 and 420.
    assert boxes["🐕_1"].bbox == (355, 305, 145, 115)
    assert boxes["🥏_1"].bbox == (300, 200, 40, 40)
    assert boxes["🐕_1"].avg_confidence == 0.75  # the mean stays a plain mean
    assert boxes["🐕_1"].to_merged_data()["harmonization_algorithm"] == "union_find_weighted_v1"


# §7.6: each box overlaps its neighbour with IoU 1/3 and the two ends don't overlap at all.
EXAMPLE_7_6 = [
    result(1, "detectron2", person(0.9, 100, 0, 100, 100)),
    result(2, "rtdetr", person(0.9, 50, 0, 100, 100)),
    result(3, "yolov8", person(0.9, 0, 0, 100, 100)),
]


def test_the_non_transitive_example_of_7_6_gives_one_box():
    [merged] = harmonize(EXAMPLE_7_6, REFERENCE)
    assert merged.cluster_id == "🧑_1"
    assert merged.bbox == (0, 0, 200, 100)  # the envelope of x 0..200
    assert merged.contributing_services == ("detectron2", "rtdetr", "yolov8")
    assert merged.avg_confidence == 0.9
    # Weighted, equal confidences: x1 = (100 + 50 + 0) / 3 = 50, x2 = (200 + 150 + 100) / 3 = 150.
    [weighted] = harmonize(EXAMPLE_7_6)
    assert weighted.bbox == (50, 0, 100, 100)


@pytest.mark.parametrize(
    ("first", "second", "config", "linked"),
    [
        # IoU = 6 / 20 = 0.3 exactly: the reference's rule is strictly greater.
        pytest.param((0, 0, 13, 1), (7, 0, 13, 1), REFERENCE, False, id="iou-exactly-threshold"),
        # IoU = 7 / 19 = 0.37.
        pytest.param((0, 0, 13, 1), (6, 0, 13, 1), REFERENCE, True, id="iou-above-threshold"),
        # A 20×20 box inside a 100×100 one: IoU 0.04, containment 1.
        pytest.param((0, 0, 100, 100), (10, 10, 20, 20), REFERENCE, False, id="inside-reference"),
        pytest.param((0, 0, 100, 100), (10, 10, 20, 20), HarmonyConfig(), True, id="inside-default"),
        # 8×10 of a 10×10 box inside: containment 0.8 exactly, IoU 80 / 10020.
        pytest.param((0, 0, 100, 100), (-2, 0, 10, 10), HarmonyConfig(), True, id="containment-exactly-0.8"),
        pytest.param((0, 0, 100, 100), (-3, 0, 10, 10), HarmonyConfig(), False, id="containment-0.7"),
        pytest.param(
            (0, 0, 100, 100), (-3, 0, 10, 10), HarmonyConfig(containment_threshold=0.7), True, id="containment-set"
        ),
        pytest.param((0, 0, 10, 10), (5, 0, 10, 10), HarmonyConfig(iou_threshold=0.5), False, id="iou-threshold-set"),
    ],
)
def test_two_services_link_by_iou_or_containment(first, second, config, linked):
    # Confidences under 0.85: only a box that both services agree on survives.
    results = [result(1, "rtdetr", person(0.6, *first)), result(2, "yolov8", person(0.6, *second))]
    assert len(harmonize(results, config)) == (1 if linked else 0)


def test_clusters_are_transitive_along_a_chain_of_any_length():
    # Five services, each box 50 px right of the previous: neighbours overlap with IoU 50/150, boxes two
    # apart only touch, the ends are 100 px apart. One chain, one box.
    services = ["clip", "detectron2", "rtdetr", "xception", "yolov8"]
    results = [result(i, service, person(0.5, 50 * i, 0, 100, 100)) for i, service in enumerate(services)]
    [merged] = harmonize(results, REFERENCE)
    assert merged.bbox == (0, 0, 300, 100)
    assert merged.detection_count == 5


def test_different_classes_never_cluster():
    results = [
        result(1, "rtdetr", person(0.6, 0, 0, 100, 100), box("dog", "🐕", 0.6, 0, 0, 100, 100)),
        result(2, "yolov8", person(0.6, 0, 0, 100, 100), box("dog", "🐕", 0.6, 0, 0, 100, 100)),
    ]
    assert summary(harmonize(results)) == [
        ("🐕_1", (0, 0, 100, 100), ("rtdetr", "yolov8")),
        ("🧑_1", (0, 0, 100, 100), ("rtdetr", "yolov8")),
    ]


def _scene(seed: int) -> list[DetectorResult]:
    """Twelve objects of three classes seen by five services with jitter, plus noise boxes."""
    rng = random.Random(seed)
    objects = [
        (rng.choice([("person", "🧑"), ("dog", "🐕"), ("car", "🚗")]), rng.randint(0, 500), rng.randint(0, 500))
        for _ in range(12)
    ]
    results = []
    for result_id, service in enumerate(["clip", "detectron2", "rtdetr", "xception", "yolov8"], start=1):
        predictions = []
        for (label, emoji), x, y in objects:
            if rng.random() < 0.8:
                jitter = [rng.randint(-8, 8) for _ in range(4)]
                predictions.append(
                    box(
                        label,
                        emoji,
                        round(rng.uniform(0.3, 0.99), 2),
                        x + jitter[0],
                        y + jitter[1],
                        80 + jitter[2],
                        120 + jitter[3],
                    )
                )
        predictions.append(box("cat", "🐈", round(rng.uniform(0.3, 0.99), 2), rng.randint(0, 500), 0, 60, 60))
        results.append(result(result_id, service, *predictions))
    return results


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("config", [HarmonyConfig(), REFERENCE], ids=["default", "reference"])
def test_output_does_not_depend_on_the_order_of_results_or_predictions(seed, config):
    results = _scene(seed)
    expected = [b.to_merged_data() for b in harmonize(results, config)]
    assert expected, "the scene should produce boxes"
    rng = random.Random(seed)
    for _ in range(8):
        shuffled = []
        for original in rng.sample(results, len(results)):
            predictions = list(original.data["predictions"])
            rng.shuffle(predictions)
            shuffled.append(DetectorResult(original.result_id, original.service, {"predictions": predictions}))
        assert [b.to_merged_data() for b in harmonize(shuffled, config)] == expected


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_the_worked_example_gives_the_same_rows_in_every_result_order(order):
    expected = [b.to_merged_data() for b in harmonize(EXAMPLE_7_12, REFERENCE)]
    assert [b.to_merged_data() for b in harmonize([EXAMPLE_7_12[i] for i in order], REFERENCE)] == expected


# The democratic filter.


@pytest.mark.parametrize(
    ("confidences", "config", "kept"),
    [
        pytest.param([0.84], REFERENCE, False, id="single-below-0.85"),
        pytest.param([0.85], REFERENCE, True, id="single-at-0.85"),
        pytest.param([0.3, 0.3], REFERENCE, True, id="two-services-whatever-confidence"),
        pytest.param([0.3], HarmonyConfig(single_service_min_confidence=0.0), True, id="single-bar-off"),
        pytest.param([0.5, 0.5], HarmonyConfig(min_services=3), False, id="two-of-three-quiet"),
        pytest.param([0.5, 0.9], HarmonyConfig(min_services=3), True, id="two-of-three-one-loud"),
        pytest.param([0.3, 0.3, 0.3], HarmonyConfig(min_services=3), True, id="three-of-three"),
        pytest.param([0.9], HarmonyConfig(single_service_min_confidence=0.95), False, id="bar-raised"),
    ],
)
def test_a_cluster_needs_enough_services_or_one_loud_one(confidences, config, kept):
    services = ["detectron2", "rtdetr", "yolov8"]
    results = [result(i, services[i], person(c, 10, 10, 100, 100)) for i, c in enumerate(confidences)]
    assert len(harmonize(results, config)) == (1 if kept else 0)


def test_one_detection_per_service_keeps_the_most_confident():
    # yolov8 saw the same person twice (IoU 95*95 / (20000 - 9025) = 0.82, two labels with one emoji).
    results = [
        result(1, "yolov8", person(0.6, 0, 0, 100, 100), person(0.8, 5, 5, 100, 100, label="man", emoji="👨")),
        result(2, "rtdetr", person(0.7, 0, 0, 100, 100)),
    ]
    for config in (HarmonyConfig(), REFERENCE):
        [merged] = harmonize(results, config)
        assert merged.detection_count == 2
        assert [(d.service, d.confidence, d.label) for d in merged.detections] == [
            ("rtdetr", 0.7, "person"),
            ("yolov8", 0.8, "man"),
        ]
        assert merged.avg_confidence == 0.75
        assert merged.labels == ("man", "person")


# Two people side by side, A and B (IoU 2000/38000 = 0.05): yolov8 sees both, detectron2 sees A,
# rtdetr draws one wide box over both. IoU(A, wide) = 20000/36000 = 0.56 and IoU(B, wide) =
# 18000/38000 = 0.47, so the chain A~wide~B makes one cluster.
CROWD = [
    result(1, "yolov8", person(0.9, 0, 0, 100, 200), person(0.9, 90, 0, 100, 200)),
    result(2, "rtdetr", person(0.8, 0, 0, 180, 200)),
    result(3, "detectron2", person(0.8, 2, 0, 100, 200)),
]


def test_a_crowd_keeps_each_person_that_one_service_saw_apart():
    boxes = harmonize(CROWD)
    # The wide box overlaps A most (0.56 > 0.47) and detectron2's box is A (IoU 0.96), so B stands alone
    # and survives on its own 0.9. The weighted box of A: x1 = (0*.9 + 0*.8 + 2*.8) / 2.5 = 0.64 → 1,
    # x2 = (100*.9 + 180*.8 + 102*.8) / 2.5 = 126.24 → 126.
    assert summary(boxes) == [
        ("🧑_1", (1, 0, 125, 200), ("detectron2", "rtdetr", "yolov8")),
        ("🧑_2", (90, 0, 100, 200), ("yolov8",)),
    ]


def test_a_crowd_collapses_to_one_box_without_the_split():
    # The reference's behaviour: yolov8's two people tie at 0.9; the one further left (canonical order) stays.
    boxes = harmonize(CROWD, HarmonyConfig(split_crowds=False))
    assert [b.contributing_services for b in boxes] == [("detectron2", "rtdetr", "yolov8")]
    assert [d.x1 for d in boxes[0].detections if d.service == "yolov8"] == [0.0]


def test_a_quiet_person_in_a_crowd_still_needs_a_second_service():
    quiet = [result(1, "yolov8", person(0.9, 0, 0, 100, 200), person(0.7, 90, 0, 100, 200)), *CROWD[1:]]
    assert summary(harmonize(quiet)) == [("🧑_1", (1, 0, 125, 200), ("detectron2", "rtdetr", "yolov8"))]


def test_a_small_object_inside_a_large_one_splits_when_each_service_saw_both():
    # A child (30×60) in front of an adult (100×200): containment 1 links them, but both services saw two
    # separate people, so two boxes come out, each agreed by both services.
    results = [
        result(1, "yolov8", person(0.6, 0, 0, 100, 200), person(0.6, 40, 100, 30, 60)),
        result(2, "rtdetr", person(0.6, 2, 0, 100, 200), person(0.6, 42, 100, 30, 60)),
    ]
    # Equal weights: x of the adult (0 + 2) / 2 = 1, of the child (40 + 42) / 2 = 41.
    assert summary(harmonize(results)) == [
        ("🧑_1", (1, 0, 100, 200), ("rtdetr", "yolov8")),
        ("🧑_2", (41, 100, 30, 60), ("rtdetr", "yolov8")),
    ]


# The box of a cluster: only the boxes that agree shape it.

# Four services agree on a person (IoU ≥ 0.8 with one another); xception reports a wide box around it (IoU 0.05,
# containment 1), a hallucination or a part-for-whole: it links by containment and votes, but does not move the box.
AGREED = [result(n, service, person(0.8, 400 + n, 300, 40, 80)) for n, service in
          enumerate(("clip", "detectron2", "rtdetr", "yolov8"), 1)]


@pytest.mark.parametrize(("outlier", "expected"), [
    # x1 = (401 + 402 + 403 + 404) / 4 = 402.5 → 403 at equal confidences.
    pytest.param(person(0.37, 200, 100, 460, 460), (403, 300, 40, 80), id="wide-box-around"),
    # The outlier is the most confident box: the four that agree still anchor the cluster.
    pytest.param(person(0.95, 200, 100, 460, 460), (403, 300, 40, 80), id="loud-wide-box"),
    # A box that agrees (IoU ≥ 0.7 with each of the four) is weighed in: x1 = (1610 + 410) / 5 = 404.
    pytest.param(person(0.8, 410, 300, 40, 80), (404, 300, 40, 80), id="agreeing-fifth"),
])
def test_a_box_that_does_not_agree_votes_but_does_not_drag_the_merged_box(outlier, expected):
    [merged] = harmonize([*AGREED, result(5, "xception", outlier)])
    assert merged.bbox == expected
    assert merged.contributing_services == ("clip", "detectron2", "rtdetr", "xception", "yolov8")


def test_two_boxes_joined_by_containment_alone_take_the_more_confident_box():
    # A 20×20 box inside a 100×100 one (IoU 0.04): neither agrees with the other; the mean of both is neither.
    pair = [result(1, "yolov8", person(0.6, 0, 0, 100, 100)), result(2, "rtdetr", person(0.9, 10, 10, 20, 20))]
    [merged] = harmonize(pair)
    assert (merged.bbox, merged.detection_count) == ((10, 10, 20, 20), 2)
    assert harmonize(pair, REFERENCE.with_changes(containment_threshold=0.8))[0].bbox == (0, 0, 100, 100)  # union


# The output.


def test_merged_data_has_the_reference_fields_and_deterministic_lists():
    [merged] = harmonize(EXAMPLE_7_6)
    data = merged.to_merged_data()
    assert list(data) == [
        "cluster_id",
        "emoji",
        "labels",
        "merged_bbox",
        "detection_count",
        "avg_confidence",
        "score",
        "contributing_services",
        "detections",
        "harmonization_algorithm",
        "harmonization_params",
        "source_result_ids",
    ]
    assert data["detections"][0] == {
        "service": "detectron2",
        "confidence": 0.9,
        "label": "person",
        "bbox": {"x": 100, "y": 0, "width": 100, "height": 100},
        "result_id": 1,
    }
    assert json.loads(json.dumps(data)) == data  # plain JSON types only, ready for a jsonb column
    assert data["harmonization_params"] == {
        "iou_threshold": 0.3,
        "containment_threshold": 0.8,
        "min_services": 2,
        "single_service_min_confidence": 0.85,
        "fusion": "weighted",
        "split_crowds": True,
        "emoji_from_labels": True,
    }


def test_cluster_ids_are_unique_and_numbered_left_to_right_per_emoji():
    results = [
        result(
            1, "rtdetr", person(0.9, 300, 0, 50, 50), person(0.9, 0, 0, 50, 50), box("dog", "🐕", 0.9, 100, 0, 50, 50)
        ),
        result(2, "yolov8", person(0.9, 150, 0, 50, 50)),
    ]
    assert [(b.cluster_id, b.bbox[0]) for b in harmonize(results)] == [
        ("🐕_1", 100),
        ("🧑_1", 0),
        ("🧑_2", 150),
        ("🧑_3", 300),
    ]


def test_source_result_ids_name_every_result_read_even_without_boxes():
    results = [
        result(7, "yolov8", person(0.9, 0, 0, 10, 10)),
        result(3, "rtdetr"),  # answered, found nothing
        DetectorResult(5, "clip", {"status": "error"}),
        DetectorResult(9, "xception", None),
    ]
    [merged] = harmonize(results)
    assert merged.source_result_ids == (3, 5, 7, 9)


def test_box_key_is_stable_and_tells_changed_boxes_apart():
    before = {b.cluster_id: b for b in harmonize(EXAMPLE_7_12)}
    again = {b.cluster_id: b for b in harmonize(list(reversed(EXAMPLE_7_12)))}
    assert {k: b.box_key() for k, b in before.items()} == {k: b.box_key() for k, b in again.items()}

    # clip now also sees the frisbee: that box changes (a new service), the others don't.
    clip = result(106, "clip", box("bench", "🪑", 0.42, 20, 380, 120, 60), box("frisbee", "🥏", 0.5, 300, 200, 40, 40))
    after = {b.cluster_id: b for b in harmonize([clip, *EXAMPLE_7_12[1:]])}
    changed = {k for k in before if before[k].box_key() != after[k].box_key()}
    assert changed == {"🥏_1"}
    assert len({b.box_key() for b in after.values()}) == 3


def test_nothing_in_gives_nothing_out():
    assert harmonize([]) == []
    assert harmonize([result(1, "yolov8"), result(2, "rtdetr")]) == []


def test_merged_boxes_are_immutable():
    [merged] = harmonize(EXAMPLE_7_6)
    with pytest.raises(AttributeError):
        merged.cluster_id = "x"  # type: ignore[misc]


# The configuration.


def test_reference_config_holds_the_reference_numbers():
    expected = HarmonyConfig(
        iou_threshold=0.3,
        containment_threshold=None,
        min_services=2,
        single_service_min_confidence=0.85,
        fusion="union",
        split_crowds=False,
    )
    assert expected == REFERENCE
    assert REFERENCE.algorithm == "union_find_union_v1"
    assert HarmonyConfig().with_changes(fusion="union").fusion == "union"


@pytest.mark.parametrize(
    "changes",
    [
        {"iou_threshold": 1.0},
        {"iou_threshold": -0.1},
        {"containment_threshold": 0.0},
        {"containment_threshold": 1.5},
        {"min_services": 0},
        {"min_services": 2.5},
        {"single_service_min_confidence": float("nan")},
        {"fusion": "median"},
    ],
)
def test_invalid_settings_are_refused(changes):
    with pytest.raises(ValueError):
        HarmonyConfig(**changes)


def test_harmony_imports_only_the_stdlib_numpy_and_emoji():
    package = Path(windmill.harmony.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                allowed = name.split(".")[0] in sys.stdlib_module_names or name.split(".")[0] == "numpy"
                assert allowed or name == "windmill.emoji", f"{path.name} imports {name}"
