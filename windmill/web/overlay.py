"""What the image page draws over the picture, as plain shapes in image pixels (pure): the merged boxes with their
tags, each detector's raw boxes in its own colour (switchable layers), faces with their keypoints and pose
skeletons from the postprocessing of person boxes. The template turns them into SVG."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from windmill.label_placement import place_labels
from windmill.render import MERGED_COLOUR, box_caption, detector_colours, raw_detector_boxes

FACE_COLOUR = "#00e5ff"
POSE_COLOUR = "#7cfc00"
VISIBLE = 0.5  # pose landmarks below this visibility are not drawn
# MediaPipe's body landmarks joined into a skeleton (the face and hand points are drawn as dots only).
POSE_BONES = (
    ("left_shoulder", "right_shoulder"), ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"), ("left_shoulder", "left_hip"),
    ("right_shoulder", "right_hip"), ("left_hip", "right_hip"), ("left_hip", "left_knee"),
    ("left_knee", "left_ankle"), ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ("left_ankle", "left_heel"), ("right_ankle", "right_heel"),
)


def hex_colour(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    caption: str = ""
    emoji: str = ""
    tag_x: float = 0.0  # where the caption's baseline starts (merged boxes)
    tag_y: float = 0.0


@dataclass(frozen=True)
class Layer:
    """Shapes drawn together in one colour, shown or hidden together."""

    name: str
    colour: str
    rects: tuple[Rect, ...] = ()
    points: tuple[tuple[float, float], ...] = ()
    lines: tuple[tuple[float, float, float, float], ...] = ()

    @property
    def count(self) -> int:
        return len(self.rects)


@dataclass(frozen=True)
class Overlay:
    width: int
    height: int
    font: float  # caption size in image pixels: readable whatever the picture's size (caption_font)
    merged: Layer
    dot: float = 2.0  # a face landmark's or a pose joint's radius, in image pixels (dot_radius)
    detectors: tuple[Layer, ...] = ()
    faces: Layer = field(default_factory=lambda: Layer("faces", FACE_COLOUR))
    poses: Layer = field(default_factory=lambda: Layer("poses", POSE_COLOUR))


def _rect(bbox: Any, caption: str = "", emoji: str = "") -> Rect | None:
    if isinstance(bbox, Mapping):
        values = [bbox.get(key) for key in ("x", "y", "width", "height")]
    elif isinstance(bbox, list | tuple) and len(bbox) == 4:
        values = list(bbox)
    else:
        return None
    numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != 4 or numbers[2] <= 0 or numbers[3] <= 0:
        return None
    x, y, width, height = numbers
    return Rect(x, y, width, height, caption, emoji)


def latest_successes(ml_results: Mapping[str, Sequence[Mapping[str, Any]]], services: Iterable[str]
                     ) -> list[dict[str, Any]]:
    """The latest successful answer of each of `services` from a record's ml_results (latest first per service),
    as {result_id, service, data} rows."""
    found = []
    for service in sorted(services):
        for answer in ml_results.get(service, ()):
            if answer.get("status") == "success":
                found.append({"result_id": answer["result_id"], "service": service, "data": answer["data"]})
                break
    return found


def build_overlay(record: Mapping[str, Any], size: tuple[int, int], detectors: Iterable[str]) -> Overlay:
    """The shapes of an image's record (windmill.record.image_record) on a picture of `size` (width, height)."""
    merged = tuple(rect for box in record.get("merged_boxes", ())
                   if (rect := _rect(box["merged_data"].get("merged_bbox"), box_caption(box["merged_data"]),
                                     str(box["merged_data"].get("emoji") or ""))))
    raw = raw_detector_boxes(latest_successes(record.get("ml_results", {}), detectors), size)
    layers = tuple(
        Layer(service, hex_colour(colour), tuple(rect for box in raw[service]
                                                 if (rect := _rect(box["bbox"], box["label"]))))
        for service, colour in detector_colours(raw).items())
    face_rects: list[Rect] = []
    face_points: list[tuple[float, float]] = []
    pose_points: list[tuple[float, float]] = []
    pose_lines: list[tuple[float, float, float, float]] = []
    for services in record.get("postprocessing_results", {}).values():
        if not isinstance(services, Mapping):
            continue
        for prediction in _predictions(services.get("face")):
            if rect := _rect(prediction.get("bbox"), "face"):
                face_rects.append(rect)
            face_points.extend(_keypoints(prediction.get("keypoints")))
        for prediction in _predictions(services.get("pose")):
            joints = _pose_joints(prediction.get("landmarks"), size)
            pose_points.extend(joints.values())
            pose_lines.extend((*joints[a], *joints[b]) for a, b in POSE_BONES if a in joints and b in joints)
    font = caption_font(size)
    merged = place_tags(merged, size, font)
    return Overlay(
        width=size[0], height=size[1], font=font, dot=dot_radius(size),
        merged=Layer("merged", hex_colour(MERGED_COLOUR), merged),
        detectors=layers,
        faces=Layer("faces", FACE_COLOUR, tuple(face_rects), tuple(face_points)),
        poses=Layer("poses", POSE_COLOUR, (), tuple(pose_points), tuple(pose_lines)))


# An answer is stored as it came, so any part of it may have any shape: what cannot be drawn is skipped, and the
# page shows the rest (a face's keypoints as a list once made the page answer 500).


def _predictions(row: Any) -> list[Mapping[str, Any]]:
    if not isinstance(row, Mapping) or row.get("status") != "success" or not isinstance(row.get("data"), Mapping):
        return []
    predictions = row["data"].get("predictions")
    return [p for p in predictions if isinstance(p, Mapping)] if isinstance(predictions, list | tuple) else []


def _keypoints(keypoints: Any) -> list[tuple[float, float]]:
    """A face's landmarks in pixels: {name: [x, y]} as the contract gives them, or a list of [x, y] or {x, y}."""
    marks = keypoints.values() if isinstance(keypoints, Mapping) else keypoints
    if not isinstance(marks, Iterable) or isinstance(marks, str | bytes):
        return []
    points = []
    for mark in marks:
        if isinstance(mark, Mapping):
            mark = [mark.get("x"), mark.get("y")]
        if _is_xy(mark):
            points.append((float(mark[0]), float(mark[1])))
    return points


def _is_xy(point: Any) -> bool:
    return isinstance(point, list | tuple) and len(point) == 2 and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in point)


def _pose_joints(landmarks: Any, size: tuple[int, int]) -> dict[str, tuple[float, float]]:
    """Visible landmarks in pixels (the stored ones are 0–1 of the whole image)."""
    if not isinstance(landmarks, Mapping):
        return {}
    joints = {}
    for name, mark in landmarks.items():
        if not isinstance(mark, Mapping) or not _is_xy([mark.get("x"), mark.get("y")]):
            continue
        visibility = mark.get("visibility")
        if isinstance(visibility, int | float) and visibility < VISIBLE:
            continue
        joints[str(name)] = (float(mark["x"]) * size[0], float(mark["y"]) * size[1])
    return joints


# The picture is drawn in image pixels and shown about this wide (the viewer fills the page's width): sizes meant
# for the eye are set for it, so a 128-pixel image drawn eight times its size does not get captions eight times as
# tall, and a 6,000-pixel one does not get dots too small to see.
SHOWN_PX = 1000


def caption_font(size: tuple[int, int]) -> float:
    """A caption's size in image pixels: a 32nd of the image's shorter side, held to 12–24 pixels on the screen."""
    scale = max(size) / SHOWN_PX  # image pixels per screen pixel
    return round(min(max(min(size) / 32, 12 * scale), 24 * scale), 2)


def dot_radius(size: tuple[int, int]) -> float:
    """A landmark's radius in image pixels: a 200th of the shorter side, at least 2 pixels on the screen."""
    return round(max(min(size) / 200, 2 * max(size) / SHOWN_PX), 2)


def place_tags(rects: Sequence[Rect], size: tuple[int, int], font: float) -> tuple[Rect, ...]:
    """Each box's caption where windmill.label_placement puts it (as `show --png` does), never covering another
    caption; widths are estimated (0.6 em a character, 1.3 em the emoji). A caption with no free place left
    is dropped (its box is still drawn)."""
    line = font * 1.25
    edges = [(math.floor(r.x), math.floor(r.y), math.ceil(r.x + r.width) - 1, math.ceil(r.y + r.height) - 1)
             for r in rects]
    sizes = [(math.ceil(0.6 * font * (len(r.caption) + 1) + (1.3 * font if r.emoji else 0)), math.ceil(line))
             for r in rects]
    spots = place_labels(edges, sizes, size)
    return tuple(replace(rect, caption="", emoji="") if spot is None else
                 replace(rect, tag_x=spot[0] + 2, tag_y=spot[1] + font)
                 for rect, spot in zip(rects, spots, strict=True))
