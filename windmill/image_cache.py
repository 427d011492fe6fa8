"""Prepared images shared by the services of one process: each image is read and validated once, not once
per service, and concurrent requests for the same image wait for the one load in progress. The same holds for
the decoded pixels of an image being cropped, and for each crop: colors, face and pose analyse the same crop of a
person box, cut and encoded once, and an image's boxes are all cut from one decode."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from PIL import Image

from windmill.catalog import Service
from windmill.images import CropBox, PreparedImage, crop_for_service, load_image_bytes, prepare_image
from windmill.images.budget import DecodeBudget, give_back_share
from windmill.images.crop import box_xywh
from windmill.images.load import resolve_image_path
from windmill.images.validate import prepare_image_and_pixels
from windmill.settings import Settings

Key = TypeVar("Key")
Value = TypeVar("Value")


# How long a permanent failure of a load is kept: longer than the tasks of one image take to come together, short
# enough that an image put right and submitted again is read again.
FAILURE_TTL_S = 30.0


def _passing(error: BaseException) -> bool:
    """A failure that may not happen again (ImageUnavailable and other errors marked `retryable`)."""
    return bool(getattr(error, "retryable", False))


class SingleFlightCache(Generic[Key, Value]):
    """A bounded LRU of loaded values, or of the exception their load raised when it is permanent (a bad image stays
    bad), for `failure_ttl_s`: the tasks of one image that come together share it, and a file put right (restored,
    replaced, its URL answering again) is read afresh when it is submitted again. A passing failure (an error with
    `retryable = True`, such as a download answered with HTTP 503) is not kept: the callers that waited for that
    load try once more themselves, and later callers load afresh.

    `capacity` bounds the entries' total weight: by default each entry weighs 1 (a count of entries); `weigh` gives
    the weight of a loaded value or kept failure instead (bytes, say). A load in progress weighs 1 until it ends.
    The least recently used entries go first, the one just loaded too if it alone outweighs the capacity."""

    def __init__(self, capacity: int, weigh: Callable[[Value | BaseException], int] | None = None, *,
                 failure_ttl_s: float = FAILURE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1:
            raise ValueError("the cache needs room for at least one entry")
        self.capacity = capacity
        self.failure_ttl_s = failure_ttl_s
        self._clock = clock
        self._failed_at: dict[Key, float] = {}
        self._weigh = weigh or (lambda outcome: 1)
        self._entries: OrderedDict[Key, Future[Value]] = OrderedDict()
        self._weights: dict[Key, int] = {}
        self._lock = threading.Lock()
        self.weight = 0
        self.loads = 0
        self.hits = 0

    def get(self, key: Key, load: Callable[[], Value]) -> Value:
        for last_try in (False, True):
            future, owner = self._entry(key)
            if owner:
                return self._load(key, future, load)
            try:
                return future.result()
            except Exception as error:
                # Failed in another caller's load for a reason that may pass: this caller tries once itself.
                if last_try or not _passing(error):
                    raise
        raise AssertionError("unreachable")

    def peek(self, key: Key) -> Value | None:
        """The key's value when it is loaded already; None when it is not (or is loading, or failed): no waiting."""
        with self._lock:
            future = self._entries.get(key)
            if future is None or not future.done() or future.exception() is not None:
                return None
            self._entries.move_to_end(key)
            self.hits += 1
        return future.result()

    def offer(self, key: Key, load: Callable[[], Value]) -> None:
        """Load the key's value when no caller has it or is loading it, for callers to come; never wait for another
        caller's load (this caller needs nothing from it). A failure is kept as `get` keeps it, and not raised:
        nobody asked."""
        future, owner = self._entry(key)
        if owner:
            with contextlib.suppress(Exception):
                self._load(key, future, load)

    def _entry(self, key: Key) -> tuple[Future[Value], bool]:
        """The key's future, and whether this caller created it (and so must load it)."""
        with self._lock:
            future = self._entries.get(key)
            failed_at = self._failed_at.get(key)
            if future is not None and failed_at is not None and self._clock() - failed_at >= self.failure_ttl_s:
                self._drop(key)  # a failure kept long enough: whatever was wrong may have been put right
                future = None
            if future is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return future, False
            future = Future()
            self._entries[key] = future
            self._weights[key] = 1
            self.weight += 1
            self._evict()
            self.loads += 1
            return future, True

    def _load(self, key: Key, future: Future[Value], load: Callable[[], Value]) -> Value:
        try:
            value = load()
        except Exception as error:
            if _passing(error):
                with self._lock:
                    if self._entries.get(key) is future:
                        self._drop(key)
            else:
                self._weighed(key, future, error)
                with self._lock:
                    if self._entries.get(key) is future:
                        self._failed_at[key] = self._clock()
            future.set_exception(error)
            raise
        self._weighed(key, future, value)
        future.set_result(value)
        return value

    def _weighed(self, key: Key, future: Future[Value], outcome: Value | BaseException) -> None:
        """The entry's load ended: it weighs what its outcome weighs (unless it was dropped meanwhile)."""
        weight = self._weigh(outcome)
        with self._lock:
            if self._entries.get(key) is future:
                self.weight += weight - self._weights[key]
                self._weights[key] = weight
                self._evict()

    def _evict(self) -> None:
        while self.weight > self.capacity and self._entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Key) -> None:
        del self._entries[key]
        self.weight -= self._weights.pop(key)
        self._failed_at.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


# The prepared images a process keeps, by their bytes: the services of one process each read their own queue, and
# in a bulk run a slow service's queue is hundreds of images behind a fast one's, so a cache of a fixed number of
# images (64: a few MB of the bench's images) had let each image go before most of its services had asked for it.
PREPARED_BYTES = 64 * 1024 * 1024
# What an entry costs beyond its image's bytes (the object, its digest, the key).
ENTRY_OVERHEAD_BYTES = 1024
# A kept failure's traceback holds the bytes it failed on (up to the download limit): each weighs as a large image,
# so the cache keeps at most 64 of them, as many as it kept of anything when it was bounded by count.
_FAILURE_BYTES = PREPARED_BYTES // 64


def _prepared_weight(outcome: PreparedImage | BaseException) -> int:
    if isinstance(outcome, BaseException):
        return _FAILURE_BYTES
    return len(outcome.data) + ENTRY_OVERHEAD_BYTES


# The boxes of an image are asked for by colors, face and pose, each from its own queue, and in a bulk run colors
# (every box, where face and pose take person boxes only) lags behind by a share of the backlog: in the pipeline
# bench an image's boxes for colors came 2.5 s (150 images) and 6.5 s (300 images) after its person boxes for face
# and pose, after those of about 0.7 × the images submitted. Eight decoded images by count kept none of them (1.8
# decodes per image), and pixels kept over that span cost 0.9 MB per 640 × 480 image (330 MB more at the peak for
# the 300-image bench). So the first box cut from an image has the image's other boxes cut with it (ImageSource.crop)
# and the crops, a hundredth of the pixels' bytes, are what is kept over the span (CROP_BYTES). The pixels are kept
# by their bytes (width × height × 3), for the boxes a quick re-merge moves: 32 MB, about 35 images of 640 × 480 and
# no photo of 12 MP (its boxes are all cut from the one decode), where eight 12 MP photos by count held 290 MB. (The
# handler's peak RSS in the 300-image bench: 117 MB with 8 MB of pixels, 153 with 32, 200 with 64; 1 decode per
# image with each.)
DECODED_BYTES = 32 * 1024 * 1024
# A kept failure (an image that cannot be decoded) weighs as a 640 × 480 image: a bounded number of them.
_DECODE_FAILURE_BYTES = 640 * 480 * 3


def _pixels_weight(outcome: Image.Image | BaseException) -> int:
    if isinstance(outcome, BaseException):
        return _DECODE_FAILURE_BYTES
    return outcome.width * outcome.height * len(outcome.getbands()) + ENTRY_OVERHEAD_BYTES


# The encoded crops kept, by their bytes, over colors' lag (see DECODED_BYTES). A crop of the pipeline bench's scenes
# is 5-20 KB (8 on average) and an image has about 4 boxes: 64 MB holds some 7,000 crops, the boxes of the last
# 1,800 images or so, the lag of a bulk run of about 2,500 images; beyond it, boxes are cut from a second decode
# (about 1 ms per 640 × 480 image, 0.2 ms per crop). With 64 crops kept by count, a quarter of the crops cut in the
# 300-image bench were a box cut before (1,532 cuts for 1,160 crops).
CROP_BYTES = 64 * 1024 * 1024


def _crop_weight(outcome: Crop | BaseException) -> int:
    if isinstance(outcome, BaseException):
        return ENTRY_OVERHEAD_BYTES
    return len(outcome.image.data) + ENTRY_OVERHEAD_BYTES


class ImageSource:
    """Prepared images (and their decoded pixels, for cropping) by image, loaded once per process."""

    def __init__(self, settings: Settings, *, prepared_bytes: int = PREPARED_BYTES, decoded_bytes: int = DECODED_BYTES,
                 crop_bytes: int = CROP_BYTES) -> None:
        self.settings = settings
        # The memory the process's decodes share (one ImageSource per process: RoleContext.images).
        self.budget = DecodeBudget(settings.decode_budget_bytes)
        self.prepared_images: SingleFlightCache[tuple[Any, ...], PreparedImage] = SingleFlightCache(
            prepared_bytes, _prepared_weight)
        self.decoded_images: SingleFlightCache[tuple[Any, ...], Image.Image] = SingleFlightCache(
            decoded_bytes, self._pixels_weight)
        self.crops: SingleFlightCache[tuple[Any, ...], Crop] = SingleFlightCache(crop_bytes, _crop_weight)

    def prepared(self, image_id: int, image_path: str | None, image_url: str | None, *,
                 decoded_before: bool = False) -> PreparedImage:
        """The image ready to send; BadImage (cached too: a bad image stays bad) when it cannot be, ImageUnavailable
        (not cached: the next caller downloads again) when its download failed for a reason that may pass.

        `decoded_before`: a service has answered on the image, so its pixels were decoded (by the process that sent
        it): a JPEG sent as it is is not decoded again (prepare_image). Kept apart from the fully validated entry,
        which callers that decode the pixels rely on (pixels, crop), and which it uses when this process has it."""
        key = _image_key(image_id, image_path, image_url)
        most = self.settings.max_upload_image_bytes
        if not decoded_before:
            return self.prepared_images.get(
                key, lambda: prepare_image(self._read(image_path, image_url), max_send_bytes=most, budget=self.budget))
        return self.prepared_images.peek(key) or self.prepared_images.get(
            (*key, "decoded before"),
            lambda: prepare_image(self._read(image_path, image_url), max_send_bytes=most, decoded_before=True,
                                  budget=self.budget))

    def inputs_for(self, service: Service, image_id: int, image_path: str | None, image_url: str | None, *,
                   decoded_before: bool = False) -> tuple[PreparedImage | None, str | None]:
        """What `service` is given the image as (Service.input_for): the prepared bytes to upload, or the path it
        reads from a shared disk (request_mode "file": absolute, and inside the image roots as a path Windmill
        reads itself must be, BadImage otherwise), or neither (it downloads the URL)."""
        given = service.input_for(image_path, image_url)
        if given == "upload":
            return self.prepared(image_id, image_path, image_url, decoded_before=decoded_before), None
        if given == "file" and image_path:
            return None, str(resolve_image_path(image_path, self.settings.image_roots or None))
        return None, None

    def pixels(self, image_id: int, image_path: str | None, image_url: str | None) -> Image.Image:
        """Upright RGB pixels of the image, to crop boxes from (do not modify: shared between threads)."""
        return self._pixels(_image_key(image_id, image_path, image_url))

    def _pixels(self, key: ImageKey) -> Image.Image:
        return self.decoded_images.get(key, lambda: self._decode(key))

    def _decode(self, key: ImageKey) -> Image.Image:
        """The pixels of the prepared image. When this call prepares it, one full decode both proves it whole and
        gives them (prepare_image_and_pixels); when it was prepared already (a service of this process sent it),
        its bytes are decoded."""
        decoded: list[Image.Image] = []

        def load() -> PreparedImage:
            prepared, pixels = prepare_image_and_pixels(self._read(key[1], key[2]),
                                                        max_send_bytes=self.settings.max_upload_image_bytes,
                                                        budget=self.budget)
            decoded.append(pixels)
            return prepared

        prepared = self.prepared_images.get(key, load)
        return decoded[0] if decoded else prepared.to_rgb(self.budget)

    def _pixels_weight(self, outcome: Image.Image | BaseException) -> int:
        """The cache's weight of decoded pixels. Pixels the cache keeps give their share of the decode budget back:
        the cache bounds them itself (DECODED_BYTES), and a decode waiting for the share of pixels that only a
        later decode would evict would wait for ever. Pixels too heavy to be kept keep their share while callers
        hold them."""
        weight = _pixels_weight(outcome)
        if isinstance(outcome, Image.Image) and weight <= self.decoded_images.capacity:
            give_back_share(outcome)
        return weight

    def _read(self, image_path: str | None, image_url: str | None) -> bytes:
        return load_image_bytes(image_path, image_url, roots=self.settings.image_roots or None,
                                allow_private_urls=self.settings.allow_private_urls)

    def crop(self, image_id: int, image_path: str | None, image_url: str | None, bbox: Any, *,
             other_boxes: Callable[[], Iterable[Any]] | None = None) -> Crop:
        """The box cut out of the image as a JPEG ready to send (crop_for_service), made once per image and box.
        Keyed by the image and the box's exact coordinates: equal keys cut equal pixels, whatever box row asked.

        When this call cuts the box, it cuts `other_boxes()` (the image's boxes still to be asked for) from the same
        pixels: colors asks for an image's boxes long after face and pose asked for its person boxes in a bulk run
        (see DECODED_BYTES), and a crop is about a hundredth of the pixels' bytes, so crops outlast pixels."""
        key = _image_key(image_id, image_path, image_url)
        where = _where(bbox)
        decoded: list[Image.Image] = []

        def load() -> Crop:
            decoded.append(self._pixels(key))
            return _cut(decoded[0], bbox)

        crop = load() if where is None else self.crops.get((*key, where), load)
        # After the box's own crop is out of its load: a failure here (the database away) is this call's alone, and
        # never kept as the crop's.
        if decoded and other_boxes is not None:
            for other in other_boxes():
                other_where = _where(other)
                if other_where is not None and other_where != where:
                    self.crops.offer((*key, other_where), functools.partial(_cut, decoded[0], other))
        return crop


# An image's entries are keyed by its row and, for a file, the file's size, modification time and inode: a file replaced
# since (new pixels under the same name) or completed since (registered while it was being written, its truncation
# kept as a failure) is another entry, read afresh.
ImageKey = tuple[int, str | None, str | None, tuple[int, int, int] | None]


def _image_key(image_id: int, image_path: str | None, image_url: str | None) -> ImageKey:
    version = None
    if image_path:
        try:
            info = os.stat(image_path)
            version = (info.st_size, info.st_mtime_ns, info.st_ino)
        except (OSError, ValueError):  # missing (the loader says so, or takes the URL), or a NUL in the name
            pass
    return image_id, image_path, image_url, version


def _where(bbox: Any) -> tuple[float, float, float, float] | None:
    """The box's coordinates, the key of its crop; None when it is no box (crop_for_service refuses it and says why)."""
    try:
        return box_xywh(bbox)
    except ValueError:
        return None


def _cut(pixels: Image.Image, bbox: Any) -> Crop:
    image, box = crop_for_service(pixels, bbox)
    return Crop(image, box, pixels.size)


@dataclass(frozen=True)
class Crop:
    """A box cut out of an image: what to send, the pixel rectangle it covers, and the whole image's size."""

    image: PreparedImage
    box: CropBox
    image_size: tuple[int, int]
