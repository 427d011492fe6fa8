"""Harmony benchmark: speed (target ≤ 2 ms per image for 5 services × 50 boxes) and quality (AP50 and best F1
against ground truth, targets: at least weighted boxes fusion's), beside ensemble-boxes' WBF.

Run: python -m windmill.bench.harmony [--images 500] [--scenes 2000] [--runs 3] [--seed 7]

Speed: synthetic images of 50 ground-truth objects, each seen by every service with recall 0.9 and a few
percent of jitter per edge, plus false positives to make exactly 50 boxes per service.
Quality: scenes of 2–6 objects seen by five detectors that disagree as real ones do (harmony_scenes), scored
exactly as `windmill-cli eval --coco` scores stored boxes (COCO AP50, class-aware; best F1 at IoU 0.5 over
score thresholds), each method ranked by its own confidence: harmony by its fused score, the reference by its
only one (avg_confidence), WBF by its fused score.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import numpy as np

from windmill.bench.harmony_scenes import CLASS_NAMES, HEIGHT, WIDTH, Scene, jittered_prediction, synthetic_scene
from windmill.coco_eval import GroundTruth, Prediction, SourcePredictions, parse_ground_truth, score_sources
from windmill.emoji import normalize_emoji
from windmill.errors import WindmillError
from windmill.evaluation import detector_predictions, merged_predictions
from windmill.harmony import DetectorResult, HarmonyConfig, MergedBox, harmonize, harmonize_with_rejected

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
OBJECTS, BOXES_PER_SERVICE, RECALL, JITTER = 50, 50, 0.9, 0.04


@dataclass(frozen=True)
class Image:
    results: list[DetectorResult]


def synthetic_image(rng: np.random.Generator, image_id: int) -> Image:
    """A crowded image for the speed figure: 5 services × 50 boxes."""
    sizes = rng.uniform(24, 320, size=(OBJECTS, 2))
    corners = rng.uniform(0, 1, size=(OBJECTS, 2)) * (np.array([WIDTH, HEIGHT]) - sizes)
    kinds = rng.choice(len(CLASSES), size=OBJECTS, p=CLASS_WEIGHTS)
    truth = [(int(k), (*corners[i], *(corners[i] + sizes[i]))) for i, k in enumerate(kinds)]
    results = []
    for s, service in enumerate(SERVICES):
        predictions = []
        for kind, (x1, y1, x2, y2) in truth:
            if rng.random() < RECALL:
                predictions.append(_speed_prediction(rng, kind, (x1, y1, x2, y2), JITTER))
        while len(predictions) < BOXES_PER_SERVICE:  # false positives
            w, h = rng.uniform(24, 200, size=2)
            x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            predictions.append(_speed_prediction(rng, int(rng.integers(len(CLASSES))), (x, y, x + w, y + h), 0.0))
        results.append(DetectorResult(image_id * 10 + s, service, {"predictions": predictions[:BOXES_PER_SERVICE]}))
    return Image(results)


def _speed_prediction(rng: np.random.Generator, kind: int, box: tuple[float, float, float, float], jitter: float
                      ) -> dict[str, Any]:
    return jittered_prediction(rng, CLASSES[kind], box, jitter, float(rng.uniform(0.3, 0.99)))


WbfInput = tuple[list[list[list[float]]], list[list[float]], list[list[int]]]


def wbf_input(results: Sequence[DetectorResult]) -> tuple[WbfInput, list[tuple[str, str]]]:
    """The same detections in ensemble-boxes' shape: per service, boxes in 0–1 coordinates and class ids; and
    the (label, emoji) of each class id, so that WBF's boxes can be named again."""
    class_ids: dict[str, int] = {}
    names: list[tuple[str, str]] = []
    boxes, scores, labels = [], [], []
    for result in results:
        service_boxes, service_scores, service_labels = [], [], []
        for p in _predictions(result):
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
            if key not in class_ids:
                class_ids[key] = len(names)
                names.append((p["label"], p.get("emoji", "")))
            service_labels.append(class_ids[key])
        boxes.append(service_boxes)
        scores.append(service_scores)
        labels.append(service_labels)
    return (boxes, scores, labels), names


# ------------------------------------------------------------------------------------------------
# Speed


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


def _predictions(result: DetectorResult) -> list[dict[str, Any]]:
    """The predictions of a synthetic answer (built by harmony_scenes: a dict with a list)."""
    return cast(dict[str, list[dict[str, Any]]], result.data)["predictions"]


def speed(inputs: Sequence[Sequence[DetectorResult]], runs: int, wbf: Callable[..., Any] | None) -> None:
    configs = {"harmony (weighted, default)": HarmonyConfig(), "harmony (reference, union)": HarmonyConfig.reference()}
    for results in inputs[:20]:  # warm-up: imports, caches, allocator
        harmonize(results)
    for name, config in configs.items():
        report(name, *timed(partial(harmonize, config=config), inputs, runs))
    if wbf is not None:
        prepared = [wbf_input(results)[0] for results in inputs]
        report("ensemble-boxes WBF (iou_thr 0.55)", *timed(lambda arguments: wbf(*arguments), prepared, runs))
        report("  … with conversion from answers", *timed(lambda results: wbf(*wbf_input(results)[0]), inputs, runs))


# ------------------------------------------------------------------------------------------------
# Quality


def scenes_truth(scenes: Sequence[Scene]) -> GroundTruth:
    """The scenes' objects as a COCO annotations document, image ids 1…n."""
    return parse_ground_truth({
        "images": [{"id": i, "file_name": f"scene{i}.jpg", "width": WIDTH, "height": HEIGHT}
                   for i in range(1, len(scenes) + 1)],
        "categories": [{"id": i, "name": name} for i, name in enumerate(CLASS_NAMES, 1)],
        "annotations": [{"image_id": i, "category_id": kind + 1, "bbox": [x1, y1, x2 - x1, y2 - y1]}
                        for i, scene in enumerate(scenes, 1) for kind, (x1, y1, x2, y2) in scene.truth],
    }, "scenes")


def merged_source(boxes_per_scene: Sequence[Iterable[MergedBox]], ranked_by: str = "score") -> SourcePredictions:
    """Merged boxes read as `eval --coco` reads stored rows, ranked by `ranked_by` (score or avg_confidence);
    a scene without boxes counts, with nothing found."""
    rows: list[tuple[int, dict[str, Any] | None]] = [(i, None) for i in range(1, len(boxes_per_scene) + 1)]
    rows += [(i, {**data, "score": data[ranked_by]}) for i, boxes in enumerate(boxes_per_scene, 1)
             for data in (box.to_merged_data() for box in boxes)]
    return merged_predictions(rows, {i: i for i in range(1, len(boxes_per_scene) + 1)})


def wbf_source(scenes: Sequence[Scene], wbf: Callable[..., Any]) -> SourcePredictions:
    predictions = []
    for i, scene in enumerate(scenes, 1):
        arguments, names = wbf_input(scene.results)
        for box, score, label in zip(*wbf(*arguments), strict=True):
            x1, y1, x2, y2 = box[0] * WIDTH, box[1] * HEIGHT, box[2] * WIDTH, box[3] * HEIGHT
            name, emoji = names[int(label)]
            predictions.append(Prediction(i, (name,), emoji, float(score), (x1, y1, x2 - x1, y2 - y1)))
    return SourcePredictions(frozenset(range(1, len(scenes) + 1)), tuple(predictions))


def quality_rows(scenes: Sequence[Scene], wbf: Callable[..., Any] | None) -> list[dict[str, Any]]:
    """AP50 and best F1 of every method on the same scenes: harmony's final set, the same with its rejected
    clusters as candidates, the same ranked by avg_confidence, the reference, WBF and each detector alone."""
    default = [harmonize_with_rejected(scene.results) for scene in scenes]
    reference = [harmonize(scene.results, HarmonyConfig.reference()) for scene in scenes]
    sources = {
        "harmony": merged_source([h.boxes for h in default]),
        "harmony + rejected": merged_source([[*h.boxes, *h.rejected] for h in default]),
        "harmony by avg_confidence": merged_source([h.boxes for h in default], "avg_confidence"),
        "reference (union, avg_confidence)": merged_source(reference, "avg_confidence"),
    }
    if wbf is not None:
        sources["WBF (ensemble-boxes)"] = wbf_source(scenes, wbf)
    answers = [(i, result.result_id, result.service, result.data)
               for i, scene in enumerate(scenes, 1) for result in scene.results]
    sources.update(sorted(detector_predictions(answers, {i: i for i in range(1, len(scenes) + 1)}).items()))
    return score_sources(scenes_truth(scenes), sources)


def print_quality(rows: Sequence[dict[str, Any]]) -> None:
    print(f"{'method':<34} boxes/image  AP50    best F1 (precision / recall at score ≥ threshold)")
    for row in rows:
        print(f"{row['source']:<34} {row['predictions'] / max(row['images'], 1):11.2f}  {row['AP50']:.4f}  "
              f"{row['best_F1']:.4f} ({row['F1_precision']:.3f} / {row['F1_recall']:.3f} at ≥ {row['F1_threshold']})")


# ------------------------------------------------------------------------------------------------


def load_wbf() -> Callable[..., Any] | None:
    try:
        from ensemble_boxes import weighted_boxes_fusion
    except ImportError:
        print("ensemble-boxes is not installed: pip install 'windmill-pipeline[bench]' to compare with "
              "weighted_boxes_fusion")
        return None
    return weighted_boxes_fusion


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="crowded images (5 × 50 boxes) for the speed figure")
    parser.add_argument("--scenes", type=int, default=2000, help="scenes of 2-6 objects for the quality figures")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    wbf = load_wbf()

    rng = np.random.default_rng(args.seed)
    images = [synthetic_image(rng, i).results for i in range(args.images)]
    print(f"speed: {args.images} images × {len(SERVICES)} services × {BOXES_PER_SERVICE} boxes, {args.runs} runs")
    speed(images, args.runs, wbf)

    scene_rng = np.random.default_rng([args.seed, 1])  # its own stream: the scenes do not depend on --images
    scenes = [synthetic_scene(scene_rng, i) for i in range(args.scenes)]
    boxes = sum(len(_predictions(result)) for scene in scenes for result in scene.results)
    print(f"speed on scenes: {args.scenes} scenes of 2-6 objects, {boxes / max(args.scenes, 1):.1f} boxes each")
    speed([scene.results for scene in scenes], args.runs, wbf)
    try:
        rows = quality_rows(scenes, wbf)
    except WindmillError as error:  # pycocotools missing: the one sentence says what to install
        print(f"quality: {error}")
        return 1
    print(f"quality on the {args.scenes} scenes (COCO AP50, class-aware; best F1 at IoU 0.5 over score thresholds):")
    print_quality(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
