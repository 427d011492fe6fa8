"""Raw Animal Farm answers → one canonical shape, or a classified error (pure: no I/O).

What a successful answer becomes (every original field is kept unless named here):

- `service` is the catalog name (yolov8 reports itself as "yolo", the two-stage detectors as
  their env-defined SERVICE_NAME); a differing reported name is kept as `reported_service`.
- Every prediction and `full_image` entry has an `emoji` string: a missing or null emoji is "".
  So does every `emoji_mappings` entry.
- `confidence`, where present, is a float in [0, 1]; numeric strings are accepted. A prediction
  (or `full_image` entry, or OCR text region) whose confidence is NaN, infinite, null,
  non-numeric or out of range is **dropped**: it cannot vote or be merged honestly, and keeping
  it with a made-up value would hide the fault.
- `bbox` is `{x, y, width, height}` (ints when whole): the face service's `[x, y, w, h]` list is
  converted. Boxes are clamped to x, y ≥ 0 and, when the size of the image the service saw is
  known, to the image; a box with no area left, or not readable as four numbers, drops its
  prediction. A `bbox: null` is removed.
- No non-finite number (NaN, ±Infinity, which Python's json accepts) and no NUL character is
  left anywhere: the answer must be storable as PostgreSQL jsonb.
- `metadata` is an object (empty when missing).
- Each change is described in `normalization_notes` (present only when something changed).

An answer without a `predictions` list, or that is not a JSON object, is `malformed`; an answer
with `status: "error"` is `rejected`, its message taken from `error.message` (V3 envelope) or
`error` (the legacy Flask string).
"""

from __future__ import annotations

import html
import json
import math
import re
from typing import Any

import orjson

from windmill.farm.errors import ServiceCallError
from windmill.farm.storable import NotWritable, check_writable, fit_as_read_by_orjson, storable
from windmill.images.errors import one_line

MAX_NOTES = 20
# The most predictions an answer keeps (the most confident): real detectors answer with at most a few hundred boxes
# (YOLOv8 300, Detectron2 100), and harmonization compares every pair of one class's boxes: one answer of 60,000 boxes
# took a worker's memory to 23 GB.
MAX_PREDICTIONS = 1000
MAX_EMOJI_CHARS = 32  # the longest emoji sequences (families, flags with tags) have about a dozen code points
# A label (a class name) is a word or a short phrase: one of thousands of characters, without an emoji, became a box's
# class and overflowed the merge's index row on every attempt (windmill/roles/merger.py crop_key).
MAX_LABEL_CHARS = 200
# The services whose answer is always exactly one prediction (spec §2.3): captioning, colors, OCR, NSFW, metadata.
ONE_PREDICTION_SERVICES = frozenset({"blip", "ollama", "colors", "ocr", "nsfw2", "metadata"})
DESCRIBE_CHARS = 200
_SNIPPET_BYTES = 64 * 1024
_CONFIDENCE_SLACK = 1e-6
_BOX_KEYS = ("x", "y", "width", "height")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HEADING = re.compile(r"<h1[^>]*>(.*?)</h1>", re.IGNORECASE | re.DOTALL)
_PARAGRAPH = re.compile(r"<p[^>]*>(.*?)</p>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]+>")
_LONG_DIGITS = re.compile(rb"[0-9]{20}")


def normalize_answer(
    service: str, payload: Any, *, image_size: tuple[int, int] | None = None, status_code: int | None = 200,
    clamp: bool = True, fit_as_read: bool = False,
) -> dict[str, Any]:
    """A 2xx `/analyze` answer in canonical form; `image_size` is what the service received (w, h). Boxes are cut
    to it (and to x, y ≥ 0) unless `clamp` is false: a crop's boxes, cut once moved into the whole image.
    `fit_as_read`: parse_answer_json said the payload holds nothing jsonb refuses, so it is not walked for it."""
    body = _success_body(service, payload, status_code)
    notes: list[str] = []
    predictions = body.get("predictions")
    if not isinstance(predictions, list):
        found = "none" if predictions is None else f"a {_json_type(predictions)}"
        raise ServiceCallError(
            f"malformed answer: no predictions list (found {found})",
            kind="malformed",
            service=service,
            status_code=status_code,
        )
    if not predictions and service in ONE_PREDICTION_SERVICES:
        raise ServiceCallError("malformed answer: no prediction, where this service always answers one (spec §2.3)",
                               kind="malformed", service=service, status_code=status_code)
    body["predictions"] = _most_confident(_clean_items(predictions, "prediction", notes, image_size, clamp), notes)
    if not body["predictions"] and service in ONE_PREDICTION_SERVICES:
        # Stored as a success with no prediction, it read as "nothing found" (no NSFW, no text, no caption).
        raise ServiceCallError(f"malformed answer: its one prediction is unusable ({notes[-1]})", kind="malformed",
                               service=service, status_code=status_code)
    if "full_image" in body:
        if isinstance(body["full_image"], list):
            body["full_image"] = _clean_items(body["full_image"], "full_image entry", notes, image_size, clamp)
        else:
            notes.append(f"full_image removed: a {_json_type(body['full_image'])}, not a list")
            del body["full_image"]
    return _finish(service, body, notes, status_code, fit_as_read)


def normalize_score_answer(service: str, payload: Any, *, status_code: int | None = 200,
                           fit_as_read: bool = False) -> dict[str, Any]:
    """A 2xx caption-score answer: `similarity_score` must be a finite number in [-1, 1] (cosine). `fit_as_read`:
    as normalize_answer's."""
    body = _success_body(service, payload, status_code)
    score, problem = _number(body.get("similarity_score"))
    if problem is None and not -1.0 - _CONFIDENCE_SLACK <= score <= 1.0 + _CONFIDENCE_SLACK:
        problem = f"{score:g} is outside -1…1"
    if problem is not None:
        raise ServiceCallError(
            f"malformed answer: similarity_score {problem}",
            kind="malformed",
            service=service,
            status_code=status_code,
        )
    body["similarity_score"] = max(-1.0, min(1.0, score))
    return _finish(service, body, [], status_code, fit_as_read)


def error_message(payload: Any) -> str | None:
    """The error text of either envelope: V3 `{"error": {"message"}}` or legacy `{"error": "..."}`."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message.strip():
            return one_line(message, DESCRIBE_CHARS)
        if error:
            return one_line(json.dumps(error, ensure_ascii=False, default=str), DESCRIBE_CHARS)
    if isinstance(error, str) and error.strip():
        return one_line(error, DESCRIBE_CHARS)
    for key in ("message", "detail", "reason"):
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return one_line(value, DESCRIBE_CHARS)
    return None


def parse_json(body: bytes) -> Any:
    """Decode a JSON body; ValueError (with a short reason) when it is not JSON."""
    return parse_answer_json(body)[0]


def parse_answer_json(body: bytes) -> tuple[Any, bool]:
    """parse_json, and whether what it read is fit for jsonb as it is (storable.fit_as_read_by_orjson). orjson
    reads a well-formed answer for a tenth of json's CPU; what it refuses (NaN literals, a byte order mark, integers
    beyond 64 bits, bad input) goes to json, which reads the first three as before and says what is wrong with the
    rest. A run of 20 digits goes to json too: orjson reads an integer beyond 64 bits as an inexact float."""
    if not _LONG_DIGITS.search(body):
        try:
            return orjson.loads(body), fit_as_read_by_orjson(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body.decode("utf-8-sig")), False  # Flask sends UTF-8; no guessing of UTF-16/32
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8 text") from None
    except json.JSONDecodeError as problem:
        raise ValueError(f"not JSON ({problem.msg} at line {problem.lineno} column {problem.colno})") from None


def describe_body(body: bytes, content_type: str | None = None) -> str:
    """A one-line account of a non-success body: its error message, an HTML page's title, or a snippet."""
    text = body[:_SNIPPET_BYTES].decode("utf-8", errors="replace").strip()
    if not text:
        return "empty body"
    kind = (content_type or "").lower()
    if "json" in kind or text[:1] in "{[":
        try:
            message = error_message(json.loads(text))
        except (ValueError, RecursionError):
            message = None
        if message:
            return message
    lowered = text[:200].lower()
    if "html" in kind or lowered.startswith(("<!doctype html", "<html", "<head", "<title", "<body")):
        return f"HTML page: {_html_summary(text)}"
    return one_line(text, DESCRIBE_CHARS)


def health_detail(body: bytes, content_type: str | None = None) -> str:
    """A short account of a `/health` answer, e.g. "healthy", "unhealthy: model not loaded"."""
    try:
        payload = json.loads(body[:_SNIPPET_BYTES]) if body.strip() else None
    except (ValueError, RecursionError):
        payload = None
    if isinstance(payload, dict):
        status = payload.get("status")
        reason = payload.get("reason") if isinstance(payload.get("reason"), str) else None
        if isinstance(status, str) and status != "error":
            detail = f"{status}: {reason}" if reason else status
            return one_line(detail, DESCRIBE_CHARS)
    return describe_body(body, content_type)


def canonical_bbox(value: Any) -> tuple[dict[str, int | float] | None, str | None]:
    """`{x,y,width,height}` or `[x,y,w,h]` → a canonical box dict, or (None, reason)."""
    if isinstance(value, dict):
        missing = [key for key in _BOX_KEYS if key not in value]
        if missing:
            return None, f"lacks {', '.join(missing)}"
        raw = [value[key] for key in _BOX_KEYS]
    elif isinstance(value, list | tuple):
        if len(value) != 4:
            return None, f"is a list of {len(value)} items, not [x, y, w, h]"
        raw = list(value)
    else:
        return None, f"is a {_json_type(value)}, not a box"
    numbers: list[float] = []
    for key, item in zip(_BOX_KEYS, raw, strict=True):
        number, problem = _number(item)
        if problem is not None:
            return None, f"{key} {problem}"
        numbers.append(number)
    width, height = numbers[2], numbers[3]
    if width <= 0 or height <= 0:
        return None, f"has no area (width {width:g}, height {height:g})"
    if not (math.isfinite(numbers[0] + width) and math.isfinite(numbers[1] + height)):
        return None, "reaches past the largest number (its far edge is infinite)"
    return {key: _tidy(number) for key, number in zip(_BOX_KEYS, numbers, strict=True)}, None


def clamp_bbox(box: dict[str, int | float], image_size: tuple[int, int] | None) -> dict[str, int | float] | None:
    """A canonical box cut to x, y ≥ 0 and, with `image_size`, to the image; None when nothing is left."""
    left, top = float(box["x"]), float(box["y"])
    right, bottom = left + float(box["width"]), top + float(box["height"])
    left, top = max(0.0, left), max(0.0, top)
    if image_size is not None:
        right, bottom = min(float(image_size[0]), right), min(float(image_size[1]), bottom)
    if right <= left or bottom <= top:
        return None
    return {"x": _tidy(left), "y": _tidy(top), "width": _tidy(right - left), "height": _tidy(bottom - top)}


# ---------------------------------------------------------------------------------------------


def _success_body(service: str, payload: Any, status_code: int | None) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise ServiceCallError(
            f"malformed answer: a JSON {_json_type(payload)}, not an object",
            kind="malformed",
            service=service,
            status_code=status_code,
        )
    status = payload.get("status")
    if status == "error" or (status != "success" and "error" in payload):
        raise ServiceCallError(
            f"service answered status 'error': {error_message(payload) or 'no message'}",
            kind="rejected",
            service=service,
            status_code=status_code,
        )
    if status != "success":
        raise ServiceCallError(
            f"malformed answer: status is {_short(status)}, expected 'success'",
            kind="malformed",
            service=service,
            status_code=status_code,
        )
    return dict(payload)


def _finish(service: str, body: dict[str, Any], notes: list[str], status_code: int | None,
            fit_as_read: bool) -> dict[str, Any]:
    reported = body.get("service")
    body["service"] = service
    if reported is not None and reported != service:
        body["reported_service"] = reported
    if not isinstance(body.get("metadata"), dict):
        if "metadata" in body:
            notes.append(f"metadata replaced: a {_json_type(body['metadata'])}, not an object")
        body["metadata"] = {}
    try:
        clean = body if fit_as_read else storable(body, "answer", notes)
        check_writable(clean)
    except RecursionError:
        raise ServiceCallError(
            "malformed answer: JSON nested too deeply", kind="malformed", service=service, status_code=status_code
        ) from None
    except NotWritable as problem:
        raise ServiceCallError(f"malformed answer: {problem}", kind="malformed", service=service,
                               status_code=status_code) from None
    if notes:
        kept = notes[:MAX_NOTES]
        if len(notes) > MAX_NOTES:
            kept.append(f"… and {len(notes) - MAX_NOTES} more")
        clean["normalization_notes"] = kept
    return clean


def _most_confident(items: list[dict[str, Any]], notes: list[str]) -> list[dict[str, Any]]:
    """At most MAX_PREDICTIONS of an answer's predictions, the most confident, in the order they came."""
    if len(items) <= MAX_PREDICTIONS:
        return items
    ranked = sorted(range(len(items)), key=lambda index: -float(items[index].get("confidence") or 0.0))
    kept = sorted(ranked[:MAX_PREDICTIONS])
    notes.append(f"{len(items) - MAX_PREDICTIONS} of {len(items)} predictions dropped: over {MAX_PREDICTIONS}, the "
                 f"least confident")
    return [items[index] for index in kept]


def _clean_items(
    items: list[Any], label: str, notes: list[str], image_size: tuple[int, int] | None, clamp: bool
) -> list[dict[str, Any]]:
    kept = []
    for index, item in enumerate(items):
        cleaned = _clean_item(item, f"{label} {index}", notes, image_size, with_emoji=True, clamp=clamp)
        if cleaned is not None:
            kept.append(cleaned)
    return kept


def _clean_item(
    item: Any, where: str, notes: list[str], image_size: tuple[int, int] | None, *, with_emoji: bool, clamp: bool
) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        notes.append(f"{where} dropped: a {_json_type(item)}, not an object")
        return None
    out = dict(item)
    if "confidence" in out:
        confidence, problem = _confidence(out["confidence"])
        if problem is not None:
            notes.append(f"{where} dropped: confidence {problem}")
            return None
        if isinstance(out["confidence"], str):
            notes.append(f"{where}: confidence {_short(out['confidence'])} read as {confidence:g}")
        out["confidence"] = confidence
    if with_emoji:
        emoji = out.get("emoji")
        if emoji is None:
            out["emoji"] = ""
        elif not isinstance(emoji, str):
            notes.append(f"{where}: emoji {_short(emoji)} is not a string, treated as none")
            out["emoji"] = ""
        elif len(emoji) > MAX_EMOJI_CHARS:  # a box's class: one of 6,000 characters overflowed its index row
            notes.append(f"{where}: an emoji of {len(emoji)} characters is no emoji, treated as none")
            out["emoji"] = ""
    label = out.get("label")
    if isinstance(label, str) and len(label) > MAX_LABEL_CHARS:
        notes.append(f"{where}: a label of {len(label)} characters cut to its first {MAX_LABEL_CHARS}")
        out["label"] = label[:MAX_LABEL_CHARS]
    if "bbox" in out:
        if out["bbox"] is None:
            del out["bbox"]
            notes.append(f"{where}: null bbox removed")
        else:
            box, problem = canonical_bbox(out["bbox"])
            if box is None:
                notes.append(f"{where} dropped: bbox {problem}")
                return None
            clamped = clamp_bbox(box, image_size) if clamp else box
            if clamped is None:
                notes.append(f"{where} dropped: bbox {_box_text(box)} lies outside the image")
                return None
            if clamped != box:
                notes.append(f"{where}: bbox {_box_text(box)} clamped to {_box_text(clamped)}")
            out["bbox"] = clamped
    if "emoji_mappings" in out:
        out["emoji_mappings"] = _clean_mappings(out["emoji_mappings"], where, notes)
        if out["emoji_mappings"] is None:
            del out["emoji_mappings"]
    if "text_regions" in out:
        regions = out["text_regions"]
        if isinstance(regions, list):
            cleaned = (
                _clean_item(region, f"{where} text_region {index}", notes, image_size, with_emoji=False, clamp=clamp)
                for index, region in enumerate(regions)
            )
            out["text_regions"] = [region for region in cleaned if region is not None]
        else:
            notes.append(f"{where}: text_regions removed (a {_json_type(regions)}, not a list)")
            del out["text_regions"]
    return out


def _clean_mappings(mappings: Any, where: str, notes: list[str]) -> list[dict[str, Any]] | None:
    if not isinstance(mappings, list):
        notes.append(f"{where}: emoji_mappings removed (a {_json_type(mappings)}, not a list)")
        return None
    kept = []
    for index, mapping in enumerate(mappings):
        if not isinstance(mapping, dict):
            notes.append(f"{where} emoji_mapping {index} dropped: a {_json_type(mapping)}, not an object")
            continue
        entry = dict(mapping)
        if not isinstance(entry.get("emoji"), str):
            entry["emoji"] = ""
        kept.append(entry)
    return kept


def _confidence(value: Any) -> tuple[float, str | None]:
    number, problem = _number(value)
    if problem is not None:
        return 0.0, problem
    if -_CONFIDENCE_SLACK <= number < 0.0:
        return 0.0, None
    if 1.0 < number <= 1.0 + _CONFIDENCE_SLACK:
        return 1.0, None
    if not 0.0 <= number <= 1.0:
        return 0.0, f"{number:g} is outside 0…1"
    return number, None


def _number(value: Any) -> tuple[float, str | None]:
    """A finite float from a JSON number or numeric string, or (0, reason)."""
    if value is None:
        return 0.0, "is null"
    if isinstance(value, bool):
        return 0.0, f"{json.dumps(value)} is not a number"
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer of hundreds of digits
            return 0.0, f"{_short(value)} is too large"
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return 0.0, f"{_short(value)} is not a number"
    else:
        return 0.0, f"is a {_json_type(value)}, not a number"
    if math.isnan(number):
        return 0.0, "is NaN"
    if math.isinf(number):
        return 0.0, "is infinite"
    return number, None


def _html_summary(text: str) -> str:
    parts = []
    for pattern in (_TITLE, _HEADING, _PARAGRAPH):
        match = pattern.search(text)
        if match:
            part = " ".join(html.unescape(_TAG.sub(" ", match.group(1))).split())
            if part and part not in parts:
                parts.append(part)
    summary = " — ".join(parts) if parts else html.unescape(_TAG.sub(" ", text))
    return one_line(summary, DESCRIBE_CHARS)


def _tidy(number: float) -> int | float:
    return int(number) if float(number).is_integer() else number


def _box_text(box: dict[str, int | float]) -> str:
    return "[" + ", ".join(f"{box[key]:g}" for key in _BOX_KEYS) + "]"


def _short(value: Any) -> str:
    return one_line(json.dumps(value, ensure_ascii=False, default=str), 40)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
