"""The stand-in decodes only what each simulated model looks at, yet every answer comes from the request's own
image: cut-off files are refused by every service, and without the cache each request is computed anew."""

from __future__ import annotations

import io
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from windmill.simfarm.annotations import AnnotationIndex
from windmill.simfarm.answers import Answerer, Options, Undecodable
from windmill.simfarm.contract import PROFILES
from windmill.simfarm.decoding import DecodedImages
from windmill.simfarm.inputs import Picture
from windmill.simfarm.metadata import _mean_saturation
from windmill.simfarm.metadata import analyze as analyze_metadata
from windmill.simfarm.server import SAMPLES_DIR

ASTRONAUT = (SAMPLES_DIR / "astronaut.jpg").read_bytes()
COFFEE = (SAMPLES_DIR / "coffee.jpg").read_bytes()


@pytest.fixture(scope="module")
def answerer() -> Answerer:
    index = AnnotationIndex([SAMPLES_DIR])
    index.scan()
    return Answerer(index, cache=False)


@pytest.mark.parametrize("cut", [len(ASTRONAUT) // 2, len(ASTRONAUT) - 1])
@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_service_refuses_a_cut_off_jpeg(answerer: Answerer, name: str, cut: int) -> None:
    # Even the services that answer from the sidecar and need only the size: a real model decodes the file.
    with pytest.raises(Undecodable, match="truncated"):
        answerer.analyze(PROFILES[name], Picture(ASTRONAUT[:cut], "upload"), {})
    if PROFILES[name].scores:
        with pytest.raises(Undecodable, match="truncated"):
            answerer.score(PROFILES[name], Picture(ASTRONAUT[:cut], "upload"), "an astronaut")


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_without_cache_each_answer_is_computed_from_its_own_image(answerer: Answerer, name: str) -> None:
    profile = PROFILES[name]
    before = answerer.computed
    first = answerer.analyze(profile, Picture(ASTRONAUT, "upload"), {})
    again = answerer.analyze(profile, Picture(ASTRONAUT, "upload"), {})
    other = answerer.analyze(profile, Picture(COFFEE, "upload"), {})
    assert answerer.computed - before == 3  # nothing taken from a cache
    assert first == again  # deterministic
    assert other != first  # and from the bytes of the request


def test_mean_saturation_is_that_of_pillows_hsv_conversion() -> None:
    rng = np.random.default_rng(11)
    images = [Image.open(path).convert("RGB") for path in sorted(SAMPLES_DIR.glob("*.jpg"))]
    for _ in range(20):
        height, width = (int(n) for n in rng.integers(1, 700, 2))
        images.append(Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB"))
    for rgb in images:
        expected = float(np.asarray(rgb.convert("HSV"), dtype=np.float32)[..., 1].mean())
        assert _mean_saturation(rgb) == expected, rgb.size


@pytest.mark.parametrize("size", [(1, 1), (2, 5), (97, 61), (3000, 2000)])
def test_metadata_statistics_are_the_exact_figures(size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    luma = np.asarray(image.convert("L")).astype(np.float64)
    laplacian = np.zeros_like(luma)
    laplacian[1:-1, 1:-1] = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4 * luma[1:-1, 1:-1]
    quality = analyze_metadata(image, b"", "png")["image_quality"]
    assert quality["lighting_analysis"]["mean_brightness"] == round(float(luma.mean()), 2)
    assert quality["contrast_analysis"]["dynamic_range"] == round(float(luma.std()), 2)
    assert quality["blur_analysis"]["laplacian_variance"] == round(float(laplacian.var()), 2)
    assert quality["exposure_analysis"]["bright_pixel_ratio"] == round(float((luma >= 230).mean()), 3)


@pytest.mark.parametrize("reencode", [False, True])
def test_metadata_reads_a_jpeg_at_half_size_and_reports_its_own(reencode: bool) -> None:
    """Its statistics come from a quarter of the pixels (libjpeg's DCT scaling), its dimensions and file from the
    image as sent, odd sides included; the re-encoding mode's file size is the full image's re-encoded."""
    odd = io.BytesIO()
    Image.open(io.BytesIO(COFFEE)).crop((0, 0, 441, 297)).save(odd, format="JPEG", quality=90)
    answerer = Answerer(AnnotationIndex([SAMPLES_DIR]), Options(metadata_reencode=reencode), cache=False)
    seen: list[tuple[int, int]] = []
    decode = answerer.decoded.decode

    def recording(*args: Any, **kwargs: Any) -> Any:
        result = decode(*args, **kwargs)
        seen.append(result[0].size)
        return result

    answerer.decoded.decode = recording  # type: ignore[method-assign]
    body = json.loads(answerer.analyze(PROFILES["metadata"], Picture(odd.getvalue(), "upload"), {}))
    prediction = body["predictions"][0]
    assert prediction["dimensions"] == {"width": 441, "height": 297}
    assert seen == ([(441, 297)] if reencode else [(221, 149)])
    if not reencode:
        assert prediction["file"] == {"file_size": len(odd.getvalue()), "file_type": "jpeg"}
    else:
        full = io.BytesIO()
        Image.open(io.BytesIO(odd.getvalue())).convert("RGB").save(full, "JPEG", quality=95)
        assert prediction["file"] == {"file_size": full.tell(), "file_type": "jpeg"}


def test_services_share_a_decoding_but_compute_each_answer() -> None:
    answerer = Answerer(AnnotationIndex([SAMPLES_DIR]), cache=False)
    picture = Picture(COFFEE, "upload")
    decoded, computed = answerer.decoded.decoded, answerer.computed
    first = answerer.analyze(PROFILES["blip"], picture, {})
    answerer.analyze(PROFILES["ollama"], Picture(COFFEE, "upload"), {})  # the same scale as blip's
    assert answerer.decoded.decoded - decoded == 1
    assert answerer.computed - computed == 2
    assert answerer.analyze(PROFILES["blip"], Picture(COFFEE, "upload"), {}) == first


@pytest.mark.parametrize("name", ["colors", "metadata"])
def test_answers_from_pixels_alone_look_for_no_sidecar(name: str) -> None:
    """A crop nobody annotated: colors and metadata (each at its reduced scale) decode it once, for their own
    answer; looking for a look-alike would decode it at full size too (colors) and compare it with the index."""
    index = AnnotationIndex([SAMPLES_DIR])
    index.scan()
    searched: list[Image.Image] = []
    index.for_look_alike = searched.append  # type: ignore[method-assign,assignment]
    answerer = Answerer(index, cache=False)
    crop = io.BytesIO()
    Image.open(io.BytesIO(ASTRONAUT)).crop((100, 50, 400, 450)).save(crop, format="JPEG", quality=90)
    decoded = answerer.decoded.decoded
    answerer.analyze(PROFILES[name], Picture(crop.getvalue(), "upload"), {})
    assert answerer.decoded.decoded - decoded == 1
    assert searched == []


@pytest.mark.parametrize("name", ["face", "pose", "yolov8"])
def test_a_look_alike_is_searched_only_among_images_of_its_aspect(name: str) -> None:
    """An unannotated image whose aspect no indexed image has (a person's crop, mostly) is answered from its
    header: decoding it to compare thumbnails could find nothing. A resized copy of an annotated image is still
    decoded, compared and given that image's sidecar."""
    index = AnnotationIndex([SAMPLES_DIR])
    index.scan()
    searched: list[tuple[int, int]] = []
    search = index.for_look_alike

    def recording(image: Image.Image) -> Any:
        searched.append(image.size)
        return search(image)

    index.for_look_alike = recording  # type: ignore[method-assign]
    answerer = Answerer(index, cache=False)
    tall = io.BytesIO()
    Image.open(io.BytesIO(ASTRONAUT)).crop((100, 50, 250, 450)).save(tall, format="JPEG", quality=90)
    decoded = answerer.decoded.decoded
    answerer.analyze(PROFILES[name], Picture(tall.getvalue(), "upload"), {})
    assert searched == []
    assert answerer.decoded.decoded - decoded == 1  # its header
    half = io.BytesIO()
    with Image.open(io.BytesIO(COFFEE)) as coffee:
        coffee.resize((coffee.width // 2, coffee.height // 2)).save(half, format="JPEG", quality=90)
    body = json.loads(answerer.analyze(PROFILES[name], Picture(half.getvalue(), "upload"), {}))
    assert searched == [(300, 200)]
    if name == "yolov8":
        assert "cup" in {prediction["label"] for prediction in body["predictions"]}


def test_the_decoding_cache_is_bounded_and_keeps_no_failure() -> None:
    images = DecodedImages(max_entries=2, max_pixels=10**9)
    pictures = [Picture(path.read_bytes(), "upload") for path in sorted(SAMPLES_DIR.glob("*.jpg"))[:3]]
    for picture in pictures:
        images.decode(picture)
    images.decode(pictures[0])  # dropped when the third came
    assert images.decoded == 4
    small = DecodedImages(max_pixels=300_000)
    small.decode(Picture(COFFEE, "upload"))  # 600 × 400 pixels: fits
    small.decode(Picture(ASTRONAUT, "upload"))  # 512 × 512: the coffee is dropped to make room
    small.decode(Picture(COFFEE, "upload"))
    assert small.decoded == 3
    cut = Picture(ASTRONAUT[: len(ASTRONAUT) // 2], "upload")
    for _ in range(2):
        with pytest.raises(Undecodable, match="truncated"):
            small.decode(cut)


_FAULTS_PER_METADATA_ANSWER = """
import resource
import numpy as np
from PIL import Image
from windmill.simfarm import metadata
from windmill.simfarm.memory import keep_freed_memory
assert keep_freed_memory()
image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8), "RGB")
metadata.analyze(image, b"", "png")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    metadata.analyze(image, b"", "png")
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_answers_reuse_freed_memory_instead_of_faulting_pages_in() -> None:
    # In a process of its own: the thresholds are process-wide, and this one may have set them already.
    # Untuned, each answer of a 640×480 image faulted ~1,300 pages in.
    result = subprocess.run([sys.executable, "-c", _FAULTS_PER_METADATA_ANSWER], capture_output=True, text=True,
                            check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert float(result.stdout) < 100
