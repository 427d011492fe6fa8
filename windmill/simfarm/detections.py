"""Simulated detectors: the sidecar's objects seen through each detector's own noise.

Every detector draws from a stream seeded by (image digest, detector), so it is deterministic per
image, while detectors differ from one another: box edges jitter by a few percent, small objects are
missed more often, confidences spread, and a false positive now and then. An object's "ease" is
shared by all detectors (a clear, large object is clear to all of them), which makes them disagree the
way real ones do: mostly about the hard cases.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from windmill.simfarm import lexicon
from windmill.simfarm.annotations import AnnotatedObject, Sidecar
from windmill.simfarm.determinism import stream, unit

Corners = tuple[float, float, float, float]  # x1, y1, x2, y2


@dataclass(frozen=True)
class Style:
    """How one detector sees the world."""

    jitter: float  # σ of each box edge, as a fraction of the box's size
    miss: float  # base miss probability
    small_miss: float  # extra miss probability for the smallest objects
    confidence: tuple[float, float]  # range for a clearly visible object
    threshold: float  # answers below are dropped, as the service does
    false_positives: float  # expected false positives per annotated image
    false_confidence: tuple[float, float]


@dataclass(frozen=True)
class Sighting:
    label: str
    confidence: float
    corners: Corners
    source: AnnotatedObject | None  # None: a false positive


COCO_DECOYS = ("chair", "handbag", "bottle", "cup", "cell phone", "book", "clock", "potted plant", "bench",
               "umbrella", "tie", "kite", "remote", "vase")
CLIP_DECOYS = ("lamp", "window", "shadow", "wall", "light", "pole", "sign")
XCEPTION_DECOYS = ("lampshade", "window_screen", "chain", "spotlight", "pole", "switch")

STYLES: dict[str, Style] = {
    "yolov8": Style(0.030, 0.05, 0.35, (0.55, 0.95), 0.25, 0.5, (0.26, 0.45)),
    "rtdetr": Style(0.035, 0.04, 0.30, (0.60, 0.97), 0.25, 0.6, (0.26, 0.50)),
    "detectron2": Style(0.025, 0.07, 0.45, (0.80, 0.999), 0.50, 0.3, (0.50, 0.64)),
    # Stage 1 of the two-stage detectors: YOLOv8x-seg for CLIP, YOLO11n (smaller, misses more) for Xception.
    "clip": Style(0.030, 0.06, 0.40, (0.50, 0.95), 0.40, 0.4, (0.40, 0.55)),
    "xception": Style(0.040, 0.10, 0.55, (0.45, 0.92), 0.40, 0.4, (0.40, 0.55)),
}
SAME_CLASS_IOU = 0.3
MIN_TWO_STAGE_SIDE = 20


def iou(a: Corners, b: Corners) -> float:
    inter_w = min(a[2], b[2]) - max(a[0], b[0])
    inter_h = min(a[3], b[3]) - max(a[1], b[1])
    if inter_w <= 0 or inter_h <= 0:
        return 0.0
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _jitter(box: tuple[int, int, int, int], sigma: float, rng: random.Random, width: int, height: int) -> Corners:
    x, y, w, h = box
    x1 = min(max(x + rng.gauss(0, sigma * w), 0.0), width - 1.0)
    y1 = min(max(y + rng.gauss(0, sigma * h), 0.0), height - 1.0)
    x2 = min(max(x + w + rng.gauss(0, sigma * w), x1 + 1.0), float(width))
    y2 = min(max(y + h + rng.gauss(0, sigma * h), y1 + 1.0), float(height))
    return (x1, y1, x2, y2)


def observe(detector: str, sidecar: Sidecar, digest: str, width: int, height: int) -> list[Sighting]:
    """What a COCO detector (or a two-stage detector's stage 1) reports for an annotated image."""
    style = STYLES[detector]
    rng = stream(digest, detector, "observe")
    sightings: list[Sighting] = []
    for index, obj in enumerate(sidecar.objects):
        # Draw the same numbers whether or not the object is visible, so sidecar edits stay local.
        ease = unit(digest, "ease", index)
        miss_draw, spread_draw = rng.random(), rng.random()
        corners = _jitter(obj.bbox, style.jitter, rng, width, height)
        if obj.coco is None:
            continue
        area = max(obj.bbox[2] * obj.bbox[3], 1) / max(width * height, 1)
        smallness = max(0.0, 1.0 - math.sqrt(area) / 0.25)
        if miss_draw < (style.miss + style.small_miss * smallness) * (1.5 - ease):
            continue
        low, high = style.confidence
        confidence = low + (high - low) * (0.6 * ease + 0.4 * spread_draw) - 0.15 * smallness
        if confidence >= style.threshold:
            sightings.append(Sighting(obj.coco, min(confidence, 0.999), corners, obj))
    if sidecar.objects:
        sightings.extend(_false_positives(style, rng, width, height))
    return _dedupe_same_class(sightings)


def _false_positives(style: Style, rng: random.Random, width: int, height: int) -> list[Sighting]:
    count = sum(1 for _ in range(3) if rng.random() < style.false_positives / 3)
    found = []
    for _ in range(count):
        w, h = rng.uniform(0.04, 0.14) * width, rng.uniform(0.05, 0.16) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        label = rng.choice(COCO_DECOYS)
        found.append(Sighting(label, rng.uniform(*style.false_confidence), (x, y, x + w, y + h), None))
    return found


def _dedupe_same_class(sightings: list[Sighting]) -> list[Sighting]:
    kept: list[Sighting] = []
    for sighting in sorted(sightings, key=lambda s: -s.confidence):
        if all(k.label != sighting.label or iou(k.corners, sighting.corners) <= SAME_CLASS_IOU for k in kept):
            kept.append(sighting)
    return kept


def _dict_box(corners: Corners, *, truncate: bool = False) -> dict[str, int]:
    convert = int if truncate else round
    x1, y1, x2, y2 = (convert(value) for value in corners)
    return {"x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1}


def _grouped_by_class(sightings: list[Sighting]) -> list[Sighting]:
    """yolov8/rtdetr order: classes by their strongest detection, then confidence within a class."""
    best: dict[str, float] = {}
    for s in sightings:
        best[s.label] = max(best.get(s.label, 0.0), s.confidence)
    return sorted(sightings, key=lambda s: (-best[s.label], s.label, -s.confidence))


def coco_predictions(detector: str, sidecar: Sidecar | None, digest: str, width: int, height: int) -> list[dict]:
    """yolov8, rtdetr, detectron2 (§3.8–3.10): COCO labels, dict boxes, emoji only when mapped."""
    if sidecar is None:
        return []
    sightings = observe(detector, sidecar, digest, width, height)
    if detector == "detectron2":
        ordered = sorted(sightings, key=lambda s: -s.confidence)
    else:
        ordered = _grouped_by_class(sightings)
    predictions = []
    for s in ordered:
        prediction: dict[str, Any] = {
            "label": s.label,
            "confidence": round(s.confidence, 3),
            "bbox": _dict_box(s.corners, truncate=detector == "rtdetr"),
        }
        if detector == "detectron2":
            emoji = lexicon.emoji_underscored(s.label, singular=True)
        else:
            emoji = lexicon.emoji_verbatim(s.label)
        if emoji:
            prediction["emoji"] = emoji
        predictions.append(prediction)
    return predictions


def two_stage_predictions(detector: str, sidecar: Sidecar | None, digest: str, width: int, height: int) -> list[dict]:
    """CLIP_detection and xception_detection (§3.5, §3.7): stage-1 boxes, relabelled by the classifier."""
    if sidecar is None:
        return []
    rng = stream(digest, detector, "classify")
    classified: list[tuple[str, float, Corners]] = []
    for s in observe(detector, sidecar, digest, width, height):
        box = _dict_box(s.corners)
        if box["width"] < MIN_TWO_STAGE_SIDE or box["height"] < MIN_TWO_STAGE_SIDE:
            continue
        draw = rng.random()
        ease = s.confidence
        if detector == "clip":
            label = s.source.clip if s.source else rng.choice(CLIP_DECOYS)
            confidence = 0.1 + 0.6 * (0.5 * draw + 0.5 * ease) if s.source else 0.05 + 0.15 * draw
        else:
            label = (s.source.imagenet if s.source else rng.choice(XCEPTION_DECOYS)) or ""
            confidence = 0.15 + 0.8 * (0.5 * draw + 0.5 * ease) if s.source else 0.08 + 0.2 * draw
            if not label or confidence < 0.15:  # Xception's classification threshold drops the box
                continue
        classified.append((label.lower().replace(" ", "_"), min(confidence, 0.999), s.corners))
    predictions = []
    for label, confidence, corners, merged in _merge_same_label(classified):
        emoji = lexicon.emoji_underscored(label, singular=detector == "xception") or ""
        prediction: dict[str, Any] = {
            "label": label, "emoji": emoji, "confidence": round(confidence, 3), "bbox": _dict_box(corners)
        }
        if merged > 1:
            prediction["merged_count"] = merged
        predictions.append(prediction)
    return sorted(predictions, key=lambda p: -p["confidence"])


def _merge_same_label(found: list[tuple[str, float, Corners]]) -> list[tuple[str, float, Corners, int]]:
    """Same-label boxes overlapping with IoU > 0.3 become their union with the best confidence."""
    merged: list[tuple[str, float, Corners, int]] = []
    for label, confidence, corners in sorted(found, key=lambda f: -f[1]):
        for i, (m_label, m_conf, m_corners, m_count) in enumerate(merged):
            if m_label == label and iou(m_corners, corners) > SAME_CLASS_IOU:
                union = (min(m_corners[0], corners[0]), min(m_corners[1], corners[1]),
                         max(m_corners[2], corners[2]), max(m_corners[3], corners[3]))
                merged[i] = (label, max(m_conf, confidence), union, m_count + 1)
                break
        else:
            merged.append((label, confidence, corners, 1))
    return merged
