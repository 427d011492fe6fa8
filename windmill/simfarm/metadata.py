"""The metadata service (contract §3.16), computed for real from the pixels, the file and its EXIF.

By default it behaves like the EXIF-preserving service (2026): the received file's size, format and
EXIF. `reencode=True` reproduces df57b25, which re-encoded every image as JPEG q95 first: file type
always "jpeg", the re-encoded size, no EXIF (its temp-file timestamps are left out to stay deterministic).
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageChops

from windmill.simfarm.decoding import EXIF_LOCK

# ExifTool's names for a few tags Pillow names differently.
_EXIFTOOL_NAMES = {"ISOSpeedRatings": "ISO", "DateTime": "ModifyDate", "ExifImageWidth": "ExifImageWidth"}
_BUCKETS = (
    ("camera", ("camera", "lens", "focal", "aperture", "shutter", "iso", "flash", "exposure", "make", "model")),
    ("image", ("width", "height", "resolution", "color", "orientation", "compression")),
    ("gps", ("gps", "latitude", "longitude", "altitude", "location")),
    ("datetime", ("date", "time", "created", "modified")),
)


def analyze(image: Image.Image, data: bytes, file_format: str, size: tuple[int, int] | None = None, *,
            reencode: bool = False) -> dict[str, Any]:
    """The prediction; `size` is the image's own when `image` was decoded at a reduced scale (the statistics are
    the reduced image's)."""
    rgb = image.convert("RGB")
    width, height = size or rgb.size
    if reencode:
        buffer = io.BytesIO()
        rgb.save(buffer, "JPEG", quality=95)
        file_info = {"file_size": buffer.tell(), "file_type": "jpeg"}
    else:
        file_info = {"file_size": len(data), "file_type": file_format}
    luma = np.asarray(rgb.convert("L"))
    wide = luma.astype(np.int16)  # differences of pixels, for the symmetry and the Laplacian
    sections = [_sums(section) if section.size else (0, 0, 0) for section in _thirds(luma)]
    saturation = _mean_saturation(rgb) if image.mode not in ("L", "1") else 0.0  # grey: max == min everywhere
    prediction: dict[str, Any] = {
        "dimensions": {"height": height, "width": width},
        "aspect_ratio": {
            "category": "landscape" if width > height else "portrait" if height > width else "square",
            "ratio": round(width / height, 1),
        },
        "file": file_info,
        "color_properties": {
            "saturation_analysis": {
                "average_saturation": round(saturation, 1),
                "saturation_level": round(saturation, 1),
            }
        },
        "composition": _composition(luma, wide, sections),
        "image_quality": _quality(luma, wide, sections),
    }
    if not reencode:
        with EXIF_LOCK:  # the image may be shared with other requests (decoding.DecodedImages)
            exif_data, gps_data = _exif(image)
        if exif_data:
            prediction["exif_data"] = exif_data
        if gps_data:
            prediction["gps_data"] = gps_data
    return prediction


def _saturation_table() -> np.ndarray:
    """Pillow's HSV saturation of every (max, min) channel pair as float32, indexed by max * 256 + min."""
    high, low = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    pairs = Image.fromarray(np.stack([high, low, low], axis=2).astype(np.uint8), "RGB")
    return np.asarray(pairs.convert("HSV"))[..., 1].reshape(-1).astype(np.float32)


_SATURATION = _saturation_table()


def _mean_saturation(rgb: Image.Image) -> float:
    """The mean S of `rgb.convert("HSV")` (a third of metadata's time), from each pixel's max and min channel.

    The same float32 values summed in the same order (numpy reduces a channel view and a flat array alike): the
    same mean to the last bit.
    """
    red, green, blue = rgb.split()
    high = np.asarray(ImageChops.lighter(ImageChops.lighter(red, green), blue))
    low = np.asarray(ImageChops.darker(ImageChops.darker(red, green), blue))
    return float(np.take(_SATURATION, (high.astype(np.uint16) << 8) | low).mean())


def _moments(values: np.ndarray) -> tuple[float, float]:
    """Mean and population variance of integer values, in exact integer arithmetic (no float32 rounding)."""
    return _finish(*_sums(values))


def _sums(values: np.ndarray) -> tuple[int, int, int]:
    """Count, sum and sum of squares of 8- or 16-bit integers, exactly. Squares are made in the narrowest type that
    holds them (uint8² fits 16 bits, the Laplacian's ±1020² fits 32): the widest pass is summed in 64 bits."""
    square_type = np.uint16 if values.dtype == np.uint8 else np.int32
    return (values.size, int(values.sum(dtype=np.int64)),
            int(np.square(values, dtype=square_type).sum(dtype=np.int64)))


def _finish(count: int, total: int, squares: int) -> tuple[float, float]:
    return total / count, (count * squares - total * total) / (count * count)


def _edge_density(luma: np.ndarray) -> float:
    """Share of pixels whose central-difference gradient is over 60 (a stand-in for Canny), in small integers.

    |gradient| > 60 ⟺ across² + down² > 3600; a difference over 60 decides alone, so each is clipped to 61 and the
    sum of squares fits 16 bits.
    """
    clipped = np.zeros(luma.shape, np.uint16)
    clipped[:, 1:-1] = np.square(_clipped_difference(luma[:, 2:], luma[:, :-2]), dtype=np.uint16)
    clipped[1:-1, :] += np.square(_clipped_difference(luma[2:, :], luma[:-2, :]), dtype=np.uint16)
    return np.count_nonzero(clipped > 60 * 60) / luma.size


def _clipped_difference(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """min(|first - second|, 61) of two uint8 arrays, without leaving uint8."""
    return np.minimum(np.maximum(first, second) - np.minimum(first, second), 61)


def _thirds(luma: np.ndarray) -> list[np.ndarray]:
    height, width = luma.shape
    return [luma[r * height // 3:(r + 1) * height // 3 or 1, c * width // 3:(c + 1) * width // 3 or 1]
            for r in range(3) for c in range(3)]


def _composition(luma: np.ndarray, wide: np.ndarray, sections: list[tuple[int, int, int]]) -> dict[str, Any]:
    # Statistics of 0–255 integers, computed exactly: float32 sums of a whole image drift in the 7th digit.
    edge_density = _edge_density(luma)
    moments = [_finish(*sums) if sums[0] else (0.0, 0.0) for sums in sections]
    brightness = [round(mean, 1) for mean, _ in moments]
    busiest = max(range(9), key=lambda i: moments[i][1])
    symmetry = 1.0 - int(np.abs(wide - wide[:, ::-1]).sum(dtype=np.int64)) / luma.size / 255.0
    return {
        "complexity_analysis": {
            "complexity_level": round(edge_density * 100, 1),
            "edge_density": round(edge_density, 3),
        },
        "rule_of_thirds": {"most_interesting_section": busiest, "section_brightness": brightness},
        "symmetry_analysis": {
            "horizontal_symmetry_score": round(symmetry, 3),
            "symmetry_level": round(symmetry * 100, 1),
        },
    }


def _quality(luma: np.ndarray, wide: np.ndarray, sections: list[tuple[int, int, int]]) -> dict[str, Any]:
    laplacian = np.zeros(luma.shape, np.int16)  # ±1020 at most
    laplacian[1:-1, 1:-1] = wide[:-2, 1:-1] + wide[2:, 1:-1] + wide[1:-1, :-2] + wide[1:-1, 2:] - 4 * wide[1:-1, 1:-1]
    _, variance = _moments(laplacian)
    if min(luma.shape) >= 3:  # the thirds tile the image: its sums are theirs
        mean, gray_variance = _finish(*(sum(column) for column in zip(*sections, strict=True)))
    else:  # a thin image's thirds overlap (`or 1` above)
        mean, gray_variance = _moments(luma)
    std = math.sqrt(gray_variance)
    bright = np.count_nonzero(luma >= 230) / luma.size
    dark = np.count_nonzero(luma < 25) / luma.size
    return {
        "blur_analysis": {
            "laplacian_variance": round(variance, 2),
            "sharpness_score": round(min(1.0, variance / 500), 3),
        },
        "contrast_analysis": {
            "brightness_variation": round(std, 2),
            "contrast_quality": round(std / 64 * 25, 1),
            "contrast_score": round(std / 64, 2),
            "dynamic_range": round(std, 2),
        },
        "exposure_analysis": {
            "bright_pixel_ratio": round(bright, 3),
            "dark_pixel_ratio": round(dark, 3),
            "exposure_quality": round((1 - dark - bright) * 100, 1),
            "histogram_balance": round(std, 2),
        },
        "lighting_analysis": {"lighting_quality": round(mean, 2), "mean_brightness": round(mean, 2)},
    }


def _json_value(value: Any) -> Any:
    """EXIF values as JSON: rationals as floats, bytes as text when printable, sequences as lists."""
    if isinstance(value, bytes):
        text = value.rstrip(b"\x00").decode("ascii", "replace")
        return text if text.isprintable() else None
    if isinstance(value, tuple | list):
        items = [_json_value(item) for item in value]
        return None if any(item is None for item in items) else items
    if isinstance(value, int | str):
        return value.strip("\x00") if isinstance(value, str) else value
    try:
        return round(float(value), 6)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _bucket(key: str) -> str:
    lowered = key.lower()
    for bucket, words in _BUCKETS:
        if any(word in lowered for word in words):
            return bucket
    return "other"


def _exif(image: Image.Image) -> tuple[dict[str, Any], dict[str, Any]]:
    """ExifTool-style keys ("EXIF:Make") bucketed as the service does: exif_data = camera ∪ datetime."""
    exif = image.getexif()
    tags: dict[str, Any] = {}
    for tag, value in exif.items():
        tags[ExifTags.TAGS.get(tag, f"Tag{tag:04x}")] = value
    for tag, value in exif.get_ifd(ExifTags.IFD.Exif).items():
        tags[ExifTags.TAGS.get(tag, f"Tag{tag:04x}")] = value
    gps_ifd = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps = {ExifTags.GPSTAGS.get(tag, f"Tag{tag:04x}"): value for tag, value in gps_ifd.items()}
    exif_data: dict[str, Any] = {}
    for name, value in tags.items():
        key = f"EXIF:{_EXIFTOOL_NAMES.get(name, name)}"
        converted = _json_value(value)
        if converted not in (None, "", []) and _bucket(key) in ("camera", "datetime"):
            exif_data[key] = converted
    gps_data: dict[str, Any] = {}
    for name, value in gps.items():
        converted = _json_value(value)
        if converted not in (None, "", []):
            gps_data[f"EXIF:{name}"] = converted
    for axis, reference in (("Latitude", "S"), ("Longitude", "W")):
        degrees = gps_data.get(f"EXIF:GPS{axis}")
        if isinstance(degrees, list) and len(degrees) == 3:
            decimal = degrees[0] + degrees[1] / 60 + degrees[2] / 3600
            sign = -1 if gps_data.get(f"EXIF:GPS{axis}Ref") == reference else 1
            gps_data[f"Composite:GPS{axis}"] = round(sign * decimal, 6)
    return exif_data, gps_data
