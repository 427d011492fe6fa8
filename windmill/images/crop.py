"""Cropping boxes out of an image in memory, and mapping what a service saw in a crop back onto the image.

Boxes are `{x, y, width, height}` in image pixels (the canonical form the farm client produces;
a `[x, y, w, h]` list is accepted too). A crop is clamped to the image and widened to whole
pixels (floor of the top-left, ceiling of the bottom-right), so it always contains the box.
The translation helpers are pure: face boxes and keypoints come back in crop pixels, pose
landmarks normalised 0–1 to the crop; both become full-image coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from PIL import Image

from windmill.images.errors import BadImage
from windmill.images.validate import DEFAULT_JPEG_QUALITY, PreparedImage, encode_jpeg, prepared_jpeg

Number = int | float


@dataclass(frozen=True)
class CropBox:
    """The pixel rectangle cut from the image: left/top inclusive, right/bottom exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def as_bbox(self) -> dict[str, int]:
        return {"x": self.left, "y": self.top, "width": self.width, "height": self.height}


def box_xywh(bbox: Mapping[str, Any] | Sequence[Any]) -> tuple[float, float, float, float]:
    """`{x,y,width,height}` or `[x,y,w,h]` as four finite floats; anything else is a ValueError."""
    if isinstance(bbox, Mapping):
        values = [bbox.get(key) for key in ("x", "y", "width", "height")]
    elif isinstance(bbox, Sequence) and not isinstance(bbox, str | bytes) and len(bbox) == 4:
        values = list(bbox)
    else:
        raise ValueError(f"not a box: {bbox!r}")
    numbers = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"not a box: {bbox!r}")
        numbers.append(float(value))
    x, y, width, height = numbers
    return x, y, width, height


def clamp_crop(bbox: Mapping[str, Any] | Sequence[Any], image_size: tuple[int, int]) -> CropBox:
    """The whole-pixel rectangle covering `bbox` inside an image of `image_size`; empty → BadImage."""
    try:
        x, y, width, height = box_xywh(bbox)
    except ValueError as problem:
        raise BadImage(f"cannot crop: {problem}") from None
    image_width, image_height = image_size
    left = max(0, math.floor(x))
    top = max(0, math.floor(y))
    right = min(image_width, math.ceil(x + width))
    bottom = min(image_height, math.ceil(y + height))
    if right <= left or bottom <= top:
        raise BadImage(
            f"cannot crop: the box x={x:g} y={y:g} width={width:g} height={height:g}"
            f" has no area inside the {image_width}×{image_height} image"
        )
    return CropBox(left, top, right, bottom)


def crop_jpeg(
    image: PreparedImage | Image.Image,
    bbox: Mapping[str, Any] | Sequence[Any],
    *,
    quality: int = DEFAULT_JPEG_QUALITY,
) -> tuple[bytes, CropBox]:
    """Cut `bbox` (clamped to the image) out as RGB JPEG bytes.

    Pass a decoded `PIL.Image` when cropping several boxes of one image: a PreparedImage is
    decoded on every call.
    """
    pixels = image.to_rgb() if isinstance(image, PreparedImage) else image
    crop = clamp_crop(bbox, pixels.size)
    region = pixels.crop((crop.left, crop.top, crop.right, crop.bottom))
    if region.mode != "RGB":
        region = region.convert("RGB")
    return encode_jpeg(region, quality=quality), crop


def crop_for_service(
    image: PreparedImage | Image.Image,
    bbox: Mapping[str, Any] | Sequence[Any],
    *,
    quality: int = DEFAULT_JPEG_QUALITY,
) -> tuple[PreparedImage, CropBox]:
    """`crop_jpeg`, wrapped as a PreparedImage the farm client can upload."""
    data, crop = crop_jpeg(image, bbox, quality=quality)
    return prepared_jpeg(data, crop.width, crop.height, changes=(f"crop {crop.as_bbox()}",)), crop


# ---------------------------------------------------------------------------------------------
# Crop coordinates → image coordinates (pure)


def crop_to_image_coords(x: Number, y: Number, crop: CropBox) -> tuple[Number, Number]:
    """A point in crop pixels as image pixels."""
    return x + crop.left, y + crop.top


def crop_normalized_to_image_coords(x: Number, y: Number, crop: CropBox) -> tuple[float, float]:
    """A point normalised 0–1 to the crop (pose landmarks) as image pixels."""
    return crop.left + x * crop.width, crop.top + y * crop.height


def crop_box_to_image_coords(
    bbox: Mapping[str, Any] | Sequence[Any], crop: CropBox, *, clamp_to: tuple[int, int] | None = None
) -> dict[str, Number]:
    """A box in crop pixels as an image-pixel `{x,y,width,height}`, optionally clamped to the image."""
    x, y, width, height = box_xywh(bbox)
    left, top = x + crop.left, y + crop.top
    right, bottom = left + width, top + height
    if clamp_to is not None:
        left, top = max(0.0, left), max(0.0, top)
        right, bottom = min(float(clamp_to[0]), right), min(float(clamp_to[1]), bottom)
        right, bottom = max(left, right), max(top, bottom)
    return {"x": _tidy(left), "y": _tidy(top), "width": _tidy(right - left), "height": _tidy(bottom - top)}


def face_prediction_to_image(prediction: Mapping[str, Any], crop: CropBox,
                             image_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """A face prediction from a crop with its bbox and keypoints in image pixels; other keys kept.

    The original crop-relative box is kept as `bbox_in_crop`. The box is clamped to the image (`image_size`), not to
    the crop: a face the box cut through reaches beyond it, and its keypoints may lie there. Keypoints that are not
    `[x, y]` pairs are left as they are.
    """
    translated = dict(prediction)
    if "bbox" in prediction:
        translated["bbox_in_crop"] = prediction["bbox"]
        translated["bbox"] = crop_box_to_image_coords(prediction["bbox"], crop, clamp_to=image_size)
    keypoints = prediction.get("keypoints")
    if isinstance(keypoints, Mapping):
        moved: dict[str, Any] = {}
        for name, point in keypoints.items():
            if _is_point(point):
                px, py = crop_to_image_coords(point[0], point[1], crop)
                moved[name] = [_tidy(px), _tidy(py)]
            else:
                moved[name] = point
        translated["keypoints"] = moved
    return translated


def pose_prediction_to_image(
    prediction: Mapping[str, Any], crop: CropBox, image_size: tuple[int, int]
) -> dict[str, Any]:
    """A pose prediction from a crop with landmarks normalised 0–1 to the **whole image**.

    `z` is relative depth on the scale of x (MediaPipe), so it is rescaled like x. `visibility`
    and `pose_analysis` (angles the service measured on the crop) are kept as they are.
    """
    image_width, image_height = image_size
    translated = dict(prediction)
    landmarks = prediction.get("landmarks")
    if isinstance(landmarks, Mapping):
        moved: dict[str, Any] = {}
        # 33 landmarks per person, each checked and moved: the checks avoid ABC isinstance checks and lists built
        # only to be checked (a third of the translation's CPU).
        for name, landmark in landmarks.items():
            if not (type(landmark) is dict or isinstance(landmark, Mapping)) or not (
                    _finite(x := landmark.get("x")) and _finite(y := landmark.get("y"))):
                moved[name] = landmark
                continue
            px, py = crop_normalized_to_image_coords(x, y, crop)
            point = dict(landmark)
            point["x"] = round(px / image_width, 4)
            point["y"] = round(py / image_height, 4)
            if _finite(z := landmark.get("z")):
                point["z"] = round(z * crop.width / image_width, 4)
            moved[name] = point
        translated["landmarks"] = moved
    return translated


def _is_point(value: Any) -> bool:
    if type(value) is list or type(value) is tuple:  # what JSON gives: spared the ABC check
        return len(value) == 2 and _finite(value[0]) and _finite(value[1])
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str | bytes)
        and len(value) == 2
        and all(_finite(v) for v in value)
    )


def _finite(value: Any) -> TypeGuard[int | float]:
    """A finite int or float (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _tidy(value: float) -> Number:
    """Whole numbers as ints (pixel boxes stay integer when they started integer)."""
    return int(value) if float(value).is_integer() else round(float(value), 3)
