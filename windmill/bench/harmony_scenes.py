"""Synthetic scenes with ground truth, seen by detectors that disagree as real ones do, for the harmony benchmark's
quality figures: misses (more of small objects), jittered edges, confusions between look-alike classes, duplicate
boxes of one object, hallucinations of each detector, shared hallucinations (a poster, a statue, a reflection that
several detectors take for an object), crowds of touching people, scenes of 2–6 objects, and detectors of different
recall, precision and confidence scale (a confident one, a timid one, two-stage classifiers on weak boxes).

The profiles are plausible, not fitted to any method: every method in the benchmark sees the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from windmill.harmony import DetectorResult

WIDTH, HEIGHT = 1280, 960
# (label, emoji): detectors of this family give emoji; "dining table" has none (as yolov8 has none for it).
CLASSES: tuple[tuple[str, str], ...] = (
    ("person", "🧑"), ("dog", "🐕"), ("cat", "🐱"), ("car", "🚗"), ("truck", "🚚"), ("chair", "🪑"),
    ("couch", "🛋"), ("cup", "☕️"), ("bowl", "🥣"), ("bicycle", "🚲"), ("motorcycle", "🏍"), ("dining table", ""),
)
CLASS_NAMES = tuple(label for label, _ in CLASSES)
# Most objects in photos are people; the rest share what's left.
CLASS_WEIGHTS = np.array([0.34] + [0.06] * 11)
_INDEX = {label: i for i, label in enumerate(CLASS_NAMES)}
# What a detector mistakes each class for.
LOOK_ALIKES = {
    "dog": "cat", "cat": "dog", "car": "truck", "truck": "car", "chair": "couch", "couch": "chair",
    "cup": "bowl", "bowl": "cup", "bicycle": "motorcycle", "motorcycle": "bicycle", "person": "person",
    "dining table": "chair",
}


@dataclass(frozen=True)
class DetectorProfile:
    """How one detector errs. Confidences are Beta(a, b) draws: `seen` for real objects, `false` for the rest.

    recall: chance to report a 100 px object (a 25 px one half as often).
    jitter: standard deviation of each edge, as a fraction of the object's side.
    confusion: chance that a reported object carries its look-alike's label.
    duplicate: chance of a second, looser box on a reported object (a lower confidence).
    hallucinations: mean number of boxes of nothing per image.
    ghost_recall: chance to take a shared ghost (a poster, a statue) for an object.
    """

    name: str
    recall: float
    jitter: float
    confusion: float
    duplicate: float
    hallucinations: float
    ghost_recall: float
    seen: tuple[float, float]
    false: tuple[float, float]


PROFILES: tuple[DetectorProfile, ...] = (
    # A fast one-stage detector: good recall, honest confidences.
    DetectorProfile("yolov8", 0.88, 0.045, 0.05, 0.04, 0.6, 0.45, (5.0, 2.0), (2.0, 4.0)),
    # A transformer detector: tight boxes, confident.
    DetectorProfile("rtdetr", 0.90, 0.035, 0.04, 0.02, 0.5, 0.5, (7.0, 2.0), (2.5, 3.5)),
    # A two-stage detector that is confident about everything, right or wrong, and often boxes twice.
    DetectorProfile("detectron2", 0.86, 0.04, 0.06, 0.10, 0.8, 0.55, (12.0, 1.5), (5.0, 2.5)),
    # Two-stage classifiers on a region proposer's boxes: loose boxes, low confidences, more confusions.
    DetectorProfile("clip", 0.65, 0.08, 0.15, 0.05, 0.7, 0.35, (3.0, 3.0), (2.0, 4.0)),
    DetectorProfile("xception", 0.55, 0.08, 0.20, 0.03, 0.5, 0.3, (3.0, 4.0), (1.5, 4.5)),
)
OBJECTS = (2, 6)  # objects per scene, both included
GHOST_CHANCE = 0.35  # a scene holds one thing that looks like an object and is not one
CROWD_CHANCE = 0.3  # a person stands beside another, touching


@dataclass(frozen=True)
class Scene:
    results: list[DetectorResult]
    truth: list[tuple[int, tuple[float, float, float, float]]]  # (class index, x1 y1 x2 y2)


def synthetic_scene(rng: np.random.Generator, image_id: int, profiles: tuple[DetectorProfile, ...] = PROFILES
                    ) -> Scene:
    """One scene and every detector's answer about it."""
    truth = _objects(rng)
    ghost = _objects(rng, count=1)[0] if rng.random() < GHOST_CHANCE else None
    results = []
    for number, profile in enumerate(profiles):
        predictions = []
        for kind, box in truth:
            predictions += _sightings(rng, profile, kind, box, profile.recall, profile.seen)
        if ghost is not None:
            predictions += _sightings(rng, profile, ghost[0], ghost[1], profile.ghost_recall, profile.seen)
        for _ in range(rng.poisson(profile.hallucinations)):
            (kind, box), = _objects(rng, count=1)
            predictions.append(jittered_prediction(rng, CLASSES[kind], box, 0.0, _beta(rng, profile.false)))
        rng.shuffle(predictions)
        results.append(DetectorResult(image_id * 10 + number, profile.name, {"predictions": predictions}))
    return Scene(results, truth)


def _objects(rng: np.random.Generator, count: int | None = None) -> list[tuple[int, tuple[float, float, float, float]]]:
    count = int(rng.integers(OBJECTS[0], OBJECTS[1] + 1)) if count is None else count
    found: list[tuple[int, tuple[float, float, float, float]]] = []
    while len(found) < count:
        kind = int(rng.choice(len(CLASSES), p=CLASS_WEIGHTS))
        width, height = np.exp(rng.uniform(np.log(24), np.log(480), size=2))
        if found and kind == 0 and found[-1][0] == 0 and rng.random() < CROWD_CHANCE:
            # Beside the previous person, overlapping them by up to a third of a width.
            _, (x1, y1, x2, y2) = found[-1]
            width, height = (x2 - x1) * rng.uniform(0.8, 1.2), (y2 - y1) * rng.uniform(0.8, 1.2)
            left = min(max(x2 - width * rng.uniform(0.0, 0.33), 0.0), WIDTH - width)
            top = min(max(y1 + rng.normal(0, 0.1 * height), 0.0), HEIGHT - height)
        else:
            width, height = min(width, WIDTH - 1), min(height, HEIGHT - 1)
            left, top = rng.uniform(0, WIDTH - width), rng.uniform(0, HEIGHT - height)
        found.append((kind, (left, top, left + width, top + height)))
    return found


def _sightings(rng: np.random.Generator, profile: DetectorProfile, kind: int, box: tuple[float, float, float, float],
               recall: float, confidence: tuple[float, float]) -> list[dict[str, Any]]:
    """What one detector reports of one object: nothing, a box, or a box and a looser duplicate."""
    side = np.sqrt((box[2] - box[0]) * (box[3] - box[1]))
    if rng.random() >= recall * min(1.0, 0.5 + side / 200):
        return []
    if rng.random() < profile.confusion:
        kind = _INDEX[LOOK_ALIKES[CLASS_NAMES[kind]]]
    score = _beta(rng, confidence)
    found = [jittered_prediction(rng, CLASSES[kind], box, profile.jitter, score)]
    if rng.random() < profile.duplicate:
        found.append(jittered_prediction(rng, CLASSES[kind], box, profile.jitter * 3, score * rng.uniform(0.4, 0.9)))
    return found


def _beta(rng: np.random.Generator, shape: tuple[float, float]) -> float:
    return float(rng.beta(*shape))


def jittered_prediction(rng: np.random.Generator, named: tuple[str, str], box: tuple[float, float, float, float],
                        jitter: float, confidence: float) -> dict[str, Any]:
    """A detector's answer about a box: each edge moved by a normal draw of σ = jitter × the side, kept in the
    picture, in integer pixels; `named` is (label, emoji), the emoji left out when there is none."""
    x1, y1, x2, y2 = box
    width, height = x2 - x1, y2 - y1
    dx1, dx2 = rng.normal(0, jitter * width, size=2)
    dy1, dy2 = rng.normal(0, jitter * height, size=2)
    left, top = int(max(x1 + dx1, 0)), int(max(y1 + dy1, 0))
    right, bottom = int(min(x2 + dx2, WIDTH)), int(min(y2 + dy2, HEIGHT))
    label, emoji = named
    prediction: dict[str, Any] = {
        "label": label,
        "confidence": round(min(max(confidence, 0.01), 0.999), 3),
        "bbox": {"x": left, "y": top, "width": max(right - left, 1), "height": max(bottom - top, 1)},
    }
    if emoji:
        prediction["emoji"] = emoji
    return prediction
