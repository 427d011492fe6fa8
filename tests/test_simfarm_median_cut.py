"""The stand-in's median cut gives exactly Pillow's groups (Image.quantize, MEDIANCUT): the same palette colours with
the same pixel counts, on images built to hit its ties (equal box counts, equal channel ranges, equal distances to
two palette entries, boxes of one colour, fewer colours than entries)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from windmill.simfarm.median_cut import _pillow_groups, median_cut_groups
from windmill.simfarm.server import SAMPLES_DIR


def _random_images(seed: int, count: int) -> Iterator[tuple[Image.Image, int]]:
    rng = np.random.default_rng(seed)
    for number in range(count):
        width, height = int(rng.integers(1, 70)), int(rng.integers(1, 70))
        kind = number % 6
        if kind == 0:  # noise: almost every pixel its own colour
            pixels = rng.integers(0, 256, (height, width, 3))
        elif kind == 1:  # a few levels per channel: many equal values and equal box counts
            pixels = rng.integers(0, int(rng.integers(2, 6)), (height, width, 3)) * int(rng.integers(1, 60))
        elif kind == 2:  # a handful of colours, often fewer than palette entries
            levels = rng.integers(0, 256, (int(rng.integers(1, 12)), 3))
            pixels = levels[rng.integers(0, len(levels), (height, width))]
        elif kind == 3:  # grey: the three channels' ranges equal, the weights decide
            pixels = np.repeat(rng.integers(0, 256, (height, width, 1)), 3, axis=2)
        elif kind == 4:  # a gradient of one hue
            pixels = (np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3)) * rng.random(3)).astype(int)
        else:  # a flat colour with a little noise: a small colour cube, many distances tied
            pixels = np.clip(rng.integers(0, 256, 3) + rng.integers(-3, 4, (height, width, 3)), 0, 255)
        yield Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB"), int(rng.choice([8, 8, 2, 3, 5, 16, 256]))


@pytest.mark.parametrize("seed", [0, 1])
def test_groups_are_pillows_on_images_built_for_ties(seed: int) -> None:
    differing = [(image.size, colors) for image, colors in _random_images(seed, 600)
                 if median_cut_groups(image, colors) != _pillow_groups(image, colors)]
    assert not differing, f"{len(differing)} of 600 differ, e.g. {differing[:3]}"


@pytest.mark.parametrize("path", sorted(SAMPLES_DIR.glob("*.jpg")), ids=lambda path: path.stem)
def test_groups_are_pillows_on_the_samples_thumbnails(path: object) -> None:
    with Image.open(str(path)) as image:
        rgb = image.convert("RGB")
    for size in ((64, 64), (32, 32), (200, 200)):
        small = rgb.copy()
        small.thumbnail(size, Image.Resampling.BILINEAR)
        assert median_cut_groups(small, 8) == _pillow_groups(small, 8)


def test_more_distinct_colours_than_pillow_hashes_go_to_pillow() -> None:
    """Past 65,536 distinct colours Pillow coarsens them before cutting: that case is Pillow's own."""
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 300, 3), dtype=np.uint8), "RGB")
    assert median_cut_groups(image, 8) == _pillow_groups(image, 8)
