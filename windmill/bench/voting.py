"""Benchmark: V3 voting over the contract-shaped answers of all 14 services and 10 merged boxes per image.

Run `python -m windmill.bench.voting [--images 2000] [--runs 3]`; it prints min/median/max milliseconds per
image (and the 99th percentile) for each run. The budget is 2 ms per image.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from windmill.catalog import load_catalog
from windmill.voting import MergedBoxRow, PostprocessingRow, ServiceResult, compute_consensus

BUDGET_MS = 2.0
SERVICE_TYPES = {service.name: service.service_type for service in load_catalog().services}
# The scene: (label, emoji, box) of ten objects; the first three are people.
OBJECTS = [
    ("person", "🧑", (212, 48, 231, 371)),
    ("person", "🧑", (20, 60, 150, 360)),
    ("person", "👩", (470, 70, 140, 340)),
    ("dog", "🐶", (388, 214, 176, 160)),
    ("dog", "🐶", (300, 330, 90, 80)),
    ("couch", "🪑", (0, 150, 640, 277)),
    ("tv", "📺", (500, 10, 120, 80)),
    ("cup", "☕️", (330, 260, 30, 40)),
    ("bottle", "🍾", (370, 250, 20, 60)),
    ("potted plant", "🪴", (590, 200, 50, 120)),
]
_SIDED = "eye_inner eye eye_outer ear shoulder elbow wrist pinky index thumb hip knee ankle heel foot_index"
# MediaPipe's 33 pose landmarks (animal-farm-api.md §3.12).
LANDMARKS = ["nose", "mouth_left", "mouth_right"] + [
    f"{side}_{part}" for part in _SIDED.split() for side in ("left", "right")
]


def _bbox(box: tuple[int, int, int, int], shift: int = 0) -> dict[str, int]:
    x, y, width, height = box
    return {"x": x + shift, "y": y + shift, "width": width, "height": height}


def _envelope(service: str, predictions: list[dict[str, Any]], seconds: float, **extra: Any) -> dict[str, Any]:
    return {
        "service": service,
        "status": "success",
        "predictions": predictions,
        **extra,
        "metadata": {"processing_time": seconds, "model_info": {"framework": service}},
    }


def _detector(service: str, shift: int, objects: Sequence[tuple[str, str, tuple[int, int, int, int]]]) -> dict:
    predictions = [
        {"label": label, "confidence": round(0.95 - index * 0.04, 3), "bbox": _bbox(box, shift), "emoji": emoji}
        for index, (label, emoji, box) in enumerate(objects)
    ]
    return _envelope(service, predictions, 0.05)


def _caption(service: str, text: str, words: Sequence[tuple[str, str]]) -> dict[str, Any]:
    mappings = [{"word": word, "emoji": emoji} for word, emoji in words]
    return _envelope(service, [{"text": text, "emoji_mappings": mappings}], 0.4)


def _answers() -> dict[str, dict[str, Any]]:
    """One contract-shaped answer per catalog service (animal-farm-api.md §3), for the scene above."""
    two_stage = {
        "full_image": [
            {"label": "living_room_scene", "emoji": "", "confidence": 0.287},
            {"label": "studio_couch", "emoji": "🪑", "confidence": 0.173},
            {"label": "golden_retriever", "emoji": "🐶", "confidence": 0.121},
        ]
    }
    clip = _detector("YOLO-CLIP-Detector", 3, OBJECTS[:8]) | two_stage
    xception = _detector("YOLO11n-Xception-Detector", 4, OBJECTS[3:]) | two_stage
    landmarks = {name: {"x": 0.5, "y": 0.5, "z": -0.1, "visibility": 0.9} for name in LANDMARKS}
    angles = {"left_elbow": 130.9, "right_elbow": 129.5, "left_knee": 147.6, "right_knee": 150.1}
    colors = [
        {"copic": f"Marker {index} (E{index})", "hex": f"#{index:02x}7b6a", "temperature": "neutral"}
        for index in range(8)
    ]
    return {
        "blip": _caption(
            "blip", "three people sitting on a couch with two dogs", [("people", "🧑"), ("couch", "🪑"), ("dogs", "🐶")]
        ),
        "clip": clip,
        "colors": _envelope(
            "colors", [{"primary": colors[0], "palette": {"temperature": "neutral", "colors": colors}}], 0.158
        ),
        "detectron2": _detector("detectron2", 1, OBJECTS),
        "face": _envelope(
            "face",
            [
                {
                    "label": "face",
                    "emoji": "🙂",
                    "confidence": 0.912,
                    "bbox": [81, 23, 58, 58],
                    "keypoints": {"nose_tip": [108, 55]},
                }
            ],
            0.021,
        ),
        "xception": xception,
        "metadata": _envelope(
            "metadata",
            [{"dimensions": {"height": 427, "width": 640}, "aspect_ratio": {"category": "landscape", "ratio": 1.5}}],
            0.187,
        ),
        "ocr": _envelope(
            "ocr",
            [
                {
                    "text": "HOME SWEET HOME",
                    "has_text": True,
                    "emoji": "💬",
                    "text_regions": [],
                    "emoji_mappings": [{"word": "home", "emoji": "🏠"}, {"word": "sweet", "emoji": "🍬"}],
                }
            ],
            0.318,
        ),
        "nsfw2": _envelope("nsfw2", [{"confidence": 0.987, "emoji": "", "nsfw": False}], 0.044),
        "ollama": _caption(
            "ollama",
            "Three people relax on a couch with their dogs, a tv and a plant nearby.",
            [("people", "🧑"), ("couch", "🪑"), ("dogs", "🐶"), ("tv", "📺"), ("plant", "🪴")],
        ),
        "pose": _envelope("pose", [{"landmarks": landmarks, "pose_analysis": {"joint_angles": angles}}], 0.212),
        "rtdetr": _detector("rtdetr", 2, OBJECTS),
        "yolov8": _detector("yolo", 0, OBJECTS),
        "caption_score": {
            "service": "clip",
            "status": "success",
            "similarity_score": 0.297,
            "caption": "three people sitting on a couch with two dogs",
            "image_source": "file",
            "metadata": {"processing_time": 0.061},
        },
    }


def _boxes() -> list[MergedBoxRow]:
    """Ten merged boxes: the three people and five objects agreed by 3-5 detectors, two single-detector boxes."""
    rows = []
    for index, (label, emoji, box) in enumerate(OBJECTS):
        services = ["detectron2", "rtdetr", "yolov8", "clip", "xception"][: 1 if index >= 8 else 3 + index % 3]
        confidences = [0.9 - 0.01 * n for n in range(len(services))]
        rows.append(
            MergedBoxRow(
                1000 + index,
                {
                    "cluster_id": f"{emoji}_{index + 1}",
                    "emoji": emoji,
                    "labels": [label],
                    "merged_bbox": _bbox(box),
                    "detection_count": len(services),
                    "avg_confidence": round(sum(confidences) / len(confidences), 3),
                    "contributing_services": sorted(services),
                    "detections": [{"service": s, "confidence": c} for s, c in zip(services, confidences, strict=True)],
                    "harmonization_algorithm": "cross_service_clustering_v1",
                    "source_result_ids": [1, 2, 3, 4, 5],
                },
            )
        )
    return rows


def image_rows() -> tuple[list[ServiceResult], list[MergedBoxRow], list[PostprocessingRow]]:
    """The rows of one image: 14 results (plus a superseded blip retry), 10 boxes, face/pose/colors crops."""
    created = datetime(2025, 9, 3, 12, 0, 0)
    answers = _answers()
    results = [
        ServiceResult(
            index + 1,
            name,
            "success",
            answer,
            answer["metadata"]["processing_time"],
            created + timedelta(seconds=index),
        )
        for index, (name, answer) in enumerate(answers.items())
    ]
    results.append(ServiceResult(99, "blip", "success", answers["blip"], 0.5, created - timedelta(seconds=5)))
    boxes = _boxes()
    post = [
        PostprocessingRow(2000 + n, box.merged_id, "colors", "success", answers["colors"])
        for n, box in enumerate(boxes)
    ]
    for n, box in enumerate(boxes[:3]):
        post.append(PostprocessingRow(3000 + n, box.merged_id, "face", "success", answers["face"]))
        post.append(PostprocessingRow(4000 + n, box.merged_id, "pose", "success", answers["pose"]))
    return results, boxes, post


def run(images: int) -> list[float]:
    """Milliseconds of each compute_consensus call over `images` images."""
    results, boxes, post = image_rows()
    timings = []
    for _ in range(images):
        started = time.perf_counter()
        compute_consensus(results, boxes, post, service_types=SERVICE_TYPES)
        timings.append((time.perf_counter() - started) * 1000.0)
    return timings


def _p99(timings: list[float]) -> float:
    ordered = sorted(timings)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m windmill.bench.voting", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="images per run (default 2000)")
    parser.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    options = parser.parse_args(argv)
    results, boxes, post = image_rows()
    sample = compute_consensus(results, boxes, post, service_types=SERVICE_TYPES)
    print(
        f"voting: {sample['services_count']} services, {len(boxes)} merged boxes, "
        f"{sample['debug']['detection_count']} votes, {len(sample['votes']['consensus'])} emoji listed; "
        f"{options.images} images x {options.runs} runs"
    )
    medians = []
    for number in range(1, options.runs + 1):
        timings = run(options.images)
        medians.append(statistics.median(timings))
        print(
            f"run {number}: min {min(timings):.3f} ms  median {medians[-1]:.3f} ms  p99 {_p99(timings):.3f} ms"
            f"  max {max(timings):.3f} ms  per image ({sum(timings):.0f} ms total)"
        )
    verdict = "within" if max(medians) <= BUDGET_MS else "OVER"
    print(f"median per image {statistics.median(medians):.3f} ms: {verdict} the {BUDGET_MS:g} ms budget")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
