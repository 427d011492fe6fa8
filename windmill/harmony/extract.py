"""Detector answers → validated detections: every malformed box is skipped here, never raised later."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple, cast

_LABEL_SEPARATORS = re.compile(r"[\s_\-]+")


@dataclass(frozen=True, slots=True)
class DetectorResult:
    """The latest success row of one detector service for one image; `data` is the JSON answer as stored."""

    result_id: int
    service: str
    data: object


class Detection(NamedTuple):
    """One usable box: edges x1 < x2, y1 < y2 in pixels, confidence in [0, 1].

    A named tuple rather than a dataclass: an image has hundreds, and building and sorting them is
    most of the time harmonization takes. Comparison is by content, which the canonical order uses.
    """

    service: str
    result_id: int
    label: str
    emoji: str
    confidence: float
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def bbox(self) -> dict[str, int | float]:
        """The box in the contract's shape; integer pixels stay integers."""
        return {
            "x": _pixel(self.x1),
            "y": _pixel(self.y1),
            "width": _pixel(self.x2 - self.x1),
            "height": _pixel(self.y2 - self.y1),
        }


def label_key(label: str) -> str:
    """Grouping key of a label: "Dining table", "dining_table" and "dining-table" are one class."""
    return _LABEL_SEPARATORS.sub("_", label.strip().lower()).strip("_")


def extract_detections(
    results: Iterable[DetectorResult], image_size: tuple[int, int] | None = None
) -> tuple[list[Detection], list[int]]:
    """All boxed predictions of the results, and the result ids read.

    Every result's id is returned, usable or not, as the reference records every row it read (§7.3):
    the row set, not the box set, is what a merge was computed from. `full_image` entries carry no
    box and are left to voting. With `image_size` (width, height) boxes are clamped to the image, and
    a box left with no area is dropped.
    """
    detections: list[Detection] = []
    result_ids: set[int] = set()
    bounds = _image_bounds(image_size)
    for result in results:
        # An id that is not an integer is a caller's bug; its boxes still count, under id -1.
        result_id = result.result_id if type(result.result_id) is int else -1
        if result_id != -1:
            result_ids.add(result_id)
        data = result.data
        if not isinstance(data, dict):
            continue
        predictions = data.get("predictions")
        if not isinstance(predictions, list):
            continue
        service = str(result.service)
        for prediction in predictions:
            detection = _detection(prediction, service, result_id, bounds)
            if detection is not None:
                detections.append(detection)
    return detections, sorted(result_ids)


def _detection(
    prediction: object, service: str, result_id: int, bounds: tuple[float, float] | None
) -> Detection | None:
    if not isinstance(prediction, dict):
        return None
    edges = _edges(prediction.get("bbox"))
    if edges is None:
        return None
    x1, y1, x2, y2 = edges
    if bounds is not None:
        x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, bounds[0]), min(y2, bounds[1])
        if not (x2 > x1 and y2 > y1):
            return None
    confidence = prediction.get("confidence")
    if type(confidence) is not float or not 0.0 <= confidence <= 1.0:
        confidence = _number(confidence)
        confidence = 0.0 if confidence is None else min(max(confidence, 0.0), 1.0)
    label = prediction.get("label")
    emoji = prediction.get("emoji")
    return Detection(
        service,
        result_id,
        label if type(label) is str else "",
        emoji if type(emoji) is str else "",
        confidence,
        x1,
        y1,
        x2,
        y2,
    )


def _edges(bbox: object) -> tuple[float, float, float, float] | None:
    """(x1, y1, x2, y2) from {x,y,width,height} or [x,y,w,h]; None unless all four are finite and w, h > 0."""
    if isinstance(bbox, dict):
        x, y, w, h = bbox.get("x"), bbox.get("y"), bbox.get("width"), bbox.get("height")
        # The contract's case, integer pixels, without a call per value.
        if type(x) is int and type(y) is int and type(w) is int and type(h) is int:
            if w <= 0 or h <= 0:
                return None
            try:
                return float(x), float(y), float(x + w), float(y + h)
            except OverflowError:
                return None
        values = [x, y, w, h]
    elif isinstance(bbox, list | tuple) and len(bbox) == 4:
        values = list(bbox)
    else:
        return None
    numbers = [number for number in map(_number, values) if number is not None]
    if len(numbers) != 4:
        return None
    x, y, w, h = numbers
    if w <= 0 or h <= 0:
        return None
    return x, y, x + w, y + h


def _number(value: object) -> float | None:
    """A finite float from an int, float or numeric string; booleans and everything else are not numbers."""
    kind = type(value)
    if kind is int:  # the contract's case first: integer pixels
        try:
            return float(cast(int, value))
        except OverflowError:
            return None
    if kind is float:
        number = cast(float, value)
        return number if math.isfinite(number) else None
    if kind is bool:
        return None
    if isinstance(value, int | float | str):
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (ValueError, OverflowError):
            return None
        return number if math.isfinite(number) else None
    return None


def _image_bounds(image_size: tuple[int, int] | None) -> tuple[float, float] | None:
    """(width, height) to clamp to; a wrong size is the caller's bug, so it raises rather than skips."""
    if image_size is None:
        return None
    sides = [side for side in map(_number, image_size) if side is not None and side > 0]
    if len(sides) != 2 or len(image_size) != 2:
        raise ValueError(f"image_size must be two positive numbers (width, height), got {image_size!r}")
    return sides[0], sides[1]


def _pixel(value: float) -> int | float:
    return int(value) if float(value).is_integer() else round(value, 2)
