"""From image bytes to a service's answer body: decode, find the sidecar, run the simulated model, cache.

Bodies are cached as bytes per (service, image digest, parameters), so a repeated image costs a
SHA-256 and a dict lookup; with `cache=False` (`farm serve --no-cache`) every request computes its answer, as a
real service does, from the image decoded as far as its answer needs (the decoding itself, an input shared by
the services that receive the same upload, may come from `decoding.DecodedImages`). Everything here is
deterministic: the same bytes give the same body, `processing_time` included (a per-image spread around the
service's typical time).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image

from windmill.simfarm import captions, classification, colors, detections, metadata, people, specialists
from windmill.simfarm.annotations import AnnotationIndex, Sidecar
from windmill.simfarm.contract import SCORE_MODEL_INFO, Profile, encode, success
from windmill.simfarm.decoding import DecodedImages
from windmill.simfarm.decoding import Undecodable as Undecodable  # where the server and tests expect it
from windmill.simfarm.determinism import unit
from windmill.simfarm.inputs import Picture

DEFAULT_CACHE_ENTRIES = 20_000
SHINY_KEY = "shiny"


@dataclass(frozen=True)
class Options:
    """Service configuration the real deployment sets by environment."""

    color_systems: tuple[str, ...] = ("copic",)  # COLOR_SYSTEM
    metadata_reencode: bool = False  # reproduce df57b25's JPEG re-encode in metadata
    shiny_rate: float = 0.0  # the 1-in-2500 `shiny` flag, made injectable (§2.5)


@dataclass
class Scene:
    """An image as one simulated model needs it, and what is known about it."""

    picture: Picture
    image: Image.Image  # as decoded (EXIF, mode), at reduced scale or not at all unless the model needs the pixels
    file_format: str
    width: int  # the image's own size, whatever the scale it was decoded at
    height: int
    sidecar: Sidecar | None

    @property
    def rgb(self) -> Image.Image:
        return self.image.convert("RGB")


# How much of the image each simulated model looks at. Metadata's statistics are computed on a JPEG decoded at half
# its size by libjpeg's DCT scaling (a quarter of the pixels: 0.27x of its CPU per answer; other formats at full
# size; its re-encoding mode at full size, as that mode's file size is the re-encoded full image's); a palette or the
# colour word of a caption needs a thumbnail, resampled from a JPEG decoded at 1/2–1/8 scale, at least the
# thumbnail's size (libjpeg's DCT scaling averages as it shrinks: for 139 of 141 crops of the benchmark's scenes the
# dominant colour family is the one a decoding at twice the size gives); answers drawn from the sidecar need only
# the size, which the header gives.
METADATA_SHRINK = 2
_DOMINANT_COLOR = {"blip", "ollama"}
# Answers computed from the pixels alone: no sidecar is looked for. An image nobody annotated (every crop the
# postprocessing sends) would otherwise be decoded at full size and compared with every indexed image for nothing.
_PIXELS_ONLY = {"colors", "metadata"}


def processing_time(profile: Profile, digest: str) -> float:
    return max(0.001, round(profile.nominal_time_s * (0.8 + 0.4 * unit(digest, profile.key, "time")), 3))


class Answerer:
    """Computes and caches success bodies; raises Undecodable for bytes that are no image."""

    def __init__(self, index: AnnotationIndex, options: Options | None = None, *,
                 max_entries: int = DEFAULT_CACHE_ENTRIES, cache: bool = True) -> None:
        self.index = index
        self.options = options or Options()
        self.cache = cache  # False: every answer computed per request, as a real service does (benchmarks)
        self.computed = 0  # answers computed rather than taken from the cache
        self._cache: dict[tuple[Any, ...], bytes] = {}
        self._max_entries = max_entries
        self._lock = threading.Lock()
        self.decoded = DecodedImages()  # decodings (inputs, not answers) shared by the services: see decoding.py

    def _cached(self, key: tuple[Any, ...], compute: Any) -> bytes:
        if not self.cache:
            body = encode(compute())
            with self._lock:
                self.computed += 1
            return body
        cached = self._cache.get(key)
        if cached is None:
            cached = encode(compute())
            with self._lock:
                while len(self._cache) >= self._max_entries:
                    del self._cache[next(iter(self._cache))]  # oldest first: dicts keep insertion order
                self._cache[key] = cached
                self.computed += 1
        return cached

    def analyze(self, profile: Profile, picture: Picture, params: dict[str, str]) -> bytes:
        variant: tuple[str, ...] = ()
        if profile.analyzer == "colors":
            variant = (params.get("regions", ""),)
        elif profile.analyzer == "ollama":
            variant = (params.get("prompt", ""), params.get("model", ""))
        key = (profile.key, "analyze", picture.digest, variant)
        return self._cached(key, lambda: self._analyze(
            profile, self._scene(picture, profile.analyzer, params.get("regions", "")), params))

    def score(self, profile: Profile, picture: Picture, caption: str) -> bytes:
        caption = caption.strip()
        key = (profile.key, "score", picture.digest, caption, picture.source)

        def compute() -> dict[str, Any]:
            scene = self._scene(picture, "caption_score")
            return {
                "service": "clip",
                "status": "success",
                "similarity_score": captions.similarity(caption, scene.sidecar, picture.digest),
                "caption": caption,
                "image_source": picture.source,
                "metadata": {"processing_time": processing_time(profile, picture.digest),
                             "model_info": dict(SCORE_MODEL_INFO)},
            }

        return self._cached(key, compute)

    def _scene(self, picture: Picture, analyzer: str, regions: str = "") -> Scene:
        pixels, at_least, shrink = False, None, 1
        if analyzer == "metadata":
            pixels, shrink = True, 1 if self.options.metadata_reencode else METADATA_SHRINK
        elif analyzer == "colors":
            grid = colors.REGION_GRIDS.get(int(regions), 1) if regions.isdigit() else 1  # a thumbnail per region
            pixels, at_least = True, (grid * colors.THUMBNAIL[0], grid * colors.THUMBNAIL[1])
        elif analyzer in _DOMINANT_COLOR:
            pixels, at_least = True, colors.DOMINANT_THUMBNAIL
        image, file_format, (width, height) = self.decoded.decode(picture, at_least, pixels=pixels, shrink=shrink)
        if analyzer in _PIXELS_ONLY:
            return Scene(picture, image, file_format, width, height, None)
        sidecar = None
        if picture.path is not None:
            sidecar = self.index.beside(picture.path)
        if sidecar is None:
            sidecar = self.index.for_digest(picture.digest)
        if sidecar is None and self.index.may_look_alike(width, height):
            # Look-alikes are compared on thumbnails of the full-size pixels, as the index makes its own.
            full_size = image if pixels and image.size == (width, height) else self.decoded.decode(picture)[0]
            sidecar = self.index.for_look_alike(full_size.convert("RGB"))
        if sidecar is not None:
            sidecar = sidecar.fitted(width, height)
        return Scene(picture, image, file_format, width, height, sidecar)

    def _analyze(self, profile: Profile, scene: Scene, params: dict[str, str]) -> dict[str, Any]:
        digest, sidecar, width, height = scene.picture.digest, scene.sidecar, scene.width, scene.height
        top_level: dict[str, Any] = {}
        model_info: dict[str, Any] = {}
        extra_metadata: dict[str, Any] = {}
        kind = profile.analyzer
        if kind in ("yolov8", "rtdetr", "detectron2"):
            predictions = detections.coco_predictions(kind, sidecar, digest, width, height)
        elif kind in ("clip_detection", "xception_detection"):
            detector = kind.removesuffix("_detection")
            predictions = detections.two_stage_predictions(detector, sidecar, digest, width, height)
            full_image = (classification.clip_full_image if detector == "clip" else classification.xception_full_image)(
                sidecar, digest
            )
            if full_image:  # only when non-empty (§2.3)
                top_level["full_image"] = full_image
        elif kind == "clip_backend":
            predictions = classification.clip_backend_predictions(sidecar, digest)
        elif kind in ("blip", "ollama"):
            color_word = colors.dominant_family(scene.image)
            if kind == "blip":
                predictions = [captions.blip_prediction(sidecar, color_word)]
            else:
                predictions = [captions.ollama_prediction(sidecar, color_word)]
                model_info = {"model": params.get("model") or captions.DEFAULT_MODEL,
                              "prompt": params.get("prompt") or captions.DEFAULT_PROMPT}
        elif kind == "colors":
            regions = int(params["regions"]) if params.get("regions", "").isdigit() else None
            prediction, extra_metadata = colors.analyze(scene.rgb, self.options.color_systems, regions)
            predictions = [prediction]
        elif kind == "metadata":
            predictions = [metadata.analyze(scene.image, scene.picture.data, scene.file_format,
                                            (scene.width, scene.height), reencode=self.options.metadata_reencode)]
        elif kind == "face":
            predictions = people.face_predictions(sidecar, digest, width, height)
        elif kind == "pose":
            predictions = people.pose_predictions(sidecar, digest, width, height)
        elif kind == "ocr":
            predictions = [specialists.ocr_prediction(sidecar, digest)]
        elif kind == "nsfw2":
            predictions = [specialists.nsfw_prediction(sidecar, digest)]
        else:  # pragma: no cover - PROFILES and this dispatch are kept in step by the tests
            raise AssertionError(f"no analyzer {kind!r}")
        self._add_shiny(profile, digest, predictions)
        return success(profile, predictions, processing_time(profile, digest), top_level=top_level,
                       model_info=model_info, metadata=extra_metadata)

    def _add_shiny(self, profile: Profile, digest: str, predictions: list[dict[str, Any]]) -> None:
        rate = self.options.shiny_rate
        if rate <= 0:
            return
        for index, prediction in enumerate(predictions):
            if unit(digest, profile.key, "shiny", index) < rate:
                prediction[SHINY_KEY] = True  # present only when true, never false
