"""The pictures the dashboard shows, read the way workers read them: only the stored path (confined to
WINDMILL_IMAGE_ROOTS) or URL of a known image id — a request never names a file — decoded upright by the same
validation, scaled down and kept in a small cache."""

from __future__ import annotations

import functools
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw

from windmill.images import load_image_bytes, prepare_image
from windmill.images.budget import DecodeBudget
from windmill.settings import Settings

THUMBNAIL_PX = 320
PICTURE_PX = 1600  # the image page's picture: sharp on a large screen, not the 40-megapixel original
CACHE_ENTRIES = 512


@functools.cache
def placeholder_thumbnail() -> bytes:
    """The gallery's thumbnail of an image that cannot be shown (missing, not an image): a grey tile, so the
    gallery has no broken picture; the image's page says why."""
    tile = Image.new("RGB", (THUMBNAIL_PX, THUMBNAIL_PX * 3 // 4), (128, 128, 128))
    ImageDraw.Draw(tile).text((THUMBNAIL_PX // 2, THUMBNAIL_PX * 3 // 8), "cannot be shown", fill=(235, 235, 235),
                              anchor="mm")
    buffer = io.BytesIO()
    tile.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


@dataclass(frozen=True)
class Picture:
    jpeg: bytes
    width: int  # of the image the services saw (boxes are in these pixels), not of the scaled JPEG
    height: int


class Pictures:
    """Scaled JPEGs of images by id and size, least recently used first out."""

    def __init__(self, settings: Settings, locate: Callable[[int], tuple[str | None, str | None] | None], *,
                 entries: int = CACHE_ENTRIES) -> None:
        self.settings = settings
        self.locate = locate  # image id → (path, url), None for an unknown id
        self.entries = entries
        self._cache: OrderedDict[tuple[int, int], Picture] = OrderedDict()
        self._lock = threading.Lock()
        self.budget = DecodeBudget(settings.decode_budget_bytes)  # the dashboard's decodes share it

    def get(self, image_id: int, longest_side: int) -> Picture | None:
        """The picture scaled to fit `longest_side`; None for an unknown image. A file that cannot be read or is
        not an image raises windmill's error with the reason (BadImage, a WindmillError)."""
        key = (image_id, longest_side)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        where = self.locate(image_id)
        if where is None:
            return None
        data = load_image_bytes(where[0], where[1], roots=self.settings.image_roots or None,
                                allow_private_urls=self.settings.allow_private_urls)
        prepared = prepare_image(data, budget=self.budget)
        pixels = prepared.to_rgb(self.budget, longest_side=longest_side)
        buffer = io.BytesIO()
        pixels.save(buffer, format="JPEG", quality=85)
        picture = Picture(buffer.getvalue(), prepared.width, prepared.height)
        with self._lock:
            self._cache[key] = picture
            while len(self._cache) > self.entries:
                self._cache.popitem(last=False)
        return picture
