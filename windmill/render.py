"""Drawing an image's boxes for people to look at: merged boxes labelled with class and agreement, and
optionally every detector's raw boxes in its own colour, with a legend. Labels never cover one another
(windmill.label_placement) and each tag takes, of a light and a dark colour, the one that stands out more from
the picture under it.

`render_boxes` is pure (a Pillow image and plain data in, a new image out); `render_image` is the I/O
glue that reads the boxes from PostgreSQL and the pixels from the image's path or URL.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from PIL import Image, ImageDraw, ImageFont, ImageStat
from psycopg.rows import dict_row

from windmill.box_names import box_label
from windmill.db.queries import query
from windmill.errors import NoSuchImage, WindmillError
from windmill.harmony import DetectorResult
from windmill.harmony.extract import extract_detections
from windmill.images import load_image_bytes, prepare_image
from windmill.images.budget import DecodeBudget
from windmill.label_placement import Rect, place_labels
from windmill.settings import Settings

Colour = tuple[int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

MERGED_COLOUR: Colour = (255, 214, 0)
OUTLINE_SHADOW: Colour = (0, 0, 0)
LEGEND_BACKGROUND: Colour = (24, 24, 24)
# The two tags: yellow with black ink stands out on dark pictures, near-black with yellow ink on light ones.
# Whichever the background, one of them differs from it by a contrast ratio of at least 3.5 (WCAG asks 3 of
# graphics), and ink and tag differ by more than 10.
LIGHT_TAG: tuple[Colour, Colour] = (MERGED_COLOUR, (0, 0, 0))
DARK_TAG: tuple[Colour, Colour] = (LEGEND_BACKGROUND, MERGED_COLOUR)
# Far from the merged yellow and from one another; cycled when there are more detectors.
DETECTOR_COLOURS: tuple[Colour, ...] = (
    (230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (250, 190, 212), (0, 128, 128), (170, 110, 40),
)
FONT_DIRECTORIES = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path.home() / ".fonts")
EMOJI_FONT_FILES = ("NotoColorEmoji.ttf", "NotoColorEmoji-Regular.ttf")
TEXT_FONT_FILES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "NotoSans-Regular.ttf", "FreeSans.ttf")
# Noto Color Emoji holds bitmap strikes of this size only: drawn at it, then scaled to the label.
EMOJI_STRIKE_SIZE = 109


@dataclass(frozen=True)
class FontChoice:
    """Font files to draw with; None: Pillow's built-in font for text, no emoji (text labels only)."""

    text: Path | None = None
    emoji: Path | None = None


@dataclass
class _Style:
    """Sizes derived from the image, so a label is readable on a thumbnail and on a 4K photo alike."""

    size: tuple[int, int]
    fonts: FontChoice
    font_px: int = field(init=False)
    line: int = field(init=False)
    pad: int = field(init=False)
    font: Font = field(init=False)
    _emoji: dict[str, Image.Image | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        short_side = min(self.size)
        self.font_px = max(12, round(short_side / 30))
        self.line = max(2, round(short_side / 170))
        self.pad = max(2, self.font_px // 5)
        self.font = _text_font(self.fonts.text, self.font_px)

    def emoji(self, emoji: str) -> Image.Image | None:
        if emoji not in self._emoji:
            self._emoji[emoji] = _emoji_image(self.fonts.emoji, emoji, self.font_px)
        return self._emoji[emoji]


def render_boxes(
    image: Image.Image,
    boxes: Sequence[Mapping[str, Any]],
    detector_boxes: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    *,
    fonts: FontChoice | None = None,
) -> Image.Image:
    """A copy of `image` with the merged boxes (merged_data dicts) drawn and labelled "🧑 person ×3".

    `detector_boxes` maps a service to its raw predictions ({bbox, label, confidence}); given, each
    service's boxes are drawn thin in its own colour under the merged ones, with a legend. Emoji are
    drawn only with a colour emoji font (`fonts`, found under the system font directories when None).
    """
    picture = image.convert("RGB")  # always a copy: the caller's image stays untouched
    canvas = picture.copy()  # drawn on; `picture` stays clean, for the colours under each tag
    style = _Style(canvas.size, fonts if fonts is not None else system_fonts())
    draw = ImageDraw.Draw(canvas)
    colours = detector_colours(detector_boxes or {})
    for service, colour in colours.items():
        for prediction in (detector_boxes or {})[service]:
            edges = _edges(prediction.get("bbox"), canvas.size)
            if edges:
                draw.rectangle(edges, outline=colour, width=max(1, style.line // 2))
    placed = [(edges, box) for box in boxes if (edges := _edges(box.get("merged_bbox"), canvas.size))]
    for edges, _box in placed:
        _outline(draw, edges, MERGED_COLOUR, style.line)
    legend = None
    if detector_boxes is not None:
        legend = _legend(canvas, draw, [("merged", MERGED_COLOUR, len(placed))]
                         + [(service, colour, len(detector_boxes[service])) for service, colour in colours.items()],
                         style)
    tags, spots = _labels(draw, placed, style, [legend] if legend else [])
    for tag, spot in zip(tags, spots, strict=True):
        if spot is not None:
            _draw_tag(canvas, draw, tag, spot, tag_colours(_mean_colour(picture, spot)), style)
    return canvas


def label_rectangles(image_size: tuple[int, int], boxes: Sequence[Mapping[str, Any]], *,
                     fonts: FontChoice | None = None) -> list[Rect | None]:
    """Where render_boxes puts the label of each drawable box (in order; None: no free place), without drawing:
    the same fonts, sizes and placement (without a legend: no detector boxes)."""
    style = _Style(image_size, fonts if fonts is not None else system_fonts())
    placed = [(edges, box) for box in boxes if (edges := _edges(box.get("merged_bbox"), image_size))]
    return _labels(ImageDraw.Draw(Image.new("RGB", (1, 1))), placed, style, [])[1]


def _labels(draw: ImageDraw.ImageDraw, placed: Sequence[tuple[tuple[int, int, int, int], Mapping[str, Any]]],
            style: _Style, taken: Sequence[Rect]) -> tuple[list[_Tag], list[Rect | None]]:
    """Each box's measured label and where it goes: next to its box, clear of the other labels and `taken`."""
    tags = [_tag(draw, box, style) for _edges, box in placed]
    return tags, place_labels([edges for edges, _box in placed], [tag.size for tag in tags], style.size, taken)


def tag_colours(background: Colour) -> tuple[Colour, Colour]:
    """(fill, ink) of a tag over a background of this colour: the tag that contrasts more with it."""
    return max((LIGHT_TAG, DARK_TAG), key=lambda tag: contrast_ratio(tag[0], background))


def contrast_ratio(a: Colour, b: Colour) -> float:
    """WCAG 2 contrast ratio of two sRGB colours, from 1 (the same) to 21 (black on white)."""
    light, dark = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def _luminance(colour: Colour) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (v / 255 for v in colour)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def detector_colours(detector_boxes: Mapping[str, object]) -> dict[str, Colour]:
    """One colour per service, in service name order: the same set of detectors is coloured alike on every image."""
    return {service: DETECTOR_COLOURS[i % len(DETECTOR_COLOURS)] for i, service in enumerate(sorted(detector_boxes))}


CAPTION_LABEL_CHARS = 60  # a tag's label at most: a service's label of a million characters broke Pillow's text


def box_caption(box: Mapping[str, Any], *, times: str = "×") -> str:
    """The tag text, e.g. "person ×3": the label most detections gave (cut to CAPTION_LABEL_CHARS), and how many
    detectors agree."""
    count = box.get("detection_count") or len(box.get("detections") or []) or 1
    label = box_label(box)
    if len(label) > CAPTION_LABEL_CHARS:
        label = label[:CAPTION_LABEL_CHARS - 1] + "…"
    return f"{label} {times}{count}"


# ------------------------------------------------------------------------------------------------
# Drawing parts


def _edges(bbox: object, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Inclusive pixel edges (x1, y1, x2, y2) of a {x, y, width, height} or [x, y, w, h] box, inside the
    image; None for a box that is unreadable or falls outside."""
    if isinstance(bbox, Mapping):
        values: Iterable[object] = (bbox.get("x"), bbox.get("y"), bbox.get("width"), bbox.get("height"))
    elif isinstance(bbox, list | tuple) and len(bbox) == 4:
        values = bbox
    else:
        return None
    try:
        x, y, width, height = (float(v) for v in values)  # type: ignore[arg-type]  # what float() refuses is caught
    except (TypeError, ValueError):
        return None
    x1, y1 = max(0, round(x)), max(0, round(y))
    x2, y2 = min(size[0] - 1, round(x + width) - 1), min(size[1] - 1, round(y + height) - 1)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _outline(draw: ImageDraw.ImageDraw, edges: tuple[int, int, int, int], colour: Colour, width: int) -> None:
    """A coloured frame on a dark one: visible on bright and dark backgrounds alike."""
    x1, y1, x2, y2 = edges
    draw.rectangle((x1 - 1, y1 - 1, x2 + 1, y2 + 1), outline=OUTLINE_SHADOW, width=width + 2)
    draw.rectangle(edges, outline=colour, width=width)


@dataclass(frozen=True)
class _Tag:
    """A box's label, measured: its caption, the emoji (when a colour emoji font draws it) and its size."""

    text: str
    emoji: Image.Image | None
    size: tuple[int, int]
    ink_offset: tuple[int, int]  # the text's own bearing, taken off where it is drawn


def _tag(draw: ImageDraw.ImageDraw, box: Mapping[str, Any], style: _Style) -> _Tag:
    # Pillow's built-in font has no "×": an "x" reads the same.
    text = box_caption(box, times="×" if style.fonts.text is not None else "x")
    emoji = style.emoji(str(box.get("emoji") or "")) if box.get("emoji") else None
    pad = style.pad
    # Whole pixels: the fonts drawn here measure in them (Pillow's signature allows fractions).
    left, top, right, bottom = (int(edge) for edge in draw.textbbox((0, 0), text, font=style.font))
    icon = emoji.width + pad if emoji is not None else 0
    size = (icon + right - left + 2 * pad, max(bottom - top, emoji.height if emoji else 0) + 2 * pad)
    return _Tag(text, emoji, size, (left, top))


def _draw_tag(canvas: Image.Image, draw: ImageDraw.ImageDraw, tag: _Tag, spot: Rect,
              colours: tuple[Colour, Colour], style: _Style) -> None:
    """The caption on its tag at the spot chosen for it, the emoji first."""
    fill, ink = colours
    x, y, right, bottom = spot
    draw.rectangle((x, y, right - 1, bottom - 1), fill=fill)
    pad = style.pad
    icon = 0
    if tag.emoji is not None:
        canvas.paste(tag.emoji, (x + pad, y + (tag.size[1] - tag.emoji.height) // 2), tag.emoji)
        icon = tag.emoji.width + pad
    draw.text((x + pad + icon - tag.ink_offset[0], y + pad - tag.ink_offset[1]), tag.text, fill=ink, font=style.font)


def _mean_colour(picture: Image.Image, spot: Rect) -> Colour:
    """The mean colour of the picture under a tag and a margin around it: what the tag must stand out from."""
    margin = 2
    area = picture.crop((max(spot[0] - margin, 0), max(spot[1] - margin, 0),
                         min(spot[2] + margin, picture.width), min(spot[3] + margin, picture.height)))
    red, green, blue = (round(channel) for channel in ImageStat.Stat(area).mean[:3])
    return red, green, blue


def _legend(canvas: Image.Image, draw: ImageDraw.ImageDraw, entries: list[tuple[str, Colour, int]],
            style: _Style) -> Rect:
    """Which colour is which source, with its box count, in the bottom-left corner; returns where it is."""
    pad = max(2, style.font_px // 4)
    lines = [f"{name} ({count})" for name, _colour, count in entries]
    boxes = [tuple(int(edge) for edge in draw.textbbox((0, 0), line, font=style.font)) for line in lines]
    row = max(b[3] - b[1] for b in boxes) + pad
    swatch = row - pad
    width = swatch + 3 * pad + max(b[2] - b[0] for b in boxes)
    height = row * len(entries) + pad
    x0, y0 = 0, max(0, canvas.height - height)
    draw.rectangle((x0, y0, x0 + width, y0 + height), fill=LEGEND_BACKGROUND)
    for index, ((_name, colour, _count), line, bbox) in enumerate(zip(entries, lines, boxes, strict=True)):
        y = y0 + pad + index * row
        draw.rectangle((x0 + pad, y, x0 + pad + swatch, y + swatch), fill=colour)
        draw.text((x0 + 2 * pad + swatch - bbox[0], y - bbox[1]), line, fill=(240, 240, 240), font=style.font)
    return (x0, y0, x0 + width + 1, y0 + height + 1)


# ------------------------------------------------------------------------------------------------
# Fonts


@cache
def system_fonts() -> FontChoice:
    """A text font and a colour emoji font from the usual font directories, when installed."""
    return FontChoice(text=_find_font(TEXT_FONT_FILES), emoji=_find_font(EMOJI_FONT_FILES))


def _find_font(names: Sequence[str]) -> Path | None:
    for name in names:
        for directory in FONT_DIRECTORIES:
            if directory.is_dir():
                for root, _dirs, files in os.walk(directory):
                    if name in files:
                        return Path(root) / name
    return None


def _text_font(path: Path | None, size: int) -> Font:
    if path is not None:
        try:
            return ImageFont.truetype(str(path), size)
        except OSError:
            pass  # unreadable or not a font: the built-in one still draws
    return ImageFont.load_default(size=size)


def _emoji_image(path: Path | None, emoji: str, size: int) -> Image.Image | None:
    """The emoji in colour, `size` pixels high, or None when no colour emoji font can draw it."""
    if path is None or not emoji:
        return None
    try:
        font = ImageFont.truetype(str(path), EMOJI_STRIKE_SIZE)
        strike = Image.new("RGBA", (EMOJI_STRIKE_SIZE * 2 * len(emoji), EMOJI_STRIKE_SIZE * 2), (0, 0, 0, 0))
        ImageDraw.Draw(strike).text((0, 0), emoji, font=font, embedded_color=True)
    except (OSError, ValueError):
        return None  # FreeType without colour bitmap support, or a font that is not one
    inked = strike.getbbox()
    if inked is None:
        return None
    glyph = strike.crop(inked)
    return glyph.resize((max(1, round(glyph.width * size / glyph.height)), size), Image.Resampling.LANCZOS)


# ------------------------------------------------------------------------------------------------
# I/O glue


def render_image(conn: psycopg.Connection, settings: Settings, image_id: int, *, detectors: bool) -> Image.Image:
    """The image (upright, as the services saw it) with its stored merged boxes, and with `detectors`
    the raw boxes of each detector's latest successful answer."""
    with conn.cursor(row_factory=dict_row) as cursor:
        image = cursor.execute(query("record_image"), {"image_id": image_id}).fetchone()
        if image is None:
            raise NoSuchImage(image_id)
        boxes = [row["merged_data"] for row in cursor.execute(query("record_boxes"), {"image_ids": [image_id]})]
        answers = cursor.execute(query("latest_detector_results"), {"image_id": image_id}).fetchall() \
            if detectors else []
    data = load_image_bytes(image["image_path"], image["image_url"], roots=settings.image_roots or None,
                            allow_private_urls=settings.allow_private_urls)
    budget = DecodeBudget(settings.decode_budget_bytes)
    pixels = prepare_image(data, budget=budget).to_rgb(budget)
    raw = raw_detector_boxes(answers, pixels.size) if detectors else None
    return render_boxes(pixels, boxes, raw)


def raw_detector_boxes(answers: Iterable[Mapping[str, Any]], size: tuple[int, int]) -> dict[str, list[dict[str, Any]]]:
    """Each answer row's (result_id, service, data) usable boxes, read as harmonization reads them."""
    found: dict[str, list[dict[str, Any]]] = {}
    for answer in answers:
        detections, _ids = extract_detections(
            [DetectorResult(answer["result_id"], answer["service"], answer["data"])], size)
        found[answer["service"]] = [
            {"bbox": d.bbox, "label": d.label, "confidence": d.confidence} for d in detections]
    return found


def save_png(picture: Image.Image, path: str | os.PathLike[str]) -> None:
    """Write the picture as PNG; an unwritable path is the user's to fix."""
    try:
        picture.save(path, format="PNG")
    except OSError as error:
        raise WindmillError(f"cannot write {os.fspath(path)}: {error.strerror or error}") from None
