"""The process's image cache: a crop is cut once per image and box, and never handed out for another."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from windmill.image_cache import (
    DECODED_BYTES,
    ENTRY_OVERHEAD_BYTES,
    PREPARED_BYTES,
    ImageSource,
    SingleFlightCache,
)
from windmill.images import DEFAULT_MAX_PIXELS, BadImage, crop_for_service, prepare_image
from windmill.settings import settings_from_mapping

BOX_A = {"x": 10, "y": 8, "width": 30, "height": 20}
BOX_B = {"x": 50, "y": 30, "width": 25, "height": 25}


def quadrants(path: Path, colours: list[tuple[int, int, int]]) -> Path:
    """An 80 × 60 JPEG whose quadrants have the given colours, so that every box cuts different pixels."""
    image = Image.new("RGB", (80, 60))
    for index, colour in enumerate(colours):
        left, top = index % 2 * 40, index // 2 * 30
        image.paste(colour, (left, top, left + 40, top + 30))
    image.save(path, "JPEG", quality=95)
    return path


@pytest.fixture
def pictures(tmp_path: Path) -> tuple[Path, Path]:
    return (quadrants(tmp_path / "one.jpg", [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]),
            quadrants(tmp_path / "two.jpg", [(10, 10, 10), (250, 250, 250), (120, 60, 200), (0, 120, 120)]))


def direct(path: Path, box: dict[str, int]) -> bytes:
    return crop_for_service(prepare_image(path.read_bytes()).to_rgb(), box)[0].data


def test_a_crop_is_cut_once_per_image_and_box_and_is_that_box_of_that_image(pictures: tuple[Path, Path]) -> None:
    one, two = pictures
    source = ImageSource(settings_from_mapping({}))
    first = source.crop(1, str(one), None, BOX_A)
    assert source.crop(1, str(one), None, BOX_A) is first  # colors, face and pose of one box: one crop
    assert source.crop(1, str(one), None, [10, 8, 30, 20]) is first  # the same box written as a list
    assert source.crops.loads == 1

    other_box = source.crop(1, str(one), None, BOX_B)
    other_image = source.crop(2, str(two), None, BOX_A)
    assert source.crops.loads == 3
    assert first.image.data == direct(one, BOX_A)
    assert other_box.image.data == direct(one, BOX_B)
    assert other_image.image.data == direct(two, BOX_A)
    assert len({first.image.data, other_box.image.data, other_image.image.data}) == 3
    assert first.box.as_bbox() == BOX_A and other_box.box.as_bbox() == BOX_B
    assert first.image_size == other_image.image_size == (80, 60)
    assert (first.image.width, first.image.height, first.image.filename) == (30, 20, "image.jpg")


def test_a_box_that_cannot_be_cut_is_a_bad_image(pictures: tuple[Path, Path]) -> None:
    one, _ = pictures
    source = ImageSource(settings_from_mapping({}))
    with pytest.raises(BadImage, match="has no area inside"):
        source.crop(1, str(one), None, {"x": 500, "y": 5, "width": 10, "height": 10})
    with pytest.raises(BadImage, match="not a box"):
        source.crop(1, str(one), None, {"x": "left"})


def test_prepared_images_are_kept_by_their_bytes_not_by_their_number(tmp_path: Path) -> None:
    # Each service of a process reads its own queue: an image prepared for the first of them must still be there
    # when a service a hundred images behind asks for it.
    paths = [quadrants(tmp_path / f"{n}.jpg", [(n, 0, 0), (0, n, 0), (0, 0, n), (n, n, n)]) for n in range(100)]
    source = ImageSource(settings_from_mapping({}))
    first = [source.prepared(n, str(path), None) for n, path in enumerate(paths)]
    assert [source.prepared(n, str(path), None) for n, path in enumerate(paths)] == first
    assert (source.prepared_images.loads, source.prepared_images.hits) == (100, 100)
    assert source.prepared_images.weight == sum(len(prepared.data) + ENTRY_OVERHEAD_BYTES for prepared in first)


def test_entries_go_least_recently_used_first_once_their_weight_is_over_the_capacity() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(10, weigh=lambda value: len(str(value)))
    for key in ("a", "b", "c"):
        cache.get(key, lambda key=key: key * 3)
    assert len(cache) == 3 and cache.weight == 9
    cache.get("a", lambda: "never loaded")  # a hit: "a" is now the most recently used
    cache.get("d", lambda: "dddd")  # 13 > 10: "b" goes (the least recently used), then 10 fits
    assert (len(cache), cache.weight) == (3, 10)
    assert cache.get("b", lambda: "BBB") == "BBB", "b should have gone"
    assert cache.get("a", lambda: "reloaded") == "aaa", "a was used after b and c: it stays"
    cache.get("huge", lambda: "x" * 11)  # heavier than the whole capacity: not kept, nor is anything else
    assert (len(cache), cache.weight) == (0, 0)


def test_a_kept_failure_weighs_as_a_large_image(tmp_path: Path) -> None:
    source = ImageSource(settings_from_mapping({}), prepared_bytes=3 * PREPARED_BYTES // 64)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    for image_id in range(4):
        with pytest.raises(BadImage):
            source.prepared(image_id, str(broken), None)
    assert len(source.prepared_images) == 3, "a bounded number of failures (and the bytes their tracebacks hold)"


def test_decoded_pixels_are_kept_by_their_bytes_until_colors_asks_for_the_images_boxes(tmp_path: Path) -> None:
    # Face and pose ask for an image's person boxes, and colors, whose queue lags behind in a bulk run, for its other
    # boxes after a couple of hundred other images: the pixels of small images are still there, by the hundred.
    paths = [quadrants(tmp_path / f"{n}.jpg", [(n, 0, 0), (0, n, 0), (0, 0, n), (n, n, n)]) for n in range(100)]
    source = ImageSource(settings_from_mapping({}))
    first_wave = [source.crop(n, str(path), None, BOX_A) for n, path in enumerate(paths)]
    second_wave = [source.crop(n, str(path), None, BOX_B) for n, path in enumerate(paths)]
    assert source.decoded_images.loads == 100, "each image decoded once, its second box cut from the kept pixels"
    assert source.decoded_images.weight == 100 * (80 * 60 * 3 + ENTRY_OVERHEAD_BYTES)
    assert [crop.image.data for crop in second_wave[:2]] == [direct(paths[0], BOX_B), direct(paths[1], BOX_B)]
    assert first_wave[0].image.data == direct(paths[0], BOX_A)


def test_decoded_pixels_of_large_images_are_bounded_by_bytes_not_by_count(tmp_path: Path) -> None:
    paths = [quadrants(tmp_path / f"{n}.jpg", [(n, 0, 0), (0, n, 0), (0, 0, n), (n, n, n)]) for n in range(5)]
    one_image = 80 * 60 * 3 + ENTRY_OVERHEAD_BYTES
    source = ImageSource(settings_from_mapping({}), decoded_bytes=2 * one_image)  # room for two images' pixels
    for n, path in enumerate(paths):
        source.pixels(n, str(path), None)
    assert (len(source.decoded_images), source.decoded_images.weight) == (2, 2 * one_image)
    source.pixels(4, str(paths[4]), None)
    source.pixels(0, str(paths[0]), None)
    assert source.decoded_images.loads == 6, "the last image was kept, the first had gone"
    # The default budget holds the largest image accepted, so that its boxes too are cut from one decode.
    assert DECODED_BYTES == DEFAULT_MAX_PIXELS * 3 + ENTRY_OVERHEAD_BYTES


def test_crops_are_kept_by_their_bytes_until_colors_asks_for_a_person_box(tmp_path: Path) -> None:
    # Colors asks for a person box's crop long after face and pose did: kept, by the hundred (64 by count had cut a
    # quarter of the bench's crops twice).
    paths = [quadrants(tmp_path / f"{n}.jpg", [(n, 0, 0), (0, n, 0), (0, 0, n), (n, n, n)]) for n in range(50)]
    source = ImageSource(settings_from_mapping({}))
    boxes = (BOX_A, BOX_B)
    crops = [source.crop(n, str(path), None, box) for n, path in enumerate(paths) for box in boxes]
    assert [source.crop(n, str(path), None, box) for n, path in enumerate(paths) for box in boxes] == crops
    assert (source.crops.loads, source.crops.hits) == (100, 100)
    assert source.crops.weight == sum(len(crop.image.data) + ENTRY_OVERHEAD_BYTES for crop in crops)
