"""Decoded pixels made upright 8-bit RGB (8-bit grayscale stays), with at most two full copies of them alive.

At the pixel limit (about 89 MP) one copy is 340 MiB: Pillow keeps RGB, RGBA and CMYK at 4 bytes a pixel. The chain
this replaces held three or four at once (an RGBA PNG: the decoded image, its RGBA "conversion", the white canvas and
the alpha band, 1.1 GB), enough for a few such images on a worker's threads to have the kernel kill it. So each step
closes its input once its output exists (the decoded image too: the caller reads what it needs of it first), the
conversion comes before the rotation (so a CMYK photo is turned as RGB, not turned as CMYK and then converted), a
palette is flattened over white in its 256 entries rather than in its pixels, and deep grayscale is scaled a strip at
a time.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_WHITE = (255, 255, 255)
_ORIENTATION_TAG = 0x0112
# EXIF orientation → the transposition that makes the image upright (as PIL.ImageOps.exif_transpose does it).
_TRANSPOSITIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Modes with an alpha band that an RGB canvas takes as they are, the band as the paste's mask.
_PASTED_WITH_ALPHA = ("RGBA", "LA")
# Modes with alpha that are made RGBA first: premultiplied ones, and a palette with an alpha band.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_STRIP_BYTES = 4 * 1024 * 1024  # what a strip of deep grayscale takes in numpy at a time


def orientation(image: Image.Image) -> int:
    """The EXIF orientation to apply, 1 (none) when there is none or it cannot be read."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # an unreadable EXIF block must not cost us the image
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def orientation_in_header(image: Image.Image) -> int | None:
    """The EXIF orientation as the image's header gives it, before its pixels are decoded; None when only they
    would tell: Pillow looks for a PNG's eXIf chunk after the pixels, decoding them all to get there."""
    if image.format == "PNG" and "exif" not in image.info:
        return None
    return orientation(image)


def kept_as_is(image: Image.Image) -> bool:
    """Whether the image's pixels are sent as they are decoded (8-bit RGB, or 8-bit grayscale without transparency),
    but for a rotation."""
    return image.mode == "RGB" or (image.mode == "L" and "transparency" not in image.info)


def upright_rgb(image: Image.Image) -> tuple[Image.Image, list[str]]:
    """Apply the EXIF rotation and convert to 8-bit RGB (8-bit grayscale stays), naming each change made.

    The image is handed over: when another image is returned, `image` is closed (its mode, size and info stay
    readable; its pixels are gone)."""
    changes: list[str] = []
    turn = orientation(image)
    if turn != 1:
        changes.append(f"EXIF orientation {turn} applied")
    mode = image.mode
    if kept_as_is(image):
        converted = image
    elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        converted = _flattened(image)
        changes.append(f"{mode} alpha flattened over white")
    elif mode.startswith("I") or mode == "F":
        converted = _replaced(image, _high_depth_to_gray(image)).convert("RGB")
        changes.append(f"{mode} → 8-bit RGB")
    else:
        converted = image.convert("RGB")
        changes.append(f"{mode} → RGB")
    if converted is not image:
        image.close()
    if turn == 1:
        return converted, changes
    return _replaced(converted, converted.transpose(_TRANSPOSITIONS[turn])), changes


def _replaced(old: Image.Image, new: Image.Image) -> Image.Image:
    """`new`, having closed `old` (made from it) so that its pixels go now rather than when the caller lets go."""
    old.close()
    return new


def _flattened(image: Image.Image) -> Image.Image:
    """An image with transparency as RGB over white."""
    if image.mode == "P":
        return _palette_over_white(image)
    rgba = image if image.mode in _PASTED_WITH_ALPHA else image.convert("RGBA")
    flattened = Image.new("RGB", rgba.size, _WHITE)
    flattened.paste(rgba, mask=rgba)  # an RGBA or LA mask is its alpha band: no copy of the band
    if rgba is not image:
        rgba.close()
    return flattened


def _palette_over_white(image: Image.Image) -> Image.Image:
    """A palette image with a transparent entry (or several) as RGB over white: each of its at most 256 colours is
    flattened (by the same paste the pixels would take, so the result is the same to the bit), then the pixels
    are looked up once, without an RGBA copy of them."""
    image.apply_transparency()  # the transparency into the palette's alpha (the image is ours: prepare opened it)
    entries = image.getpalette("RGBA")
    if not entries:
        return _flattened(image.convert("RGBA"))
    swatch = Image.frombytes("RGBA", (len(entries) // 4, 1), bytes(entries))
    flat = Image.new("RGB", swatch.size, _WHITE)
    flat.paste(swatch, mask=swatch)
    image.putpalette(flat.tobytes(), "RGB")
    return image.convert("RGB")


def _high_depth_to_gray(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float grayscale scaled into 8 bits (Pillow's convert clips instead), a strip of
    rows at a time: numpy's copies of the whole image (its bytes, the array, the shifted array, the clipped one)
    took 7 bytes a pixel beside the image."""
    width, height = image.size
    rows = max(1, _STRIP_BYTES // (4 * width))
    strips = [(top, min(height, top + rows)) for top in range(0, height, rows)]

    def strip(top: int, bottom: int) -> np.ndarray:
        return np.asarray(image.crop((0, top, width, bottom)))

    scale: float = 1.0
    shift = 0
    if image.mode.startswith("I;16"):
        shift = 8
    elif image.mode == "F":
        peak = max((float(np.nanmax(strip(*rows), initial=-np.inf)) for rows in strips), default=0.0)
        scale = 255.0 if peak <= 1.0 else 1.0
    else:
        peak = max((int(strip(*rows).max(initial=0)) for rows in strips), default=0)
        shift = 8 if peak > 255 else 0
    gray = Image.new("L", image.size)
    for top, bottom in strips:
        pixels = strip(top, bottom)
        if image.mode == "F":
            scaled = np.nan_to_num(pixels) * scale
        elif shift:
            scaled = pixels.astype(np.uint16) >> shift if image.mode.startswith("I;16") else pixels >> shift
        else:
            scaled = pixels
        gray.paste(Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8)), (0, top))
    return gray
