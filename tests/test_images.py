"""Image loading, validation and cropping: the bad-input corpus, URL loading over real HTTP, crop maths."""

from __future__ import annotations

import http.server
import io
import os
import struct
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pillow_heif  # test dependency: encodes HEIC (Windmill itself only decodes, with pi-heif)
import pytest
from PIL import Image, ImageFile

from tests.unprivileged import as_nobody, open_folder
from windmill.images import (
    BadImage,
    CropBox,
    PreparedImage,
    clamp_crop,
    crop_box_to_image_coords,
    crop_for_service,
    crop_jpeg,
    crop_normalized_to_image_coords,
    crop_to_image_coords,
    face_prediction_to_image,
    load_image_bytes,
    pose_prediction_to_image,
    prepare_image,
    read_image_file,
)
from windmill.images.validate import prepare_image_and_pixels

# ---------------------------------------------------------------------------------------------
# Generated inputs


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(width: int = 64, height: int = 48) -> Image.Image:
    """Left half red, right half blue: enough structure to see rotations and crops."""
    image = Image.new("RGB", (width, height), (220, 20, 20))
    image.paste((20, 20, 220), (width // 2, 0, width, height))
    return image


def heic(image: Image.Image, **options: object) -> bytes:
    """A HEIC as a phone writes it, encoded by pillow-heif's own API (it stays unregistered with Pillow, so
    what reads it in Windmill is pi-heif's opener alone)."""
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=90, **options)
    return buffer.getvalue()


def rotated_heic() -> bytes:
    """A phone's portrait shot: pillow-heif turns the EXIF orientation into the HEIF rotation (`irot`)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Apple"
    return heic(photo(64, 48), exif=exif.tobytes())


def noisy_jpeg(size: int = 256) -> bytes:
    return encoded(Image.effect_noise((size, size), 60).convert("RGB"), "JPEG", quality=95)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A 1-bit grayscale PNG declaring huge dimensions: a bomb that costs nothing to make."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def png_48bit(width: int, height: int) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one): every pixel orange."""
    row = b"\x00" + b"\xff\xff\x80\x00\x00\x00" * width
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(row * height))
        + png_chunk(b"IEND", b"")
    )


def rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "Canon"
    return encoded(photo(64, 48), "JPEG", exif=exif, quality=95)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ((0, 200, 0), (200, 0, 0), (0, 0, 200))]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def write(data: bytes, name: str = "image.jpg") -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path

    return build


def dangling_symlink(folder: Path) -> Path:
    link = folder / "gone.jpg"
    link.symlink_to(folder / "never-existed.jpg")
    return link


def directory(folder: Path) -> Path:
    path = folder / "photos.jpg"
    path.mkdir()
    return path


def unreadable(folder: Path) -> Path:
    path = folder / "secret.jpg"
    path.write_bytes(encoded(photo(), "JPEG"))
    path.chmod(0)
    return path


def fifo(folder: Path) -> Path:
    path = folder / "pipe.jpg"
    os.mkfifo(path)
    return path


def missing(folder: Path) -> Path:
    return folder / "nothing-here.jpg"


OK = "ok"
BAD = "bad"


def case(name, build, outcome, expected, options=None, marks=()):
    """One corpus entry: OK with (size, output format, change note or None for passthrough), or BAD with a reason."""
    return pytest.param(build, options or {}, outcome, expected, id=name, marks=marks)


CORPUS = [
    case("plain-jpeg", write(encoded(photo(), "JPEG")), OK, ((64, 48), "JPEG", None)),
    case("plain-png", write(encoded(photo(), "PNG"), "a.png"), OK, ((64, 48), "PNG", None)),
    case("webp", write(encoded(photo(), "WEBP"), "a.webp"), OK, ((64, 48), "WEBP", None)),
    case("truncated-jpeg", write(noisy_jpeg()[: len(noisy_jpeg()) // 2]), BAD, "truncated"),
    case("zero-byte", write(b""), BAD, "empty (0 bytes)"),
    case("text-named-jpg", write(b"just some notes, not a picture\n"), BAD, "text, not an image"),
    # The first bytes of a JPEG or PNG and nothing readable after them (once called text)
    case("jpeg-two-bytes", write(b"\xff\xd8"), BAD,
         "JPEG image is truncated or corrupt: its header cannot be read (2 bytes)"),
    case("png-signature-only", write(b"\x89PNG\r\n\x1a\n", "stub.png"), BAD, "PNG image is truncated or corrupt"),
    case("html-named-png", write(b"<!DOCTYPE html><html><body>404</body></html>", "x.png"), BAD, "HTML page"),
    case("bomb-png-huge", write(png_header_only(50_000, 50_000), "bomb.png"), BAD, "decompression bomb"),
    case("bomb-png-over-limit", write(png_header_only(10_000, 10_000), "bomb.png"), BAD, "decompression bomb"),
    case(
        "over-pixel-limit",
        write(encoded(photo(100, 100), "PNG"), "big.png"),
        BAD,
        "over the limit of 5000",
        options={"max_pixels": 5_000},
    ),
    case(
        "over-size-cap",
        write(encoded(photo(), "BMP"), "big.bmp"),
        BAD,
        "over the 1000 bytes limit",
        options={"max_bytes": 1_000},
    ),
    case(
        "cmyk-jpeg",
        write(encoded(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG")),
        OK,
        ((30, 20), "JPEG", "CMYK → RGB"),
    ),
    case(
        "16-bit-gray-png",
        write(encoded(Image.fromarray(np.full((20, 30), 40_000, np.uint16)), "PNG"), "g.png"),
        OK,
        ((30, 20), "JPEG", "I;16 → 8-bit RGB"),
    ),
    case("16-bit-rgb-png", write(png_48bit(30, 20), "deep.png"), OK, ((30, 20), "JPEG", "16-bit PNG → 8-bit")),
    case(
        "rgba-png",
        write(encoded(Image.new("RGBA", (30, 20), (0, 0, 0, 0)), "PNG"), "a.png"),
        OK,
        ((30, 20), "JPEG", "alpha flattened over white"),
    ),
    case("palette-gif", write(encoded(photo().convert("P"), "GIF"), "p.gif"), OK, ((64, 48), "JPEG", "P → RGB")),
    case("animated-gif", write(animated_gif(), "anim.gif"), OK, ((40, 30), "JPEG", "first frame of 3")),
    case("exif-rotated-jpeg", write(rotated_jpeg()), OK, ((48, 64), "JPEG", "EXIF orientation 6")),
    case("bmp", write(encoded(photo(), "BMP"), "a.bmp"), OK, ((64, 48), "JPEG", "BMP → JPEG")),
    case("heic", write(heic(photo()), "IMG_0001.HEIC"), OK, ((64, 48), "JPEG", "HEIF → JPEG")),
    case("heic-rotated-by-the-phone", write(rotated_heic(), "IMG_0002.heic"), OK, ((48, 64), "JPEG", "HEIF → JPEG")),
    case("avif", write(encoded(photo(), "AVIF"), "a.avif"), OK, ((64, 48), "JPEG", "AVIF → JPEG")),
    case("truncated-heic", write(heic(photo())[:-40], "cut.heic"), BAD, "HEIF image is truncated"),
    case("heic-header-only", write(heic(photo())[:40], "stub.heic"), BAD, "HEIC image is truncated or corrupt"),
    case("truncated-avif", write(encoded(photo(), "AVIF")[:-10], "cut.avif"), BAD, "AVIF image is truncated"),
    case("mp4-named-heic", write(b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(64), "v.heic"),
         BAD, "unsupported ISO media file (brand 'mp42'"),
    case("grayscale-jpeg", write(encoded(photo().convert("L"), "JPEG")), OK, ((64, 48), "JPEG", None)),
    case("grayscale-png", write(encoded(photo().convert("L"), "PNG"), "g8.png"), OK, ((64, 48), "PNG", None)),
    case("grayscale-bmp", write(encoded(photo().convert("L"), "BMP"), "g.bmp"), OK, ((64, 48), "JPEG", "BMP → JPEG")),
    case(
        "unicode-and-spaces", write(encoded(photo(), "JPEG"), "mañana café 🐶 photo.jpg"), OK, ((64, 48), "JPEG", None)
    ),
    case("missing-path", missing, BAD, "not found"),
    case("dangling-symlink", dangling_symlink, BAD, "dangling symlink"),
    case("directory", directory, BAD, "is a directory"),
    case("fifo", fifo, BAD, "not a regular file (a FIFO)"),
]


def load_and_prepare(path: Path, **options: object) -> PreparedImage:
    load_options = {key: options.pop(key) for key in ("max_bytes", "roots") if key in options}
    return prepare_image(load_image_bytes(str(path), None, **load_options), **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(("build", "options", "outcome", "expected"), CORPUS)
def test_every_corpus_input_has_a_defined_outcome(tmp_path, build, options, outcome, expected):
    path = build(tmp_path)
    if outcome == BAD:
        with pytest.raises(BadImage) as failure:
            load_and_prepare(path, **dict(options))
        assert expected in failure.value.reason
        assert "\n" not in failure.value.reason
        assert failure.value.retryable is False
        return
    size, fmt, change = expected
    prepared = load_and_prepare(path, **dict(options))
    assert (prepared.width, prepared.height) == size
    assert prepared.format == fmt
    assert prepared.filename == f"image.{prepared.filename_ext}"
    pixels = prepared.to_rgb()
    assert pixels.mode == "RGB" and pixels.size == size
    if change is None:
        assert prepared.passed_through and prepared.data == path.read_bytes()
    else:
        assert any(change in note for note in prepared.changes), prepared.changes
        assert Image.open(io.BytesIO(prepared.data)).format == "JPEG"


def test_an_unreadable_file_is_refused_with_its_reason() -> None:
    with open_folder() as folder:
        path = unreadable(folder)
        with as_nobody(), pytest.raises(BadImage) as failure:  # root reads any file regardless of its mode
            load_and_prepare(path)
    assert "permission denied" in failure.value.reason and "\n" not in failure.value.reason
    assert failure.value.retryable is False


def test_exif_rotation_swaps_dimensions_and_keeps_pixels_upright():
    prepared = prepare_image(rotated_jpeg())
    assert prepared.size == (48, 64)
    pixels = prepared.to_rgb()
    # Orientation 6: the red left half ends up on top.
    top, bottom = pixels.getpixel((24, 5)), pixels.getpixel((24, 58))
    assert top[0] > 150 and top[2] < 100
    assert bottom[2] > 150 and bottom[0] < 100
    reencoded = Image.open(io.BytesIO(prepared.data)).getexif()
    assert 0x0112 not in reencoded and reencoded.get(0x010F) == "Canon"


def test_a_tiff_whose_description_is_too_long_for_a_jpegs_exif_is_still_sent():
    # OME-TIFF and ImageJ keep their XML in ImageDescription: over the 64 KiB a JPEG's EXIF holds, every encode
    # failed ("EXIF data is too long"), and every service's job of the image went dead with no row.
    prepared = prepare_image(encoded(Image.new("RGB", (64, 64), (10, 200, 30)), "TIFF", description="C" * 300_000))
    with Image.open(io.BytesIO(prepared.data)) as sent:
        assert sent.format == "JPEG" and sent.size == (64, 64) and 0x010E not in sent.getexif()


@pytest.mark.parametrize(
    ("data", "pixel", "expected"),
    [
        (encoded(Image.new("RGBA", (10, 10), (0, 0, 0, 0)), "PNG"), (5, 5), (255, 255, 255)),
        (encoded(Image.new("RGBA", (10, 10), (0, 0, 255, 255)), "PNG"), (5, 5), (0, 0, 255)),
        (animated_gif(), (5, 5), (0, 200, 0)),
        (png_48bit(4, 4), (1, 1), (255, 128, 0)),
        (encoded(Image.fromarray(np.full((4, 4), 0x8000, np.uint16)), "PNG"), (1, 1), (128, 128, 128)),
    ],
    ids=["transparent-over-white", "opaque-kept", "first-gif-frame", "48-bit-scaled", "16-bit-gray-scaled"],
)
def test_conversions_keep_the_visible_colour(data, pixel, expected):
    actual = prepare_image(data).to_rgb().getpixel(pixel)
    assert all(abs(a - e) <= 3 for a, e in zip(actual, expected, strict=True)), actual


@pytest.mark.parametrize("data", [heic(photo()), rotated_heic(), encoded(photo(), "AVIF")],
                         ids=["heic", "heic-rotated", "avif"])
def test_phone_formats_become_a_jpeg_of_the_same_picture(data):
    prepared = prepare_image(data)
    sent = Image.open(io.BytesIO(prepared.data))
    assert sent.format == "JPEG" and sent.size == prepared.size
    pixels = prepared.to_rgb()
    width, height = pixels.size
    # Red on the left half, blue on the right — or, for the portrait shot, red on top: rotated exactly once.
    red_at, blue_at = ((width // 4, height // 2), (3 * width // 4, height // 2)) if width > height else (
        (width // 2, height // 4), (width // 2, 3 * height // 4))
    assert all(abs(a - e) <= 12 for a, e in zip(pixels.getpixel(red_at), (220, 20, 20), strict=True))
    assert all(abs(a - e) <= 12 for a, e in zip(pixels.getpixel(blue_at), (20, 20, 220), strict=True))


@pytest.mark.parametrize(
    "data",
    [encoded(photo(), "JPEG"), noisy_jpeg(), encoded(photo().convert("L"), "JPEG"), encoded(photo(), "PNG"),
     encoded(photo(), "WEBP"), rotated_jpeg(), encoded(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"),
     encoded(Image.new("RGBA", (30, 20), (0, 0, 255, 128)), "PNG"), animated_gif(), png_48bit(8, 6)],
    ids=["jpeg", "noisy-jpeg", "grayscale-jpeg", "png", "webp", "exif-rotated-jpeg", "cmyk-jpeg", "rgba-png",
         "animated-gif", "48-bit-png"],
)
def test_preparing_with_the_pixels_gives_what_preparing_then_decoding_gives(data):
    """The cropping path decodes an image once (prepare_image_and_pixels); its crops must be cut from the very pixels
    the two steps gave: those of the bytes sent."""
    prepared, pixels = prepare_image_and_pixels(data)
    assert prepared == prepare_image(data)
    expected = prepare_image(data).to_rgb()
    assert pixels.mode == "RGB" and pixels.size == expected.size == prepared.size
    assert pixels.tobytes() == expected.tobytes()


def test_preparing_with_the_pixels_refuses_what_preparing_refuses():
    truncated = noisy_jpeg()[: len(noisy_jpeg()) // 2]
    with pytest.raises(BadImage, match="truncated"):
        prepare_image_and_pixels(truncated)


def test_passthrough_is_byte_identical():
    original = encoded(photo(), "PNG")
    prepared = prepare_image(original)
    assert prepared.data is original
    assert prepared.mime == "image/png" and prepared.filename == "image.png"


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The formats of the images whose pixels Pillow decodes from now on (ImageFile.load, which every decode
    goes through)."""
    seen: list[str] = []
    original = ImageFile.ImageFile.load

    def load(image: ImageFile.ImageFile) -> Any:
        seen.append(str(image.format))
        return original(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen


def test_a_jpeg_decoded_before_is_sent_as_it_would_be_without_a_decode(decodes: list[str]) -> None:
    original = noisy_jpeg()
    prepared = prepare_image(original)
    assert decodes == ["JPEG"]
    again = prepare_image(original, decoded_before=True)
    assert decodes == ["JPEG"], "a JPEG sent as it is whose pixels were decoded before is not decoded again"
    assert again == prepared and again.data is original


@pytest.mark.parametrize(("data", "why"), [
    (noisy_jpeg() + b"trailer", "a stream that ends after its EOI marker"),
    (rotated_jpeg(), "an EXIF rotation to apply: re-encoded"),
    (encoded(photo(), "PNG"), "not a JPEG"),
])
def test_an_image_decoded_before_is_decoded_when_it_is_not_a_jpeg_sent_as_it_ends(
        decodes: list[str], data: bytes, why: str) -> None:
    trusted = prepare_image(data, decoded_before=True)
    decoded_then = len(decodes)
    assert trusted == prepare_image(data), why
    assert decoded_then > 0 and len(decodes) == 2 * decoded_then, why


@pytest.mark.parametrize(("data", "opens"), [(noisy_jpeg(), 1), (encoded(photo(), "PNG"), 2)])
def test_a_jpeg_is_opened_once_as_its_verify_checks_nothing(
        monkeypatch: pytest.MonkeyPatch, data: bytes, opens: int) -> None:
    """A PNG is verified (its CRCs), which spends the opened image, and opened again; a JPEG is opened once."""
    opened: list[str] = []
    image_open = Image.open
    monkeypatch.setattr(Image, "open", lambda *args, **kwargs: opened.append("open") or image_open(*args, **kwargs))
    assert prepare_image(data).data is data
    assert len(opened) == opens


def test_a_jpeg_cut_short_since_its_decode_is_still_refused() -> None:
    truncated = noisy_jpeg()[: len(noisy_jpeg()) // 2]
    with pytest.raises(BadImage, match="truncated"):
        prepare_image(truncated, decoded_before=True)


def test_an_original_over_the_send_limit_is_reencoded_then_refused_if_still_too_big():
    png = encoded(Image.effect_noise((128, 128), 40).convert("RGB"), "PNG")
    smaller = prepare_image(png, max_send_bytes=len(png) - 1)
    assert smaller.format == "JPEG" and len(smaller.data) < len(png)
    with pytest.raises(BadImage, match="even as a JPEG"):
        prepare_image(png, max_send_bytes=100)


# ---------------------------------------------------------------------------------------------
# Path confinement


@pytest.fixture
def rooted(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    jpeg = encoded(photo(), "JPEG")
    (root / "sub" / "in.jpg").write_bytes(jpeg)
    (outside / "out.jpg").write_bytes(jpeg)
    (root / "link-out.jpg").symlink_to(outside / "out.jpg")
    (root / "link-in.jpg").symlink_to(root / "sub" / "in.jpg")
    (root / "dir-out").symlink_to(outside)
    return root, outside


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("sub/in.jpg", None),
        ("link-in.jpg", None),
        ("sub/../sub/in.jpg", None),
        ("../outside/out.jpg", "outside the allowed image roots"),
        ("sub/../../outside/out.jpg", "outside the allowed image roots"),
        ("link-out.jpg", "outside the allowed image roots"),
        ("dir-out/out.jpg", "outside the allowed image roots"),
        ("../outside/does-not-exist.jpg", "outside the allowed image roots"),
        ("sub/missing.jpg", "not found"),
    ],
)
def test_image_paths_stay_inside_the_roots(rooted, relative, expected):
    root, _outside = rooted
    path = f"{root}/{relative}"
    if expected is None:
        assert load_image_bytes(path, None, roots=[root]).startswith(b"\xff\xd8")
    else:
        with pytest.raises(BadImage, match=expected):
            load_image_bytes(path, None, roots=[root])


def test_without_roots_any_readable_path_is_allowed(rooted):
    _root, outside = rooted
    assert load_image_bytes(outside / "out.jpg", None, roots=None).startswith(b"\xff\xd8")


def test_reading_a_small_image_does_not_allocate_the_size_limit(tmp_path: Path) -> None:
    """Every image of the pipeline is read so: a read asked for the limit (32 MiB) allocated it first."""
    path = tmp_path / "small.jpg"
    path.write_bytes(noisy_jpeg())
    tracemalloc.start()
    try:
        data = read_image_file(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert data == path.read_bytes()
    assert peak < 4 * len(data), f"reading {len(data)} bytes allocated {peak} at the peak"


def test_a_file_that_reports_no_size_is_read_to_its_end() -> None:
    """A file whose size fstat does not know (procfs; or one that grew since) is still read on to its end."""
    data = read_image_file("/proc/self/mountinfo")
    assert len(data) > 0 and data.endswith(b"\n")


def test_neither_path_nor_url_is_a_bad_image():
    with pytest.raises(BadImage, match="neither a path nor a URL"):
        load_image_bytes(None, None)


# ---------------------------------------------------------------------------------------------
# URLs, over real HTTP on loopback

JPEG_BYTES = encoded(photo(), "JPEG")


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/photo.jpg", "/caf%C3%A9%20%F0%9F%90%B6.jpg"):
            self._send(200, JPEG_BYTES, "image/jpeg")
        elif path == "/page.html":
            self._send(200, b"<!doctype html><html><title>Hi</title></html>", "text/html")
        elif path == "/loop":
            self._redirect("/loop")
        elif path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])
            self._redirect(f"/hop/{left - 1}" if left > 0 else "/photo.jpg")
        elif path == "/to-file":
            self._redirect("file:///etc/passwd")
        elif path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(50 * 1024 * 1024))
            self.end_headers()
        elif path == "/chunked-huge":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"\xff" * 4096)
            except OSError:
                pass
        else:
            self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def fetch(url: str, **options: object) -> bytes:
    settings = {"allow_private_urls": True, "timeout": 2.0, **options}
    return load_image_bytes(None, url, **settings)  # type: ignore[arg-type]


def test_a_url_image_downloads(image_server):
    assert fetch(f"{image_server}/photo.jpg") == JPEG_BYTES


def test_a_url_with_unicode_and_spaces_downloads(image_server):
    assert fetch(f"{image_server}/{quote('café 🐶.jpg')}") == JPEG_BYTES


def test_redirects_within_the_limit_are_followed(image_server):
    assert fetch(f"{image_server}/hop/2", max_redirects=3) == JPEG_BYTES


@pytest.mark.parametrize(
    ("path", "options", "reason"),
    [
        ("/nope.jpg", {}, "answered HTTP 404"),
        ("/loop", {}, "redirects in a loop"),
        ("/hop/5", {"max_redirects": 3}, "redirected more than 3 times"),
        ("/to-file", {}, "scheme 'file' is not supported"),
        ("/declared-huge", {}, "over the 32 MiB limit"),
        ("/chunked-huge", {"max_bytes": 100_000}, "more than the 98 KiB limit"),
    ],
)
def test_url_failures_are_bad_images_with_a_reason(image_server, path, options, reason):
    """Permanent refusals; those that may pass (5xx, 429, timeouts) are in tests/test_image_downloads.py."""
    with pytest.raises(BadImage) as failure:
        fetch(f"{image_server}{path}", **options)
    assert reason in failure.value.reason


def test_sizes_past_a_gigabyte_read_as_such() -> None:
    # A lying Content-Length of 10**20 bytes read "sends 9.53674e+13 MiB".
    from windmill.images.errors import describe_size

    assert [describe_size(count) for count in (10**20, 3 * 1024**3, 40 * 1024**2, 5000)] == [
        "90,949,470 TiB", "3 GiB", "40 MiB", "5 KiB"]


def test_an_html_page_at_an_image_url_fails_validation(image_server):
    with pytest.raises(BadImage, match="HTML page"):
        prepare_image(fetch(f"{image_server}/page.html"))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme 'file' is not supported"),
        ("ftp://example.com/photo.jpg", "scheme 'ftp' is not supported"),
        ("example.com/photo.jpg", "no scheme"),
        ("http:///photo.jpg", "no host"),
    ],
)
def test_only_http_urls_are_fetched(url, reason):
    with pytest.raises(BadImage, match=reason):
        load_image_bytes(None, url)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_loopback_urls_are_refused_unless_allowed(image_server, host):
    port = image_server.rsplit(":", 1)[1]
    with pytest.raises(BadImage, match="loopback address; refused"):
        load_image_bytes(None, f"http://{host}:{port}/photo.jpg", allow_private_urls=False, timeout=2.0)


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("10.1.2.3", "private"),
        ("192.168.0.7", "private"),
        ("169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
    ],
)
def test_private_and_link_local_urls_are_refused_without_connecting(address, kind):
    with pytest.raises(BadImage, match=f"a {kind} address"):
        load_image_bytes(None, f"http://{address}/latest/meta-data", timeout=1.0)


def test_a_missing_path_falls_back_to_the_url(tmp_path, image_server):
    data = load_image_bytes(str(tmp_path / "gone.jpg"), f"{image_server}/photo.jpg", allow_private_urls=True)
    assert data == JPEG_BYTES


def test_a_refused_path_does_not_fall_back_to_the_url(tmp_path, image_server):
    (tmp_path / "d").mkdir()
    with pytest.raises(BadImage, match="directory"):
        load_image_bytes(str(tmp_path / "d"), f"{image_server}/photo.jpg", allow_private_urls=True)


# ---------------------------------------------------------------------------------------------
# Cropping and coordinates


@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        ({"x": 10, "y": 5, "width": 20, "height": 10}, CropBox(10, 5, 30, 15)),
        ([10, 5, 20, 10], CropBox(10, 5, 30, 15)),
        ({"x": -8, "y": -3, "width": 20, "height": 10}, CropBox(0, 0, 12, 7)),
        ({"x": 50, "y": 40, "width": 100, "height": 100}, CropBox(50, 40, 64, 48)),
        ({"x": 10.6, "y": 5.2, "width": 9.1, "height": 0.5}, CropBox(10, 5, 20, 6)),
        ({"x": 0, "y": 0, "width": 64, "height": 48}, CropBox(0, 0, 64, 48)),
    ],
    ids=["inside", "list-form", "negative-origin", "past-the-edge", "fractional-widened", "whole-image"],
)
def test_crops_are_clamped_to_the_image(bbox, expected):
    assert clamp_crop(bbox, (64, 48)) == expected


@pytest.mark.parametrize(
    "bbox",
    [
        {"x": 70, "y": 10, "width": 5, "height": 5},
        {"x": -20, "y": -20, "width": 10, "height": 10},
        {"x": 10, "y": 10, "width": 0, "height": 5},
        {"x": 10, "y": 10, "width": float("nan"), "height": 5},
        {"x": 10, "y": 10},
    ],
    ids=["right-of-image", "above-left", "zero-width", "nan", "incomplete"],
)
def test_boxes_without_area_in_the_image_cannot_be_cropped(bbox):
    with pytest.raises(BadImage, match="cannot crop"):
        clamp_crop(bbox, (64, 48))


def test_crop_jpeg_cuts_the_right_pixels():
    prepared = prepare_image(encoded(photo(), "PNG"))
    data, crop = crop_jpeg(prepared, {"x": 40, "y": -10, "width": 100, "height": 20})
    assert crop == CropBox(40, 0, 64, 10)
    cut = Image.open(io.BytesIO(data))
    assert cut.format == "JPEG" and cut.size == (24, 10) and cut.mode == "RGB"
    assert cut.getpixel((12, 5))[2] > 150  # right half of the photo is blue
    upload, same = crop_for_service(prepared.to_rgb(), [0, 0, 16, 16])
    assert same == CropBox(0, 0, 16, 16) and upload.size == (16, 16) and upload.filename == "image.jpg"


def test_crop_accepts_an_rgba_pil_image():
    data, crop = crop_jpeg(Image.new("RGBA", (20, 20), (10, 200, 10, 128)), [5, 5, 5, 5])
    assert Image.open(io.BytesIO(data)).mode == "RGB" and crop.width == 5


CROP = CropBox(left=100, top=50, right=300, bottom=450)  # 200 × 400 inside a 640 × 480 image


@pytest.mark.parametrize(
    ("function", "arguments", "expected"),
    [
        (crop_to_image_coords, (0, 0, CROP), (100, 50)),
        (crop_to_image_coords, (12.5, 7, CROP), (112.5, 57)),
        (crop_normalized_to_image_coords, (0.0, 0.0, CROP), (100.0, 50.0)),
        (crop_normalized_to_image_coords, (0.5, 0.25, CROP), (200.0, 150.0)),
        (crop_normalized_to_image_coords, (1.05, -0.02, CROP), (310.0, 42.0)),
    ],
)
def test_points_translate_from_crop_to_image(function, arguments, expected):
    assert function(*arguments) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("bbox", "clamp_to", "expected"),
    [
        ({"x": 81, "y": 23, "width": 58, "height": 58}, None, {"x": 181, "y": 73, "width": 58, "height": 58}),
        ([-10, 5, 30, 30], None, {"x": 90, "y": 55, "width": 30, "height": 30}),
        ([-150, -60, 200, 100], (640, 480), {"x": 0, "y": 0, "width": 150, "height": 90}),
        ([500, 400, 100, 100], (640, 480), {"x": 600, "y": 450, "width": 40, "height": 30}),
    ],
)
def test_boxes_translate_from_crop_to_image(bbox, clamp_to, expected):
    assert crop_box_to_image_coords(bbox, CROP, clamp_to=clamp_to) == expected


def test_face_predictions_translate_box_and_keypoints():
    face = {
        "label": "face",
        "emoji": "🙂",
        "confidence": 0.91,
        "bbox": {"x": 81, "y": 23, "width": 58, "height": 58},
        "keypoints": {"right_eye": [95, 41], "nose_tip": [108, 55], "broken": "n/a"},
    }
    moved = face_prediction_to_image(face, CROP)
    assert moved["bbox"] == {"x": 181, "y": 73, "width": 58, "height": 58}
    assert moved["bbox_in_crop"] == face["bbox"]
    assert moved["keypoints"] == {"right_eye": [195, 91], "nose_tip": [208, 105], "broken": "n/a"}
    assert moved["confidence"] == 0.91 and face["bbox"]["x"] == 81  # the input is untouched


def test_a_face_the_crop_cut_through_keeps_its_whole_box_inside_the_image():
    # The box reaches 20 px left of the crop and 10 px above it, where its keypoint lies; the image goes on there.
    face = {"label": "face", "bbox": [-20, -10, 60, 60], "keypoints": {"right_eye": [-5, -1]}}
    moved = face_prediction_to_image(face, CROP, (640, 480))
    assert moved["bbox"] == {"x": 80, "y": 40, "width": 60, "height": 60}
    assert moved["keypoints"]["right_eye"] == [95, 49]
    at_the_edge = face_prediction_to_image({"bbox": [-150, -60, 60, 60]}, CROP, (640, 480))
    assert at_the_edge["bbox"] == {"x": 0, "y": 0, "width": 10, "height": 50}


def test_pose_landmarks_become_normalised_to_the_whole_image():
    pose = {
        "landmarks": {
            "nose": {"x": 0.5, "y": 0.25, "z": -0.2, "visibility": 0.94},
            "left_heel": {"x": 1.0, "y": 1.0, "z": 0.1, "visibility": 0.5},
            "odd": {"x": None, "y": 0.1},
        },
        "pose_analysis": {"joint_angles": {"left_elbow": 130.9}},
    }
    moved = pose_prediction_to_image(pose, CROP, (640, 480))
    nose = moved["landmarks"]["nose"]
    assert (nose["x"], nose["y"]) == pytest.approx((200 / 640, 150 / 480), abs=1e-4)
    assert nose["z"] == pytest.approx(-0.2 * 200 / 640, abs=1e-4) and nose["visibility"] == 0.94
    heel = moved["landmarks"]["left_heel"]
    assert (heel["x"], heel["y"]) == pytest.approx((300 / 640, 450 / 480), abs=1e-4)
    assert moved["landmarks"]["odd"] == {"x": None, "y": 0.1}
    assert moved["pose_analysis"] == pose["pose_analysis"]
