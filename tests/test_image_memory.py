"""What one image costs a worker in memory: the peak RSS growth of preparing it, measured in a process of its own
(tests/support/image_memory.py), for the modes that take the most (alpha, palettes with transparency, 16 bits,
CMYK, an EXIF rotation). The images are 4000 × 4000 (16 MP): large enough that the pixels dwarf everything else,
small enough to take about a second each."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.support.image_memory import generate, measure
from windmill.images import BadImage, prepare_image
from windmill.images.upright import upright_rgb

SIDE = 4000
PIXELS = SIDE * SIDE
SLACK = 12 * 1024 * 1024  # the encoder's buffers, the JPEG made, the interpreter's own growth


@pytest.mark.parametrize(
    ("kind", "bytes_per_pixel"),
    [
        # Two full copies of 4 bytes a pixel at most: the decoded image and the one made from it (each step's input
        # is let go once its output exists). A chain of convert, paste and transpose held three or four (13 bytes a
        # pixel for an RGBA PNG: 1.1 GB at the pixel limit).
        ("rgba_png", 8),
        ("rotated_cmyk_jpeg", 8),
        # The palette is flattened over white, not the pixels: the 1-byte image and its RGB (10 bytes a pixel before).
        ("palette_png", 5),
        # 16-bit grayscale scaled to 8 bits a strip at a time, then made RGB: 2 + 1, then 1 + 4 (9 before).
        ("gray16_png", 5),
    ],
)
def test_preparing_an_image_holds_at_most_two_copies_of_its_pixels(tmp_path: Path, kind: str,
                                                                  bytes_per_pixel: int) -> None:
    file = tmp_path / kind
    file.write_bytes(generate(kind, SIDE, SIDE))
    measured = measure("prepare", file)
    assert "peak_growth" in measured, measured
    assert "bad_image" not in measured, measured
    assert measured["peak_growth"] <= PIXELS * bytes_per_pixel + SLACK, (
        f"{kind}: {measured['peak_growth'] / PIXELS:.1f} bytes a pixel")


def _the_old_way(image: Image.Image) -> Image.Image:
    """What the chain of copies made of an image (windmill/images/validate.py before the copies went)."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flattened = Image.new("RGB", rgba.size, (255, 255, 255))
        flattened.paste(rgba, mask=rgba.getchannel("A"))
        return flattened
    if mode.startswith("I") or mode == "F":
        pixels = np.asarray(image)
        if mode.startswith("I;16"):
            scaled = pixels.astype(np.uint16) >> 8
        elif mode == "F":
            scaled = np.nan_to_num(pixels) * (255.0 if float(np.nanmax(pixels)) <= 1.0 else 1.0)
        else:
            scaled = pixels >> 8 if int(pixels.max()) > 255 else pixels
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def _rotated(image: Image.Image, value: int = 6) -> Image.Image:
    exif = Image.Exif()
    exif[0x0112] = value
    image.info["exif"] = exif.tobytes()
    return image


def _palette(transparency: bytes | int, mode: str = "P") -> Image.Image:
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8), "L").convert("P")
    image.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())
    image.info["transparency"] = transparency
    return image


def _noise(mode: str, dtype: type, top: float) -> Image.Image:
    rng = np.random.default_rng(11)
    bands = len(Image.new(mode, (1, 1)).getbands())
    shape = (37, 53) if bands == 1 else (37, 53, bands)
    values = rng.random(shape) * top
    return Image.fromarray(values.astype(dtype), mode if mode not in ("I;16",) else None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _palette(bytes(range(0, 256, 7))),
        lambda: _palette(3),
        lambda: _rotated(_palette(bytes(range(255, 0, -3))), 8),
        lambda: _noise("RGBA", np.uint8, 256),
        lambda: _rotated(_noise("RGBA", np.uint8, 256), 5),
        lambda: _noise("LA", np.uint8, 256),
        lambda: _rotated(_noise("CMYK", np.uint8, 256), 6),
        lambda: _rotated(_noise("RGB", np.uint8, 256), 3),
        lambda: _noise("I;16", np.uint16, 65536),
        lambda: _rotated(_noise("I", np.int32, 70000), 7),
        lambda: _noise("I", np.int32, 200),
        lambda: _noise("F", np.float32, 1.0),
        lambda: _noise("F", np.float32, 900.0),
    ],
    ids=["palette-alphas", "palette-one-transparent", "palette-rotated", "rgba", "rgba-rotated", "la",
         "cmyk-rotated", "rgb-rotated", "gray16", "int32-rotated", "int32-small", "float-unit", "float-large"],
)
def test_the_leaner_conversions_give_the_very_pixels_the_chain_of_copies_gave(make: Callable[[], Image.Image]) -> None:
    expected = _the_old_way(make())
    actual, _changes = upright_rgb(make())
    assert actual.mode == expected.mode and actual.size == expected.size
    assert actual.tobytes() == expected.tobytes()


_CORE = type(Image.new("L", (1, 1)).im)  # Pillow's pixels; a closed image holds none (a DeferredError instead)


def _live_images(error: BaseException) -> list[str]:
    """Images with their pixels still in memory that the exception's tracebacks (its own and its context's) keep
    alive through their frames' locals."""
    found: list[str] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        trace = error.__traceback__
        while trace is not None:
            windmills = "/windmill/" in trace.tb_frame.f_code.co_filename  # not the test's own frame
            for name, value in trace.tb_frame.f_locals.items() if windmills else ():
                if isinstance(value, Image.Image) and isinstance(getattr(value, "_im", None), _CORE):
                    found.append(f"{trace.tb_frame.f_code.co_name}: {name} {value.mode} {value.size}")
            trace = trace.tb_next
        error = error.__context__  # type: ignore[assignment]
    return found


def test_a_bad_image_kept_as_a_failure_holds_none_of_its_pixels() -> None:
    """The image cache keeps a bad image's failure for 30 s, its traceback with it: the frames of the preparation
    kept the flattened pixels alive (340 MiB for an image at the limit refused as too large to send) until then."""
    noise = Image.effect_noise((600, 600), 80).convert("RGBA")
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    with pytest.raises(BadImage, match="even as a JPEG of quality 70") as refused:
        prepare_image(buffer.getvalue(), max_send_bytes=1000)
    assert _live_images(refused.value) == []


def test_the_dashboards_picture_of_a_large_jpeg_is_decoded_at_the_scale_it_is_shown(tmp_path: Path) -> None:
    """The image page shows a picture at most 1600 pixels wide: a 4000 × 4000 JPEG is decoded at half scale (the
    decoder's DCT scaling, the smallest scale at least the size shown): 16 MB decoded and the resize's 23 MB, where
    the full decode and its resize took 105 MB."""
    file = tmp_path / "photo.jpg"
    file.write_bytes(generate("rgb_jpeg", SIDE, SIDE))
    measured = measure("picture", file)
    assert measured.get("changes") == [f"{SIDE}×{SIDE}"], measured
    assert measured["peak_growth"] <= 3 * PIXELS, f"{measured['peak_growth'] / PIXELS:.1f} bytes a pixel"
