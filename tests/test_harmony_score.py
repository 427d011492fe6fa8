"""The fused score of merged boxes, as tables: more agreeing detectors rank higher at equal confidence, the score
rises with every confidence, stays in [0, 1], counts the detectors that answered without seeing the box, and the
clusters the democratic filter turns down are scored alike without changing the kept set."""

from __future__ import annotations

import random

import pytest

from windmill.harmony import DetectorResult, HarmonyConfig, harmonize, harmonize_with_rejected
from windmill.harmony.fusion import fused_score

DETECTORS = ("clip", "detectron2", "rtdetr", "xception", "yolov8")
# Two places far apart: two objects of one class that never cluster together.
LEFT, RIGHT = (10, 10, 100, 200), (500, 10, 100, 200)


def sightings(*objects: tuple[tuple[int, int, int, int], tuple[float | None, ...]], answered: int = 5
              ) -> list[DetectorResult]:
    """Answers of the first `answered` detectors: object k is reported by detector i at confidence objects[k][1][i]
    (None, or a shorter tuple: that detector missed it), shifted by i pixels. Detectors that saw nothing answer
    with no predictions."""
    results = []
    for number, service in enumerate(DETECTORS[:answered]):
        predictions = [{"label": "person", "emoji": "🧑", "confidence": confidences[number],
                        "bbox": {"x": x + number, "y": y, "width": width, "height": height}}
                       for (x, y, width, height), confidences in objects
                       if number < len(confidences) and confidences[number] is not None]
        results.append(DetectorResult(number + 1, service, {"predictions": predictions}))
    return results


def scores(results: list[DetectorResult], config: HarmonyConfig | None = None) -> dict[int, float]:
    """Score of the box at each place (by its left edge)."""
    return {box.bbox[0] // 100 * 100: box.score for box in harmonize(results, config)}


@pytest.mark.parametrize(("confidence", "fewer", "more"), [
    (0.9, 2, 3),
    (0.6, 2, 5),
    (0.5, 3, 4),
    (0.3, 4, 5),
    (0.0, 2, 3),
    (1.0, 4, 5),
])
def test_more_agreeing_detectors_rank_higher_at_equal_confidence(confidence: float, fewer: int, more: int) -> None:
    found = scores(sightings((LEFT, (confidence,) * fewer), (RIGHT, (confidence,) * more)))
    assert found[500] > found[0]


@pytest.mark.parametrize(("many", "one"), [
    ((0.6, 0.6, 0.6, 0.6), (0.9,)),  # the case: four detectors at 0.6 against one at 0.9
    ((0.4, 0.4), (0.95,)),
    ((0.3, 0.3, 0.3), (0.99, 0.0)),
])
def test_agreement_outranks_one_loud_detector(many: tuple[float, ...], one: tuple[float, ...]) -> None:
    found = scores(sightings((LEFT, one), (RIGHT, many)))
    assert found[500] > found[0]


@pytest.mark.parametrize(("lower", "higher"), [
    ((0.5, 0.5), (0.5, 0.6)),
    ((0.5, 0.5, 0.5), (0.9, 0.5, 0.5)),
    ((0.0, 0.0), (0.01, 0.0)),
    ((0.7, 0.8, 0.9, 0.95), (0.7, 0.8, 0.9, 1.0)),
    ((0.2, 0.2, 0.2, 0.2, 0.2), (0.3, 0.3, 0.3, 0.3, 0.3)),
])
def test_the_score_rises_with_every_confidence(lower: tuple[float, ...], higher: tuple[float, ...]) -> None:
    found = scores(sightings((LEFT, lower), (RIGHT, higher)))
    assert found[500] > found[0]


@pytest.mark.parametrize(("confidences", "answered", "expected"), [
    ((1.0,) * 5, 5, 1.0),  # every detector, fully sure: the top
    ((1.0, 1.0), 2, 1.0),
    ((0.0, 0.0), 5, 0.2),  # reported at 0 by two of five: the votes alone
    ((0.9, 0.8), 3, 0.6167),  # (2 + 1.7) / 6
    ((0.99, 0.95, 0.92), 4, 0.7325),  # (3 + 2.86) / 8
    ((0.6, 0.6, 0.6, 0.6), 5, 0.64),  # (4 + 2.4) / 10
    ((0.9,), 5, 0.19),  # kept alone (≥ 0.85): (1 + 0.9) / 10
])
def test_the_score_is_the_mean_of_vote_share_and_confidence_share(confidences: tuple[float, ...], answered: int,
                                                                  expected: float) -> None:
    [box] = harmonize(sightings((LEFT, confidences), answered=answered))
    assert box.score == expected
    assert box.to_merged_data()["score"] == expected
    assert fused_score(list(confidences), answered) == pytest.approx(expected, abs=5e-5)


def test_the_score_stays_between_zero_and_one() -> None:
    rng = random.Random(17)
    seen = []
    for _ in range(300):
        answered = rng.randint(1, 5)
        agreeing = rng.randint(1, answered)
        confidences = tuple(rng.choice([0.0, 1.0, rng.random()]) for _ in range(agreeing))
        seen += [box.score for box in harmonize(sightings((LEFT, confidences), answered=answered),
                                                HarmonyConfig(single_service_min_confidence=0.0))]
    assert seen and all(0.0 <= score <= 1.0 for score in seen)
    assert min(seen) == 0.1 and max(seen) == 1.0  # one of five at 0; every one of them at 1


def test_a_detector_that_answered_without_the_box_lowers_its_score() -> None:
    two_of_two = harmonize(sightings((LEFT, (0.8, 0.8)), answered=2))[0].score
    two_of_three = harmonize(sightings((LEFT, (0.8, 0.8)), answered=3))[0].score
    assert (two_of_two, two_of_three) == (0.9, 0.6)  # (2 + 1.6) / 4 and / 6


def test_rejected_clusters_are_scored_alike_and_leave_the_kept_set_alone() -> None:
    # Kept: two detectors agree on the left person. Turned down: one detector at 0.5 on the right.
    results = sightings((LEFT, (0.7, 0.7)), (RIGHT, (None, None, None, None, 0.5)))
    everything = harmonize_with_rejected(results)
    assert [box.to_merged_data() for box in everything.boxes] == [box.to_merged_data() for box in harmonize(results)]
    assert [(box.cluster_id, box.bbox[0], box.contributing_services) for box in everything.boxes] == [
        ("🧑_1", 11, ("clip", "detectron2"))]  # x = (10 + 11) / 2, half up
    [rejected] = everything.rejected
    assert (rejected.cluster_id, rejected.bbox[0], rejected.contributing_services) == (
        "🧑_rejected_1", 504, ("yolov8",))
    assert rejected.score == 0.15  # (1 + 0.5) / 10


def test_with_the_default_thresholds_no_rejected_cluster_outranks_a_kept_box() -> None:
    # Kept: two services (≥ 2/2N) or one at ≥ 0.85 (≥ 1.85/2N); turned down: one below 0.85 (< 1.85/2N). So the
    # rejects only ever extend the ranking at its tail, and adding them to an evaluation cannot lower its AP.
    rng = random.Random(5)
    for _ in range(200):
        objects = [((100 * k, 10, 60, 90), tuple(rng.choice([None, rng.random()]) for _ in range(5)))
                   for k in range(6)]
        found = harmonize_with_rejected(sightings(*objects))
        if found.boxes and found.rejected:
            assert max(box.score for box in found.rejected) <= min(box.score for box in found.boxes)
