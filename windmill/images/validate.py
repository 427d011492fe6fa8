"""Validating image bytes with Pillow and turning them into what every Animal Farm service accepts.

`prepare_image` decodes the whole image once (so truncation and corruption surface here, not in
a service), refuses oversized dimensions before decoding anything, and then either passes the
original bytes through untouched or re-encodes one upright JPEG. The original bytes go out when
they are a JPEG, PNG or WebP of 8-bit RGB or grayscale pixels, single-frame and without an EXIF
rotation to apply (every service reads grayscale; re-encoding it cost quality, and a tenth of a
service worker's CPU when a third of the photographs were black and white); anything else (CMYK,
16-bit, alpha, palette, animation, other formats, a rotation) becomes a JPEG of quality 90 showing
exactly what a viewer would show. Phone photo libraries are read too: AVIF by Pillow itself, HEIC/HEIF through
pi-heif's Pillow plugin (decode-only); no service reads them, so they always go out as JPEG.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from dataclasses import dataclass, field

from PIL import Image, UnidentifiedImageError

from windmill.images.budget import PROCESS_BUDGET, DecodeBudget, Reservation, decode_cost
from windmill.images.errors import BadImage, describe_size
from windmill.images.upright import kept_as_is, orientation_in_header, upright_rgb

try:  # HEIC/HEIF: pi-heif registers its decoder with Pillow (absent only where it has no wheel, e.g. 32-bit ARM)
    from pi_heif import register_heif_opener
except ImportError:  # pragma: no cover - exercised only on platforms without pi-heif
    HEIF_READABLE = False
else:
    register_heif_opener()
    HEIF_READABLE = True

# Pillow's own default limit (Image.MAX_IMAGE_PIXELS): about 0.25 GiB of decoded RGB.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_JPEG_QUALITY = 90
_SMALLER_QUALITIES = (80, 70)  # tried in turn when an image re-encoded at the quality asked for is still too large
# Pillow reports camera multi-picture JPEGs as MPO through its JPEG opener.
ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", *(("HEIF",) if HEIF_READABLE else ()))
_SUPPORTED = "JPEG, PNG, GIF, WebP, BMP, TIFF, AVIF or HEIC"
# The formats sent as they are; MPO is a camera JPEG with extra pictures appended.
_PASS_THROUGH = {
    "JPEG": ("JPEG", "image/jpeg", "jpg"),
    "MPO": ("JPEG", "image/jpeg", "jpg"),
    "PNG": ("PNG", "image/png", "png"),
    "WEBP": ("WEBP", "image/webp", "webp"),
}
# Pixel modes sent as they are; every other mode is converted to RGB.
_SENT_MODES = ("RGB", "L")
_ORIENTATION_TAG = 0x0112
_DESCRIPTION_TAG = 0x010E  # ImageDescription
_JPEG_EXIF_BYTES = 65_527  # an APP1 segment (65,533 bytes) less its "Exif\0\0" header
_JPEG_EOI = b"\xff\xd9"  # the marker that ends a JPEG stream
# Formats whose Pillow verify() checks nothing (ImageFile.verify only closes the file; JpegImageFile and its MPO
# subclass add no check): they are opened once, not probed and opened again (a header parse, 0.015 ms each).
_VERIFIED_BY_DECODE = ("JPEG", "MPO")
_SNIFF_BYTES = 512
# The `ftyp` brands of HEIF still images (ISO/IEC 23008-12), as phones write them.
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1")
_AVIF_BRANDS = (b"avif", b"avis")

# Image.open checks the pixel count against Pillow's global limit and *warns* between one and
# two times that limit. Our own limit decides instead, so the warning is silenced while opening;
# catch_warnings swaps process-wide state, hence the lock (held only while headers are parsed).
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class PreparedImage:
    """Image bytes ready to send: a JPEG, PNG or WebP of upright 8-bit RGB or grayscale pixels."""

    data: bytes = field(repr=False)
    format: str
    width: int
    height: int
    mime: str
    filename_ext: str
    source_format: str = ""
    # What was done to the original, e.g. ("EXIF orientation 6 applied", "CMYK → RGB"); empty = passed through.
    changes: tuple[str, ...] = ()

    @property
    def filename(self) -> str:
        """The upload's filename: the services check its extension, so it always has the right one."""
        return f"image.{self.filename_ext}"

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def passed_through(self) -> bool:
        return not self.changes

    def to_rgb(self, budget: DecodeBudget | None = None, *, longest_side: int | None = None) -> Image.Image:
        """Decode the pixels (RGB, upright) afresh; decode once and reuse it when cropping many boxes. The decode
        takes its share of `budget` (the process's by default), which the pixels keep until they are dropped.

        `longest_side`: the pixels scaled down to fit it (a picture to show): a JPEG is decoded at the smallest of
        libjpeg's scales (1/2 to 1/8) that is at least that size, not in full (an image at the pixel limit shown
        1600 pixels wide: 22 MB at 1/4 scale instead of 342)."""
        image = _open(self.data, max_pixels=max(self.width * self.height, 1))
        if longest_side is not None and (shrink := longest_side / max(image.size)) < 1:
            image.draft(image.mode, (max(1, math.ceil(image.width * shrink)), max(1, math.ceil(image.height * shrink))))
        try:
            share = (budget or PROCESS_BUDGET).reserve(
                decode_cost(image.mode, image.size, image_format=str(image.format), to_rgb=True), lambda: _named(image))
        except BaseException:
            image.close()
            raise
        try:
            image.load()
            pixels = _rgb_pixels(image)
        except BaseException:
            image.close()
            share.release()
            raise
        if pixels is not image:
            image.close()
        if longest_side is not None:
            pixels.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
        share.keep_for(pixels)
        return pixels


def prepared_jpeg(data: bytes, width: int, height: int, *, changes: tuple[str, ...] = (),
                  source_format: str = "JPEG") -> PreparedImage:
    """Wrap JPEG bytes this process encoded itself (a crop, a re-encoded image) without decoding them again."""
    return PreparedImage(
        data=data,
        format="JPEG",
        width=width,
        height=height,
        mime="image/jpeg",
        filename_ext="jpg",
        source_format=source_format,
        changes=changes,
    )


def prepare_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_send_bytes: int | None = None,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    decoded_before: bool = False,
    budget: DecodeBudget | None = None,
) -> PreparedImage:
    """Validate `data` and return what to send; any problem is a `BadImage` with a one-line reason.

    `max_send_bytes`: when the original is larger than this (the services of 2025 refuse uploads
    over 8 MiB), it is re-encoded as JPEG; if even that is too large, the image is refused.
    `decoded_before`: a service already answered on this image (so its pixels were decoded, by another process
    perhaps): a JPEG sent as it is is not decoded again (see _prepare).
    `budget`: the memory the process's decodes share (the process's by default): the decode waits for its share, and
    an image whose decode alone would take more than all of it is refused before a pixel is decoded.
    """
    return _prepare(data, max_pixels=max_pixels, max_send_bytes=max_send_bytes, jpeg_quality=jpeg_quality,
                    keep_pixels=False, decoded_before=decoded_before, budget=budget)[0]


def prepare_image_and_pixels(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_send_bytes: int | None = None,
                             budget: DecodeBudget | None = None) -> tuple[PreparedImage, Image.Image]:
    """`prepare_image`, and the pixels its `to_rgb` gives, for cropping. An image sent as it is gets one full decode,
    which both proves it whole and gives the pixels: preparing it, then decoding it to crop, cost a reduced decode,
    a full one and a copy of the pixels (about twice the CPU)."""
    prepared, pixels = _prepare(data, max_pixels=max_pixels, max_send_bytes=max_send_bytes,
                                jpeg_quality=DEFAULT_JPEG_QUALITY, keep_pixels=True, budget=budget)
    return prepared, pixels if pixels is not None else prepared.to_rgb(budget)


def _prepare(data: bytes, *, max_pixels: int, max_send_bytes: int | None, jpeg_quality: int, keep_pixels: bool,
             decoded_before: bool = False, budget: DecodeBudget | None = None
             ) -> tuple[PreparedImage, Image.Image | None]:
    """prepare_image; with `keep_pixels`, the image decoded in full and, when it is sent as it is, its RGB pixels."""
    if not data:
        raise BadImage("the image is empty (0 bytes)")
    probe = _open(data, max_pixels=max_pixels)
    source_format = str(probe.format)
    if source_format in _VERIFIED_BY_DECODE:
        opened = probe
    else:
        with probe:
            try:
                probe.verify()  # structure and checksums (PNG CRCs) without decoding pixels
            except Exception as problem:  # Pillow reports corruption with many exception types
                raise _corrupt(source_format, problem) from None
        opened = _open(data, max_pixels=max_pixels)  # a verified image cannot be loaded: opened again
    pixels: Image.Image | None = None
    image: Image.Image | None = None
    share: Reservation | None = None
    try:
        full_size = opened.size
        # Read from the header: a PNG's EXIF may follow its pixels, and reading it there decodes them all (before the
        # decode's share is reserved), so such a PNG is reckoned as one that will be turned.
        upright = orientation_in_header(opened) == 1
        # An upright RGB JPEG is sent as it is: its pixels are only decoded to prove the stream is whole, and a
        # 1/8-scale decode (libjpeg's DCT scaling) reads every byte of it for an eighth of the work.
        reduced = (not keep_pixels and source_format == "JPEG" and opened.mode in _SENT_MODES
                   and upright and (max_send_bytes is None or len(data) <= max_send_bytes))
        # Even at 1/8 scale the decode reads every entropy-coded byte: about 0.35 ms of a 640 × 480 scene, most of
        # the caption scorer's CPU per image. When a service has answered on the image (its caption), its pixels
        # were decoded already; a file cut short since is still caught (its stream no longer ends with EOI), and
        # one that ends otherwise (a trailer after EOI) is decoded as before.
        decode = not (reduced and decoded_before and data.endswith(_JPEG_EOI))
        if reduced and decode:
            opened.draft(opened.mode, (max(1, opened.width // 8), max(1, opened.height // 8)))
        if decode:
            # Reserved from the header, before a pixel is decoded: waits while the process's other decodes hold
            # the budget; refused (BadImage) when this decode alone would take more than all of it.
            cost = decode_cost(opened.mode, full_size, image_format=source_format, reduced=reduced,
                               converted=not (upright and kept_as_is(opened)), to_rgb=keep_pixels)
            share = (budget or PROCESS_BUDGET).reserve(cost, lambda: _named(opened))
        try:
            if decode:
                opened.load()  # the decode: truncated files fail here
            # MPO is a camera JPEG whose first picture is the photo: Pillow calls it animated.
            frames = 1 if source_format == "MPO" else _frame_count(opened)
            image, changes = upright_rgb(opened)  # closes `opened` when it returns another image
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as problem:
            # The warning arrives as an exception only when warnings are errors (tests).
            raise BadImage(f"image refused as a decompression bomb: {problem}") from None
        except Exception as problem:  # Pillow reports corruption with many exception types
            raise _corrupt(source_format, problem) from None
        if frames > 1:
            changes.append(f"first frame of {frames}")
        if source_format == "PNG" and opened.mode == "RGB" and _png_bit_depth(data) == 16:
            changes.append("16-bit PNG → 8-bit")
        if source_format not in _PASS_THROUGH:
            changes.append(f"{source_format} → JPEG")
        if not changes and max_send_bytes is not None and len(data) > max_send_bytes:
            changes.append(f"re-encoded to fit {max_send_bytes} bytes")

        width, height = full_size if reduced else image.size
        if not changes:
            out_format, mime, extension = _PASS_THROUGH[source_format]
            if keep_pixels:  # the bytes sent are the bytes decoded: these are the pixels to_rgb would decode
                pixels = _rgb_pixels(image)
            prepared = PreparedImage(
                data=data,
                format=out_format,
                width=width,
                height=height,
                mime=mime,
                filename_ext=extension,
                source_format=source_format,
            )
            return prepared, pixels
        # A colour profile stays valid only when the pixels kept their colour space.
        icc_profile = opened.info.get("icc_profile") if opened.mode in _SENT_MODES else None
        # Too large for the services at the quality asked for: lower qualities, never fewer pixels (the boxes the
        # services answer are in the pixels they were sent, which crops are cut from).
        for quality in (jpeg_quality, *(step for step in _SMALLER_QUALITIES if step < jpeg_quality)):
            encoded = encode_jpeg(image, quality=quality, icc_profile=icc_profile,
                                  exif=_exif_without_orientation(image))
            if max_send_bytes is None or len(encoded) <= max_send_bytes:
                break
    finally:
        # Closing an image makes it unusable: the one handed out as the pixels stays open (it reads from memory).
        if pixels is not opened:
            opened.close()
        # Nor the upright copy: a failure raised from here (too large even as JPEG, an encoder's error) keeps this
        # frame in its traceback, and the image cache keeps a bad image's failure for 30 s. Closed first, its
        # memory goes before its share of the budget does.
        if image is not None and image is not pixels and image is not opened:
            image.close()
        if share is not None:
            if pixels is not None:
                share.keep_for(pixels)  # until the caller drops them
            else:
                share.release()

    if max_send_bytes is not None and len(encoded) > max_send_bytes:
        raise BadImage(
            f"image is {describe_size(len(encoded))} even as a JPEG of quality {quality},"
            f" over the {describe_size(max_send_bytes)} the services take (WINDMILL_SERVICE_MAX_BYTES)"
        )
    return prepared_jpeg(encoded, width, height, changes=tuple(changes), source_format=source_format), None


def _rgb_pixels(image: Image.Image) -> Image.Image:
    """Decoded upright pixels (RGB or L) as RGB. An RGB image is handed out as it is, not copied: copying cost as much
    as half its decode."""
    return image if image.mode == "RGB" else image.convert("RGB")


def encode_jpeg(
    image: Image.Image, *, quality: int = DEFAULT_JPEG_QUALITY, icc_profile: bytes | None = None, exif: bytes = b""
) -> bytes:
    """An RGB image as baseline JPEG bytes."""
    buffer = io.BytesIO()
    options: dict[str, object] = {"quality": quality}
    if icc_profile:
        options["icc_profile"] = icc_profile
    if exif:
        options["exif"] = exif
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def _open(data: bytes, *, max_pixels: int) -> Image.Image:
    """Identify the image among the accepted formats and refuse it before decoding if it is too big."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise BadImage(_unidentified(data)) from None
    except Image.DecompressionBombError as problem:
        raise BadImage(f"image refused as a decompression bomb: {problem}") from None
    except Exception as problem:
        raise BadImage(f"cannot read the image header: {type(problem).__name__}: {problem}") from None
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise BadImage(f"image has no pixels ({width}×{height})")
    if width * height > max_pixels:
        image.close()
        raise BadImage(
            f"image is {width}×{height} = {width * height} pixels, over the limit of {max_pixels}"
            " (possible decompression bomb)"
        )
    return image


def _named(image: Image.Image) -> str:
    """An image as a refusal names it: `9459×9459 RGBA PNG`."""
    return f"{image.width}×{image.height} {image.mode} {image.format or ''}".rstrip()


def _corrupt(source_format: str, problem: BaseException) -> BadImage:
    text = str(problem) or type(problem).__name__
    if "truncated" in text.lower() or "end of file" in text.lower() or isinstance(problem, EOFError):
        return BadImage(f"{source_format} image is truncated: {text}")
    return BadImage(f"{source_format} image is corrupt: {text}")


# The first bytes of the formats people hand us most, for a file Pillow cannot open: named as that format cut short
# or corrupt, rather than guessed to be text (a JPEG cut after its two first bytes once was).
_SIGNATURES = ((b"\xff\xd8", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _unidentified(data: bytes) -> str:
    head = data[:_SNIFF_BYTES]
    stripped = head.lstrip().lower()
    supported = _SUPPORTED
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in stripped):
        return f"SVG is not supported (expected {supported})"
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return f"the data is an HTML page, not an image (expected {supported})"
    if head.startswith(b"%PDF"):
        return f"the data is a PDF document, not an image (expected {supported})"
    if head[4:8] == b"ftyp":  # an ISO media file (HEIC, AVIF, MP4…) that no opener could read
        brand = head[8:12]
        if brand in _HEIF_BRANDS and not HEIF_READABLE:
            return "HEIC images need pi-heif, which has no wheel for this platform (install libheif-dev, then pi-heif)"
        if brand in _HEIF_BRANDS or brand in _AVIF_BRANDS:
            kind = "HEIC" if brand in _HEIF_BRANDS else "AVIF"
            return f"{kind} image is truncated or corrupt: its header cannot be read"
        return f"unsupported ISO media file (brand {brand.decode('ascii', 'replace')!r}; expected {supported})"
    for signature, kind in _SIGNATURES:  # an image's first bytes, and too little or broken after them
        if head.startswith(signature):
            return f"{kind} image is truncated or corrupt: its header cannot be read ({len(data)} bytes)"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as problem:
            if problem.start < len(head) - 4:  # not merely a character cut by the sniff window
                return f"unrecognised image format (expected {supported})"
        return f"the data is text, not an image (expected {supported})"
    return f"unrecognised image format (expected {supported})"


def _frame_count(image: Image.Image) -> int:
    if not getattr(image, "is_animated", False):
        return 1
    frames = int(getattr(image, "n_frames", 1))
    image.seek(0)
    return frames


def _exif_without_orientation(image: Image.Image) -> bytes:
    """The EXIF block to keep in a re-encoded JPEG (camera data matters to the metadata service). A JPEG holds at
    most _JPEG_EXIF_BYTES of it: a TIFF's long ImageDescription (OME-TIFF and ImageJ keep their XML there) made
    every encode fail ("EXIF data is too long"), so the description goes, and the whole block if that is not
    enough."""
    try:
        exif = image.getexif()
        if _ORIENTATION_TAG in exif:
            del exif[_ORIENTATION_TAG]
        block = exif.tobytes() if len(exif) else b""
        if len(block) > _JPEG_EXIF_BYTES and _DESCRIPTION_TAG in exif:
            del exif[_DESCRIPTION_TAG]
            block = exif.tobytes() if len(exif) else b""
        return block if len(block) <= _JPEG_EXIF_BYTES else b""
    except Exception:
        return b""


def _png_bit_depth(data: bytes) -> int:
    """The IHDR bit depth: Pillow reads 48-bit RGB as 8-bit "RGB", so only the header tells."""
    if data[12:16] == b"IHDR" and len(data) > 24:
        return data[24]
    return 8
