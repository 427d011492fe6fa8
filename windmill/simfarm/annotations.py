"""Annotation sidecars (`photo.jpg` + `photo.boxes.json`): the ground truth simulated services perturb.

An upload carries no path, so images are found by content: an `AnnotationIndex` hashes every image
that has a sidecar in its directories and maps SHA-256 digest → sidecar. The format is documented in
windmill/samples/README.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from windmill.errors import WindmillError
from windmill.simfarm import lexicon

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".boxes.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
RESCAN_INTERVAL_S = 5.0
# A client may re-encode an image before sending it (grayscale → RGB JPEG, EXIF rotation applied, resized):
# its bytes change, its look does not. Look-alikes are matched on a small grayscale thumbnail.
THUMBNAIL = (16, 16)
LOOK_ALIKE_MAX_DIFFERENCE = 6.0  # mean absolute difference of thumbnail pixels, 0–255
ASPECT_TOLERANCE = 0.01

Box = tuple[int, int, int, int]


class AnnotationError(WindmillError):
    """A sidecar file is unreadable or does not follow the format."""


@dataclass(frozen=True)
class AnnotatedObject:
    """One real object. `coco` is what COCO detectors call it (None: they cannot see it)."""

    label: str
    bbox: Box
    emoji: str
    coco: str | None
    clip: str
    imagenet: str | None
    face: Box | None = None


@dataclass(frozen=True)
class TextLine:
    text: str
    bbox: Box


@dataclass(frozen=True)
class Sidecar:
    path: Path
    size: tuple[int, int] | None
    objects: tuple[AnnotatedObject, ...]
    captions: dict[str, str]
    labels: tuple[str, ...]
    text: tuple[TextLine, ...]
    nsfw: bool

    def fitted(self, width: int, height: int) -> Sidecar:
        """The same annotations in the coordinates of an image of this size (a resized copy)."""
        if self.size is None or self.size == (width, height):
            return self
        sx, sy = width / self.size[0], height / self.size[1]

        def scale(box: Box) -> Box:
            return (round(box[0] * sx), round(box[1] * sy), max(1, round(box[2] * sx)), max(1, round(box[3] * sy)))

        return replace(
            self,
            size=(width, height),
            objects=tuple(
                replace(obj, bbox=scale(obj.bbox), face=scale(obj.face) if obj.face else None) for obj in self.objects
            ),
            text=tuple(replace(line, bbox=scale(line.bbox)) for line in self.text),
        )


def sidecar_path_for(image: Path) -> Path:
    """`dir/photo.jpg` → `dir/photo.boxes.json`."""
    return image.with_name(image.stem + SIDECAR_SUFFIX)


def _box(value: Any, where: str) -> Box:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise AnnotationError(f"{where} must be a list [x, y, width, height] of numbers")
    x, y, w, h = (round(v) for v in value)
    if w <= 0 or h <= 0:
        raise AnnotationError(f"{where} must have a positive width and height")
    return (x, y, w, h)


def _object(entry: Any, where: str) -> AnnotatedObject:
    if not isinstance(entry, dict) or not isinstance(entry.get("label"), str) or not entry["label"].strip():
        raise AnnotationError(f"{where} must be an object with a non-empty string label")
    label = entry["label"].strip()
    coco = entry["coco"] if "coco" in entry else (label if lexicon.is_coco_class(label) else None)
    if coco is not None and not lexicon.is_coco_class(coco):
        raise AnnotationError(f"{where}.coco {coco!r} is not a COCO class name")
    emoji = entry.get("emoji") or lexicon.emoji_underscored(label, singular=True) or ""
    imagenet = entry["imagenet"] if "imagenet" in entry else label.replace(" ", "_")
    return AnnotatedObject(
        label=label,
        bbox=_box(entry.get("bbox"), f"{where}.bbox"),
        emoji=str(emoji),
        coco=coco,
        clip=str(entry.get("clip") or label),
        imagenet=str(imagenet) if imagenet else None,
        face=_box(entry["face"], f"{where}.face") if entry.get("face") is not None else None,
    )


def parse_sidecar(document: Any, path: Path) -> Sidecar:
    """Validate a decoded sidecar document; every error names the file and the field."""
    where = path.name
    if not isinstance(document, dict):
        raise AnnotationError(f"sidecar {where} must hold a JSON object")
    size = document.get("size")
    if size is not None and (
        not isinstance(size, list) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise AnnotationError(f"{where}: size must be [width, height] in pixels")
    objects = document.get("objects", [])
    captions = document.get("captions", {})
    labels = document.get("labels", [])
    text = document.get("text", [])
    if not isinstance(objects, list):
        raise AnnotationError(f"{where}: objects must be a list")
    if not isinstance(captions, dict) or not all(isinstance(v, str) for v in captions.values()):
        raise AnnotationError(f"{where}: captions must map a service name to a string")
    if not isinstance(labels, list) or not all(isinstance(v, str) for v in labels):
        raise AnnotationError(f"{where}: labels must be a list of strings")
    if isinstance(text, str):
        text = [{"text": text, "bbox": [0, 0, *(size or [1, 1])]}] if text.strip() else []
    if not isinstance(text, list):
        raise AnnotationError(f"{where}: text must be a string or a list of {{text, bbox}} lines")
    lines = []
    for i, line in enumerate(text):
        if not isinstance(line, dict) or not isinstance(line.get("text"), str):
            raise AnnotationError(f"{where}: text[{i}] must be an object with a string text")
        lines.append(TextLine(line["text"], _box(line.get("bbox"), f"{where}: text[{i}].bbox")))
    return Sidecar(
        path=path,
        size=(size[0], size[1]) if size else None,
        objects=tuple(_object(entry, f"{where}: objects[{i}]") for i, entry in enumerate(objects)),
        captions={str(k): v.strip() for k, v in captions.items() if v.strip()},
        labels=tuple(label.strip() for label in labels if label.strip()),
        text=tuple(lines),
        nsfw=bool(document.get("nsfw", False)),
    )


def load_sidecar(path: Path) -> Sidecar:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise AnnotationError(f"cannot read sidecar {path}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AnnotationError(f"sidecar {path} is not valid JSON: {error}") from None
    return parse_sidecar(document, path)


def _sidecars_under(directory: Path) -> tuple[list[Path], dict[Path, set[str]]]:
    """Every sidecar under `directory` in path order, and the names of the files in each folder holding one. A rescan
    runs every few seconds while crops (which no sidecar describes) arrive: one listing per folder, where looking
    for each image beside each sidecar took a dozen file-system calls per sidecar, a tenth of the stand-in's CPU."""
    sidecars: list[Path] = []
    files: dict[Path, set[str]] = {}
    for folder, _, names in os.walk(directory):
        found = [name for name in names if name.endswith(SIDECAR_SUFFIX)]
        if found:
            files[Path(folder)] = set(names)
            sidecars.extend(Path(folder, name) for name in found)
    return sorted(sidecars), files


def _images_beside(sidecar: Path, files: set[str]) -> Iterable[Path]:
    stem = sidecar.name[: -len(SIDECAR_SUFFIX)]
    for suffix in IMAGE_SUFFIXES:
        for name in (stem + suffix, stem + suffix.upper()):
            if name in files and (candidate := sidecar.with_name(name)).is_file():  # not a broken link
                yield candidate


class AnnotationIndex:
    """Digest → sidecar for every annotated image under some directories, rescanned lazily on a miss."""

    def __init__(
        self,
        directories: Sequence[Path],
        *,
        rescan_interval_s: float = RESCAN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directories = tuple(Path(d) for d in directories)
        self._interval = rescan_interval_s
        self._clock = clock
        self._by_digest: dict[str, Sidecar] = {}
        # Unchanged files are neither re-hashed nor re-parsed by a rescan.
        self._seen: dict[Path, tuple[int, int, str]] = {}  # image → (mtime_ns, size, digest)
        self._sidecars: dict[Path, tuple[int, Sidecar]] = {}  # sidecar → (mtime_ns, parsed)
        self._last_scan = float("-inf")
        self._lock = threading.Lock()
        self._thumbnails: dict[str, tuple[float, np.ndarray]] = {}  # digest → (aspect ratio, thumbnail)
        self._unreadable: set[str] = set()  # digests of indexed images Pillow could not read for a thumbnail
        # For look-alike searches: the index it was made from, its digests, aspect ratios and thumbnails.
        self._look_alikes: tuple[dict[Path, Any], list[str], np.ndarray, list[np.ndarray]] | None = None

    def scan(self, *, strict: bool = True) -> None:
        """Index every image with a sidecar, and make the look-alike table. Strict (at start): a bad sidecar is an
        error; lazy: it is skipped. Made on the first search instead, the table held that search and every other
        behind the lock for as long as thumbnails of the whole index took: on a slow machine, for 300 scenes, longer
        than the first crops' 30 s timeout, in the first timed run of every benchmark."""
        with self._lock:
            self._scan(strict)
            self._refresh_look_alikes()

    def _scan(self, strict: bool) -> None:
        by_digest: dict[str, Sidecar] = {}
        seen: dict[Path, tuple[int, int, str]] = {}
        sidecars: dict[Path, tuple[int, Sidecar]] = {}
        for directory in self.directories:
            if not directory.is_dir():
                if strict:
                    raise AnnotationError(f"annotation directory {directory} does not exist")
                continue
            sidecar_paths, files = _sidecars_under(directory)
            for sidecar_path in sidecar_paths:
                try:
                    sidecar_mtime = sidecar_path.stat().st_mtime_ns
                    known_sidecar = self._sidecars.get(sidecar_path)
                    if known_sidecar and known_sidecar[0] == sidecar_mtime:
                        sidecar = known_sidecar[1]
                    else:
                        sidecar = load_sidecar(sidecar_path)
                    sidecars[sidecar_path] = (sidecar_mtime, sidecar)
                    for image in _images_beside(sidecar_path, files[sidecar_path.parent]):
                        stat = image.stat()
                        known = self._seen.get(image)
                        if known and known[:2] == (stat.st_mtime_ns, stat.st_size):
                            digest = known[2]
                        else:
                            digest = hashlib.sha256(image.read_bytes()).hexdigest()
                        seen[image] = (stat.st_mtime_ns, stat.st_size, digest)
                        by_digest.setdefault(digest, sidecar)
                except (AnnotationError, OSError) as error:
                    if strict:
                        raise AnnotationError(str(error)) from None
                    log.warning("skipping sidecar %s: %s", sidecar_path, error, extra={"action": "sidecar_skipped"})
        self._by_digest, self._seen, self._sidecars = by_digest, seen, sidecars
        self._last_scan = self._clock()

    def for_digest(self, digest: str) -> Sidecar | None:
        found = self._by_digest.get(digest)
        if found is not None or self._clock() - self._last_scan < self._interval:
            return found
        # A miss may be an image added since the last scan; one thread rescans, the others don't wait.
        if self._lock.acquire(blocking=False):
            try:
                if self._clock() - self._last_scan >= self._interval:
                    self._scan(strict=False)
            finally:
                self._lock.release()
        return self._by_digest.get(digest)

    def may_look_alike(self, width: int, height: int) -> bool:
        """Whether an indexed image has the aspect of an image of this size: when none has, no look-alike search
        can find one, and the image need not be decoded to look (the crops face and pose receive, mostly)."""
        _, aspects, _ = self._look_alike_table()
        return _near(aspects, width / height).size > 0

    def for_look_alike(self, image: Image.Image) -> Sidecar | None:
        """The sidecar of an indexed image that looks the same as `image` (same aspect, same thumbnail)."""
        aspect, thumbnail = _signature(image)
        digests, aspects, thumbnails = self._look_alike_table()
        # Every crop a postprocessing service receives is looked up here and matches nothing: the aspect test,
        # over all indexed images at once, leaves the few whose thumbnails are worth comparing.
        near = _near(aspects, aspect)
        best: tuple[float, str] | None = None
        for position in near:
            difference = float(np.abs(thumbnails[position] - thumbnail).mean())
            if difference <= LOOK_ALIKE_MAX_DIFFERENCE and (best is None or difference < best[0]):
                best = (difference, digests[position])
        return self._by_digest.get(best[1]) if best else None

    def _look_alike_table(self) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
        """The indexed images' digests, aspect ratios and thumbnails in index order, made again only when a scan
        has replaced the index (a thumbnail is made once per image)."""
        with self._lock:
            return self._refresh_look_alikes()

    def _refresh_look_alikes(self) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
        """The look-alike table of the current index (the lock held): thumbnails of the images it has not seen. An
        indexed image Pillow cannot read is left out of the table (its digest still finds its sidecar)."""
        seen = self._seen
        if self._look_alikes is None or self._look_alikes[0] is not seen:
            for image_path, (_, _, digest) in seen.items():
                if digest not in self._thumbnails and digest not in self._unreadable:
                    try:
                        with Image.open(image_path) as indexed:
                            self._thumbnails[digest] = _signature(indexed)
                    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
                        self._unreadable.add(digest)
                        log.warning("no look-alike of %s: %s", image_path, error, extra={"action": "sidecar_skipped"})
            digests = [digest for _, _, digest in seen.values() if digest in self._thumbnails]
            aspects = np.array([self._thumbnails[digest][0] for digest in digests], dtype=np.float64)
            self._look_alikes = (seen, digests, aspects, [self._thumbnails[digest][1] for digest in digests])
        return self._look_alikes[1:]

    @staticmethod
    def beside(image: Path) -> Sidecar | None:
        """The sidecar next to a local file (`?file=`), or None; a broken one counts as absent."""
        path = sidecar_path_for(image)
        if not path.is_file():
            return None
        try:
            return load_sidecar(path)
        except AnnotationError as error:
            log.warning("ignoring sidecar %s: %s", path, error, extra={"action": "sidecar_skipped"})
            return None

    def __len__(self) -> int:
        return len(self._by_digest)


def _near(aspects: np.ndarray, aspect: float) -> np.ndarray:
    """The positions of the aspects within the tolerance of `aspect`."""
    return np.flatnonzero(np.abs(aspects - aspect) <= ASPECT_TOLERANCE * aspect)


def _signature(image: Image.Image) -> tuple[float, np.ndarray]:
    gray = image.convert("L").resize(THUMBNAIL, Image.Resampling.BILINEAR)
    return image.width / image.height, np.asarray(gray, dtype=np.float32)
