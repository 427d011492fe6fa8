"""Image bytes → a decoded image, and a small cache of decoded images shared by the services of one process.

One upload reaches every service: its header is read by each, and several decode its pixels (metadata at half
size, colors and the captioners at a reduced JPEG scale). Decoding is the services' input, not their answer,
so `DecodedImages` keeps the last few decodings by (image digest, scale): every answer is still computed per
request from those pixels (with `farm serve --no-cache` too); only the decoding is shared. The cache is bounded
in entries and in pixels, and holds only what decoded cleanly: a broken file fails anew for each request.
Cached images are shared between threads and must be treated as read-only (convert, crop and resize make
copies; EXIF is read under `EXIF_LOCK`, as Pillow loads it lazily into the image).
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image, UnidentifiedImageError

from windmill.simfarm.inputs import Picture

MAX_ENTRIES = 128
MAX_PIXELS = 24_000_000  # ~100 MB of RGBA pixels; an undecoded (header-only) entry counts as none
EXIF_LOCK = threading.Lock()  # Image.getexif fills the image's EXIF on first use: two threads must not both do it
_JPEG_END = b"\xff\xd9"  # EOI: inside the entropy-coded data an 0xFF byte is always followed by 0x00 or RST

Decoded = tuple[Image.Image, str, tuple[int, int]]  # image, its format, its own size


class Undecodable(Exception):
    """The bytes are not an image Pillow can decode."""


def decode(picture: Picture, at_least: tuple[int, int] | None = None, *, pixels: bool = True,
           shrink: int = 1) -> Decoded:
    """The image (at the smallest JPEG scale still `at_least` this size, or else 1/`shrink` of its own; None and 1:
    full size), its format, its own size.

    `pixels=False`: a JPEG that ends with its EOI marker is left undecoded (its header has been read); anything
    else is decoded as with `pixels=True`, so a cut-off or broken file fails with the decoder's own message.
    """
    try:
        image = Image.open(io.BytesIO(picture.data))
        size = image.size
        if pixels or image.format != "JPEG" or not picture.data.endswith(_JPEG_END):
            wanted = at_least or (max(1, size[0] // shrink), max(1, size[1] // shrink))
            image.draft(None, wanted)  # a no-op for formats other than JPEG
            image.load()
    except UnidentifiedImageError:
        where = f"'{picture.path}'" if picture.path else "<_io.BytesIO object>"
        raise Undecodable(f"cannot identify image file {where}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise Undecodable(str(error) or type(error).__name__) from None
    return image, (image.format or "unknown").lower(), size


class DecodedImages:
    """The last decodings by (digest, scale asked for, pixels), least recently used dropped first."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_pixels: int = MAX_PIXELS) -> None:
        self.max_entries = max_entries
        self.max_pixels = max_pixels
        self.decoded = 0  # decodings made rather than taken from the cache
        self._entries: OrderedDict[tuple[object, ...], tuple[Decoded, int]] = OrderedDict()
        self._pixels = 0
        self._lock = threading.Lock()

    def decode(self, picture: Picture, at_least: tuple[int, int] | None = None, *, pixels: bool = True,
               shrink: int = 1) -> Decoded:
        """As `decode`; a picture with a file path (`?file=`) is always decoded anew (its errors name the path)."""
        if picture.path is not None or self.max_entries <= 0:
            return decode(picture, at_least, pixels=pixels, shrink=shrink)
        key = (picture.digest, len(picture.data), at_least, pixels, shrink)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
        # Outside the lock: two threads may both decode once.
        decoded = decode(picture, at_least, pixels=pixels, shrink=shrink)
        image = decoded[0]
        loaded = pixels or image.format != "JPEG" or not picture.data.endswith(_JPEG_END)  # as `decode` decides
        cost = image.width * image.height if loaded else 0
        with self._lock:
            self.decoded += 1
            if key not in self._entries and cost <= self.max_pixels:
                self._entries[key] = (decoded, cost)
                self._pixels += cost
                while len(self._entries) > self.max_entries or self._pixels > self.max_pixels:
                    _, (_, dropped) = self._entries.popitem(last=False)
                    self._pixels -= dropped
        return decoded
