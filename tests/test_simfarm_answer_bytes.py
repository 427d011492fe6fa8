"""The stand-in's answers stay byte for byte what they were when its CPU per request was cut (issue 19 item 5):
every service, with its parameters, on the bundled samples, synthetic scenes, their objects' crops and images of
few colours, computed per request. tests/data/simfarm/answer_digests.json holds the SHA-256 of each answer body
as the code before that work gave it; a change of any answer is a failure here, not a new fixture. Recorded anew
once, on purpose (2026-12-07): the palettes of colors (and with them the colour word of BLIP's and Ollama's
captions) by Pillow's fast octree instead of its median cut, from a JPEG decoded at the thumbnail's size rather
than twice it, and metadata's statistics on a JPEG decoded at half size; every other service's answers were
unchanged by those commits.

To see what changed: `python -m tests.test_simfarm_answer_bytes` prints the digests of this tree.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from windmill.bench.scenes import write_scenes
from windmill.images import crop_for_service
from windmill.images.validate import prepare_image_and_pixels
from windmill.simfarm.annotations import SIDECAR_SUFFIX, AnnotationIndex
from windmill.simfarm.answers import Answerer, Options
from windmill.simfarm.contract import PROFILES
from windmill.simfarm.inputs import Picture
from windmill.simfarm.server import SAMPLES_DIR

DIGESTS = Path(__file__).parent / "data" / "simfarm" / "answer_digests.json"
SCENES = 8
SCENE_SEED = 19
# Per analyzer, the parameters a request may carry besides the image (None: the service's defaults).
PARAMETERS: dict[str, list[dict[str, str]]] = {
    "colors": [{}, {"regions": "4"}, {"regions": "9"}, {"regions": "16"}],
    "ollama": [{}, {"prompt": "Describe the colours.", "model": "llava:13b"}],
}
CAPTIONS = ("a cat sitting on a red sofa", "two people and a dog in a park")


def _jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _few_colours() -> Iterator[tuple[str, bytes]]:
    """Images whose palettes stop early (single colours, two colours, a grey ramp) or tie on pixel counts."""
    yield "flat-red.png", _png(Image.new("RGB", (40, 30), (200, 20, 20)))
    yield "one-pixel.png", _png(Image.new("RGB", (1, 1), (12, 200, 99)))
    halves = Image.new("RGB", (64, 64), (0, 0, 255))
    halves.paste((255, 255, 0), (0, 0, 32, 64))
    yield "halves.png", _png(halves)
    yield "grey-ramp.png", _png(Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (48, 1)), "L"))
    rng = np.random.default_rng(5)
    yield "noise.png", _png(Image.fromarray(rng.integers(0, 256, (57, 71, 3), dtype=np.uint8), "RGB"))
    yield "noise-four-levels.png", _png(Image.fromarray((rng.integers(0, 4, (80, 90, 3)) * 85).astype(np.uint8), "RGB"))
    yield "noise.jpg", _jpeg(Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), "RGB"))


def _images(scenes: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(SAMPLES_DIR.glob("*.jpg")):
        yield path.name, path.read_bytes()
    for path in write_scenes(scenes, SCENES, seed=SCENE_SEED):
        data = path.read_bytes()
        yield path.name, data
        _, pixels = prepare_image_and_pixels(data)
        sidecar = json.loads(path.with_name(path.stem + SIDECAR_SUFFIX).read_text())
        for number, item in enumerate(sidecar["objects"]):
            crop, _ = crop_for_service(pixels, item["bbox"])
            yield f"{path.stem}-crop{number}.jpg", crop.data
    yield from _few_colours()


def answer_digests() -> dict[str, str]:
    """Request name → SHA-256 of the answer body, for every request of the set."""
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="windmill-answer-bytes-") as folder:
        images = list(_images(Path(folder)))
        index = AnnotationIndex([SAMPLES_DIR, Path(folder)])
        index.scan(strict=True)
        answerers = {"copic": Answerer(index, cache=False),
                     "both": Answerer(index, Options(("copic", "prismacolor")), cache=False)}
        for name, data in images:
            for profile in PROFILES.values():
                systems = ("copic", "both") if profile.analyzer == "colors" else ("copic",)
                for system in systems:
                    answerer = answerers[system]
                    if profile.scores:
                        for caption in CAPTIONS:
                            body = answerer.score(profile, Picture(data, "upload"), caption)
                            digests[f"{name} {profile.key} score {caption!r}"] = hashlib.sha256(body).hexdigest()
                        continue
                    for params in PARAMETERS.get(profile.analyzer, [{}]):
                        body = answerer.analyze(profile, Picture(data, "upload"), params)
                        key = f"{name} {profile.key} {system} {json.dumps(params, sort_keys=True)}"
                        digests[key] = hashlib.sha256(body).hexdigest()
    return digests


def test_every_answer_is_byte_identical_to_the_recorded_one() -> None:
    expected = json.loads(DIGESTS.read_text())
    actual = answer_digests()
    assert actual.keys() == expected.keys()
    changed = sorted(key for key in expected if actual[key] != expected[key])
    assert not changed, f"{len(changed)} of {len(expected)} answers changed, e.g. {changed[:5]}"


if __name__ == "__main__":
    print(json.dumps(answer_digests(), indent=0, sort_keys=True))
