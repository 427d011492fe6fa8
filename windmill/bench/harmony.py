"""Harmony speed (target ≤ 2 ms per image for 5 services × 50 boxes), beside ensemble-boxes' WBF.

Run: python -m windmill.bench.harmony [--images 500] [--runs 3] [--seed 7]
Synthetic images: 50 ground-truth objects, each seen by every service with recall 0.9 and a few
percent of jitter per edge, plus false positives to make exactly 50 boxes per service.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from windmill.emoji import normalize_emoji
from windmill.harmony import DetectorResult, HarmonyConfig, harmonize

SERVICES = ("clip", "detectron2", "rtdetr", "xception", "yolov8")
CLASSES = (
    ("person", "🧑"),
    ("dog", "🐕"),
    ("car", "🚗"),
    ("chair", "🪑"),
    ("bottle", "🍾"),
    ("cup", "☕️"),
    ("bicycle", "🚲"),
    ("bird", "🐦"),
    ("book", "📖"),
    ("dining table", ""),
)
# Most objects in photos are people; the rest share what's left.
CLASS_WEIGHTS = np.array([0.4] + [0.6 / 9] * 9)
WIDTH, HEIGHT = 1280, 960
OBJECTS, BOXES_PER_SERVICE, RECALL, JITTER = 50, 50, 0.9, 0.04


@dataclass(frozen=True)
class Image:
    results: list[DetectorResult]
    truth: list[tuple[int, tuple[float, float, float, float]]]  # (class index, x1 y1 x2 y2)


def synthetic_image(rng: np.random.Generator, image_id: int) -> Image:
    sizes = rng.uniform(24, 320, size=(OBJECTS, 2))
    corners = rng.uniform(0, 1, size=(OBJECTS, 2)) * (np.array([WIDTH, HEIGHT]) - sizes)
    kinds = rng.choice(len(CLASSES), size=OBJECTS, p=CLASS_WEIGHTS)
    truth = [(int(k), (*corners[i], *(corners[i] + sizes[i]))) for i, k in enumerate(kinds)]
    results = []
    for s, service in enumerate(SERVICES):
        predictions = []
        for kind, (x1, y1, x2, y2) in truth:
            if rng.random() < RECALL:
                predictions.append(_prediction(rng, kind, x1, y1, x2, y2))
        while len(predictions) < BOXES_PER_SERVICE:  # false positives
            w, h = rng.uniform(24, 200, size=2)
            x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            predictions.append(_prediction(rng, int(rng.integers(len(CLASSES))), x, y, x + w, y + h, 0.0))
        results.append(DetectorResult(image_id * 10 + s, service, {"predictions": predictions[:BOXES_PER_SERVICE]}))
    return Image(results, truth)


def _prediction(
    rng: np.random.Generator, kind: int, x1: float, y1: float, x2: float, y2: float, jitter: float = JITTER
) -> dict[str, Any]:
    w, h = x2 - x1, y2 - y1
    dx1, dx2 = rng.normal(0, jitter * w, size=2)
    dy1, dy2 = rng.normal(0, jitter * h, size=2)
    left, top = int(max(x1 + dx1, 0)), int(max(y1 + dy1, 0))
    right, bottom = int(min(x2 + dx2, WIDTH)), int(min(y2 + dy2, HEIGHT))
    label, emoji = CLASSES[kind]
    prediction: dict[str, Any] = {
        "label": label,
        "confidence": round(float(rng.uniform(0.3, 0.99)), 3),
        "bbox": {"x": left, "y": top, "width": max(right - left, 1), "height": max(bottom - top, 1)},
    }
    if emoji:
        prediction["emoji"] = emoji
    return prediction


def wbf_input(image: Image) -> tuple[list[list[list[float]]], list[list[float]], list[list[int]]]:
    """The same detections in ensemble-boxes' shape: per service, boxes in 0–1 coordinates and label ids."""
    class_ids: dict[str, int] = {}
    boxes, scores, labels = [], [], []
    for result in image.results:
        service_boxes, service_scores, service_labels = [], [], []
        for p in result.data["predictions"]:  # type: ignore[index]
            b = p["bbox"]
            service_boxes.append(
                [
                    b["x"] / WIDTH,
                    b["y"] / HEIGHT,
                    min((b["x"] + b["width"]) / WIDTH, 1.0),
                    min((b["y"] + b["height"]) / HEIGHT, 1.0),
                ]
            )
            service_scores.append(p["confidence"])
            key = normalize_emoji(p.get("emoji")) or p["label"]
            service_labels.append(class_ids.setdefault(key, len(class_ids)))
        boxes.append(service_boxes)
        scores.append(service_scores)
        labels.append(service_labels)
    return boxes, scores, labels


def timed(function: Callable[[Any], Any], inputs: Sequence[Any], runs: int) -> tuple[list[float], list[float]]:
    """Per-image milliseconds of every call, and the mean per image of each run."""
    per_image: list[float] = []
    run_means: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        for item in inputs:
            t0 = time.perf_counter()
            function(item)
            per_image.append((time.perf_counter() - t0) * 1000)
        run_means.append((time.perf_counter() - started) * 1000 / len(inputs))
    return per_image, run_means


def report(name: str, per_image: list[float], run_means: list[float]) -> None:
    ordered = sorted(per_image)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    print(
        f"{name:<34} ms/image: min {ordered[0]:.3f}  median {statistics.median(ordered):.3f}  "
        f"p95 {p95:.3f}  max {ordered[-1]:.3f}  | run means {', '.join(f'{m:.3f}' for m in run_means)}"
    )


def quality(name: str, found: list[list[tuple[int, tuple[float, float, float, float]]]], images: list[Image]) -> None:
    """Precision and recall at IoU ≥ 0.5 against the ground truth, greedy one-to-one per class."""
    hits = produced = expected = 0
    for boxes, image in zip(found, images, strict=True):
        produced += len(boxes)
        expected += len(image.truth)
        unmatched = list(image.truth)
        for kind, box in boxes:
            candidates = [(i, _iou(box, t)) for i, (k, t) in enumerate(unmatched) if k == kind]
            best = max(candidates, key=lambda c: c[1], default=None)
            if best is not None and best[1] >= 0.5:
                hits += 1
                unmatched.pop(best[0])
    print(
        f"{name:<34} boxes/image {produced / len(images):5.1f}  precision {hits / max(produced, 1):.3f}  "
        f"recall {hits / max(expected, 1):.3f}"
    )


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _class_index(box_emoji: str, box_label_class: str) -> int:
    for index, (label, emoji) in enumerate(CLASSES):
        if (emoji and normalize_emoji(emoji) == box_emoji) or (
            not emoji and box_label_class == label.replace(" ", "_")
        ):
            return index
    return -1


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    images = [synthetic_image(rng, i) for i in range(args.images)]
    print(f"{args.images} images × {len(SERVICES)} services × {BOXES_PER_SERVICE} boxes, {args.runs} runs")

    configs = {"harmony (weighted, default)": HarmonyConfig(), "harmony (reference, union)": HarmonyConfig.reference()}
    for image in images[:20]:  # warm-up: imports, caches, allocator
        harmonize(image.results)
    for name, config in configs.items():
        per_image, run_means = timed(lambda image, c=config: harmonize(image.results, c), images, args.runs)
        report(name, per_image, run_means)

    try:
        from ensemble_boxes import weighted_boxes_fusion
    except ImportError:
        print("ensemble-boxes is not installed: pip install ensemble-boxes to compare with weighted_boxes_fusion")
        weighted_boxes_fusion = None
    if weighted_boxes_fusion is not None:
        prepared = [wbf_input(image) for image in images]
        per_image, run_means = timed(lambda inputs: weighted_boxes_fusion(*inputs), prepared, args.runs)
        report("ensemble-boxes WBF (iou_thr 0.55)", per_image, run_means)
        per_image, run_means = timed(lambda image: weighted_boxes_fusion(*wbf_input(image)), images, args.runs)
        report("  … with conversion from answers", per_image, run_means)

    print("quality on the same images (IoU ≥ 0.5 with ground truth):")
    for name, config in configs.items():
        found = [
            [
                (
                    _class_index(b.emoji, b.label_class),
                    (b.bbox[0], b.bbox[1], b.bbox[0] + b.bbox[2], b.bbox[1] + b.bbox[3]),
                )
                for b in harmonize(image.results, config)
            ]
            for image in images
        ]
        quality(name, found, images)
    if weighted_boxes_fusion is not None:
        found = []
        for image, inputs in zip(images, prepared, strict=True):
            names = {}
            for service_labels, result in zip(inputs[2], image.results, strict=True):
                for label_id, p in zip(service_labels, result.data["predictions"], strict=True):  # type: ignore[index]
                    names[label_id] = _class_index(normalize_emoji(p.get("emoji")), p["label"].replace(" ", "_"))
            boxes, _, labels = weighted_boxes_fusion(*inputs)
            found.append(
                [
                    (names[int(k)], (b[0] * WIDTH, b[1] * HEIGHT, b[2] * WIDTH, b[3] * HEIGHT))
                    for b, k in zip(boxes, labels, strict=True)
                ]
            )
        quality("ensemble-boxes WBF (unfiltered)", found, images)


if __name__ == "__main__":
    main()
