"""Face (§3.11) and pose (§3.12), the services that receive crops of person boxes.

A crop has no sidecar, so both answer from its shape: a crop taller than wide looks like a standing
person, with a face in its upper part; the choices are drawn from the crop's digest, so they are
deterministic. A full annotated image uses its sidecar instead (faces marked on persons, the largest
person for pose).
"""

from __future__ import annotations

import math
import random
from typing import Any

from windmill.simfarm.annotations import Sidecar
from windmill.simfarm.determinism import stream

FACE_EMOJI = "🙂"
LANDMARKS = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)

# Box-relative (x, y) of each landmark for a person facing the camera; "left" is the subject's left,
# so it sits on the image's right.
_STANDING = (
    (0.50, 0.09), (0.52, 0.075), (0.535, 0.075), (0.55, 0.077), (0.48, 0.075), (0.465, 0.075), (0.45, 0.077),
    (0.57, 0.085), (0.43, 0.085), (0.53, 0.115), (0.47, 0.115), (0.66, 0.21), (0.34, 0.21), (0.71, 0.36),
    (0.29, 0.36), (0.69, 0.50), (0.31, 0.50), (0.69, 0.53), (0.31, 0.53), (0.68, 0.535), (0.32, 0.535),
    (0.675, 0.52), (0.325, 0.52), (0.60, 0.53), (0.40, 0.53), (0.61, 0.72), (0.39, 0.72), (0.61, 0.91),
    (0.39, 0.91), (0.605, 0.935), (0.395, 0.935), (0.63, 0.96), (0.37, 0.96),
)
# Seated: thighs come towards the camera (short in 2-D), shins hang down.
_SITTING = (*_STANDING[:23], (0.60, 0.55), (0.40, 0.55), (0.66, 0.62), (0.34, 0.62), (0.64, 0.88), (0.36, 0.88),
            (0.635, 0.90), (0.365, 0.90), (0.67, 0.93), (0.33, 0.93))


def _looks_like_person(width: int, height: int) -> bool:
    return height >= 1.15 * width and min(width, height) >= 24


def _keypoints(x: float, y: float, w: float, h: float) -> dict[str, list[int]]:
    def at(fx: float, fy: float) -> list[int]:
        return [round(x + fx * w), round(y + fy * h)]

    return {
        "right_eye": at(0.32, 0.38), "left_eye": at(0.68, 0.37), "nose_tip": at(0.5, 0.57),
        "mouth_center": at(0.5, 0.78), "right_ear_tragion": at(0.03, 0.47), "left_ear_tragion": at(0.97, 0.46),
    }


def _face(x: float, y: float, w: float, h: float, confidence: float) -> dict[str, Any]:
    return {
        "label": "face",
        "emoji": FACE_EMOJI,
        "confidence": round(confidence, 3),
        "bbox": [round(x), round(y), round(w), round(h)],  # a list, unclamped (§3.11)
        "keypoints": _keypoints(x, y, w, h),
    }


def face_predictions(sidecar: Sidecar | None, digest: str, width: int, height: int) -> list[dict[str, Any]]:
    rng = stream(digest, "face")
    if sidecar is not None:
        faces = []
        for obj in sidecar.objects:
            if obj.face is None:
                continue
            x, y, w, h = obj.face
            jitter = [rng.gauss(0, 0.03) for _ in range(4)]
            faces.append(_face(x + jitter[0] * w, y + jitter[1] * h, w * (1 + jitter[2]), h * (1 + jitter[3]),
                               rng.uniform(0.75, 0.97)))
        return faces
    if not _looks_like_person(width, height) and rng.random() >= 0.3:
        return []
    side = min(0.42 * width, 0.3 * height)
    left = (width - side) / 2 + rng.uniform(-0.08, 0.08) * width
    top = rng.uniform(0.03, 0.12) * height
    return [_face(left, top, side, side * rng.uniform(1.0, 1.12), rng.uniform(0.6, 0.95))]


def _angle(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
    """The angle at b, in degrees, between b→a and b→c (2-D, as the service computes it)."""
    first = math.atan2(a[1] - b[1], a[0] - b[0])
    second = math.atan2(c[1] - b[1], c[0] - b[0])
    degrees = abs(math.degrees(first - second))
    return round(360 - degrees if degrees > 180 else degrees, 1)


def _skeleton(template: tuple[tuple[float, float], ...], box: tuple[float, float, float, float],
              rng: random.Random) -> dict[str, Any]:
    """Landmarks normalized to the received image (0–1), joint angles from them."""
    bx, by, bw, bh = box
    landmarks: dict[str, dict[str, float]] = {}
    points: dict[str, tuple[float, float]] = {}
    for index, (name, (fx, fy)) in enumerate(zip(LANDMARKS, template, strict=True)):
        x = round(bx + (fx + rng.gauss(0, 0.012)) * bw, 3)
        y = round(by + (fy + rng.gauss(0, 0.012)) * bh, 3)
        lower_body = index >= 23
        visibility = rng.uniform(0.55, 0.9) if lower_body else rng.uniform(0.85, 0.999)
        landmarks[name] = {"x": x, "y": y, "z": round(rng.uniform(-0.45, 0.25), 3), "visibility": round(visibility, 3)}
        points[name] = (x, y)
    angles = {
        f"{side}_{joint}": _angle(points[f"{side}_{a}"], points[f"{side}_{joint}"], points[f"{side}_{c}"])
        for side in ("left", "right")
        for joint, a, c in (("elbow", "shoulder", "wrist"), ("knee", "hip", "ankle"))
    }
    return {"landmarks": landmarks, "pose_analysis": {"joint_angles": angles}}


def pose_predictions(sidecar: Sidecar | None, digest: str, width: int, height: int) -> list[dict[str, Any]]:
    """0 or 1 person (§3.12)."""
    rng = stream(digest, "pose")
    if sidecar is not None:
        people = [obj for obj in sidecar.objects if obj.coco == "person"]
        if not people:
            return []
        x, y, w, h = max(people, key=lambda obj: obj.bbox[2] * obj.bbox[3]).bbox
        return [_skeleton(_STANDING, (x / width, y / height, w / width, h / height), rng)]
    if _looks_like_person(width, height):
        return [_skeleton(_STANDING, (0.0, 0.0, 1.0, 1.0), rng)]
    if rng.random() < 0.5:
        return [_skeleton(_SITTING, (0.0, 0.0, 1.0, 1.0), rng)]
    return []
