"""The peak memory one image costs a worker, measured in a process of its own.

`python -m tests.support.image_memory PATH FILE` reads FILE, resets the kernel's peak-RSS mark, runs PATH (one of
PATHS: what a role does with an image) and prints one JSON line: the growth of the peak RSS over the RSS before the
decode, in bytes, and the outcome (the prepared image's changes, or the BadImage's reason). The peak comes from
/proc (VmHWM, reset through /proc/self/clear_refs), so every allocation counts: Pillow's, numpy's, Python's.
`generate(kind, width, height)` writes the worst cases (alpha, 16 bits, CMYK, palettes, TIFF, many frames) small
enough on disk to pass the 32 MiB file limit.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SEND_LIMIT = 8 * 1024 * 1024 - 64 * 1024  # Settings.max_upload_image_bytes with the defaults


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)


def run_path(path: str, data: bytes) -> dict[str, Any]:
    """Run one role's handling of `data` and measure the peak RSS it added."""
    from windmill.images import BadImage
    from windmill.images.crop import crop_for_service
    from windmill.images.validate import prepare_image, prepare_image_and_pixels

    outcome: dict[str, Any] = {}
    prepared = None
    if path == "to_rgb":  # the postprocess role, the image prepared already by a service of the process
        prepared = prepare_image(data, max_send_bytes=SEND_LIMIT)
        data = b""
    import gc

    gc.collect()
    before = _status("VmRSS")
    _reset_peak()
    try:
        if path == "prepare":  # the service role (and caption scoring, and metadata: an upload like any other)
            outcome["changes"] = list(prepare_image(data, max_send_bytes=SEND_LIMIT).changes)
        elif path == "prepare_decoded_before":  # caption scoring
            outcome["changes"] = list(prepare_image(data, max_send_bytes=SEND_LIMIT, decoded_before=True).changes)
        elif path == "pixels":  # the postprocess role, preparing the image itself to crop its boxes
            got, pixels = prepare_image_and_pixels(data, max_send_bytes=SEND_LIMIT)
            outcome["changes"] = list(got.changes)
            crop_for_service(pixels, {"x": 10, "y": 10, "width": 500, "height": 500})
            del pixels
        elif path == "picture":  # the dashboard's picture of an image (its image page)
            from windmill.settings import settings_from_mapping
            from windmill.web.pictures import PICTURE_PX, Pictures

            file = Path("/dev/shm" if Path("/dev/shm").is_dir() else "/tmp") / f"picture-{os.getpid()}"
            file.write_bytes(data)
            try:
                shown = Pictures(settings_from_mapping({}), lambda _image_id: (str(file), None)).get(1, PICTURE_PX)
            finally:
                file.unlink()
            assert shown is not None
            outcome["changes"] = [f"{shown.width}×{shown.height}"]
        elif path == "to_rgb":
            assert prepared is not None
            pixels = prepared.to_rgb()
            crop_for_service(pixels, {"x": 10, "y": 10, "width": 500, "height": 500})
            del pixels
        else:
            raise ValueError(path)
    except BadImage as problem:
        outcome["bad_image"] = problem.reason
    gc.collect()
    outcome["peak_growth"] = _status("VmHWM") - before
    outcome["after_growth"] = _status("VmRSS") - before
    return outcome


def run_concurrently(file: Path, threads: int) -> dict[str, Any]:
    """`threads` service lanes of one process preparing the image (each as an image of its own) at once, through
    the process's ImageSource and the settings of the environment (WINDMILL_DECODE_BUDGET_BYTES)."""
    import gc
    import os
    import threading

    from windmill.image_cache import ImageSource
    from windmill.settings import settings_from_mapping

    images = ImageSource(settings_from_mapping({key: value for key, value in os.environ.items()
                                                if key.startswith("WINDMILL_DECODE")}))
    start = threading.Barrier(threads)
    outcomes: list[str] = []

    def lane(image_id: int) -> None:
        start.wait()
        outcomes.append(" ".join(images.prepared(image_id, str(file), None).changes))

    gc.collect()
    before = _status("VmRSS")
    _reset_peak()
    lanes = [threading.Thread(target=lane, args=(number,)) for number in range(threads)]
    for running in lanes:
        running.start()
    for running in lanes:
        running.join()
    return {"peak_growth": _status("VmHWM") - before, "outcomes": outcomes}


def measure(path: str, file: Path, *, address_space: int | None = None, timeout: float = 600,
            threads: int = 0, env: dict[str, str] | None = None) -> dict[str, Any]:
    """run_path in a fresh interpreter (one image per process, so no peak hides another's); with `threads`,
    run_concurrently."""
    import os

    command = [sys.executable, "-m", "tests.support.image_memory", path, str(file), str(threads)]
    if address_space is not None:
        command = ["prlimit", f"--as={address_space}", *command]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        return {"exit": done.returncode, "stderr": done.stderr[-2000:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------------------------------------
# The worst cases, generated


def _scene(mode: str, width: int, height: int) -> Image.Image:
    """Flat colour with a few blocks: compresses to little, decodes to all its pixels."""
    colours = {"RGBA": (200, 30, 30, 128), "RGB": (30, 200, 30), "CMYK": (10, 200, 30, 0), "L": 90, "P": 3,
               "I;16": 40000}
    image = Image.new(mode, (width, height), 0 if mode != "RGBA" else (0, 0, 0, 0))
    step = max(1, width // 5)
    for left in range(0, width, step * 2):
        image.paste(colours[mode], (left, 0, min(width, left + step), height))
    return image


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def rgb48_png(width: int, height: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow writes none): rows of one grey, streamed through zlib."""
    squeeze = zlib.compressobj(9)
    row = b"\x00" + b"\x80\x00" * 3 * width
    parts = [squeeze.compress(row) for _ in range(height)]
    parts.append(squeeze.flush())
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def generate(kind: str, width: int, height: int, *, frames: int = 4) -> bytes:
    """The bytes of one worst case at width × height."""
    buffer = io.BytesIO()
    if kind == "rgba_png":
        _scene("RGBA", width, height).save(buffer, "PNG", compress_level=9)
    elif kind == "rgb48_png":
        return rgb48_png(width, height)
    elif kind == "gray16_png":
        _scene("I;16", width, height).save(buffer, "PNG", compress_level=9)
    elif kind == "cmyk_jpeg":
        _scene("CMYK", width, height).save(buffer, "JPEG", quality=50)
    elif kind == "rgb_jpeg":
        _scene("RGB", width, height).save(buffer, "JPEG", quality=50)
    elif kind in ("rotated_jpeg", "rotated_cmyk_jpeg"):
        exif = Image.Exif()
        exif[0x0112] = 6
        _scene("RGB" if kind == "rotated_jpeg" else "CMYK", width, height).save(
            buffer, "JPEG", quality=50, exif=exif.tobytes())
    elif kind == "palette_png":  # palette with a transparent entry
        image = _scene("P", width, height)
        image.putpalette([value for index in range(256) for value in (index, 255 - index, 80)])
        image.save(buffer, "PNG", transparency=0, compress_level=9)
    elif kind == "rgb_tiff":
        _scene("RGB", width, height).save(buffer, "TIFF", compression="tiff_adobe_deflate")
    elif kind == "rgba_tiff":
        _scene("RGBA", width, height).save(buffer, "TIFF", compression="tiff_adobe_deflate")
    elif kind in ("animated_gif", "animated_png"):
        base = _scene("P", width, height)
        base.putpalette([value for index in range(256) for value in (index, 255 - index, 80)])
        others = []
        for number in range(1, frames):
            frame = base.copy()
            frame.paste(number + 5, (0, 0, width // 2, height // 2))
            others.append(frame)
        options: dict[str, Any] = {"save_all": True, "append_images": others, "duration": 100, "loop": 0}
        if kind == "animated_gif":
            base.save(buffer, "GIF", transparency=0, **options)
        else:
            base.save(buffer, "PNG", compress_level=9, **options)
    else:
        raise ValueError(kind)
    return buffer.getvalue()


KINDS = ("rgba_png", "rgb48_png", "gray16_png", "cmyk_jpeg", "rgb_jpeg", "rotated_jpeg", "rotated_cmyk_jpeg",
         "palette_png", "rgb_tiff", "rgba_tiff", "animated_gif", "animated_png")
PATHS = ("prepare", "prepare_decoded_before", "pixels", "to_rgb", "picture")


if __name__ == "__main__":
    if sys.argv[1] == "generate":  # generate KIND WIDTH HEIGHT OUT
        Path(sys.argv[5]).write_bytes(generate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    elif sys.argv[1] == "concurrent":  # concurrent FILE THREADS
        print(json.dumps(run_concurrently(Path(sys.argv[2]), int(sys.argv[3]))))
    else:
        print(json.dumps(run_path(sys.argv[1], Path(sys.argv[2]).read_bytes())))
