"""The process's image cache: a crop is cut once per image and box, and never handed out for another."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from windmill.image_cache import ENTRY_OVERHEAD_BYTES, PREPARED_BYTES, ImageSource, SingleFlightCache
from windmill.images import BadImage, crop_for_service, prepare_image
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


def test_decoded_pixels_are_kept_by_their_bytes_not_by_their_number(tmp_path: Path) -> None:
    # Kept for the boxes a later merge moves: the pixels of small images are still there, by the hundred.
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


def test_the_first_box_cut_from_an_image_has_the_images_other_boxes_cut_with_it(pictures: tuple[Path, Path]) -> None:
    # Face and pose ask for an image's person box; colors asks for its other boxes long after, when its pixels
    # have gone (here: room for one image's pixels, and another image decoded in between).
    one, two = pictures
    source = ImageSource(settings_from_mapping({}), decoded_bytes=80 * 60 * 3 + ENTRY_OVERHEAD_BYTES)
    asked: list[int] = []

    def boxes_still_to_come() -> list[object]:
        asked.append(1)
        return [BOX_A, [50, 30, 25, 25], {"x": "not a box"}]  # itself, the other box (as a list), a broken one

    person = source.crop(1, str(one), None, BOX_A, other_boxes=boxes_still_to_come)
    assert source.crop(1, str(one), None, BOX_A, other_boxes=boxes_still_to_come) is person
    assert len(asked) == 1, "only the call that cut the box asks for the others"
    source.crop(2, str(two), None, BOX_A)
    other = source.crop(1, str(one), None, BOX_B)
    assert source.decoded_images.loads == 2, "the other box was cut from the first decode"
    assert (source.crops.loads, other.image.data) == (3, direct(one, BOX_B))


def test_the_other_boxes_failing_is_never_kept_as_the_crops_failure(pictures: tuple[Path, Path]) -> None:
    one, _ = pictures
    source = ImageSource(settings_from_mapping({}))

    def database_away() -> list[object]:
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError, match="went away"):
        source.crop(1, str(one), None, BOX_A, other_boxes=database_away)
    assert source.crop(1, str(one), None, BOX_A).image.data == direct(one, BOX_A)


def test_an_offer_never_waits_for_a_load_in_progress() -> None:
    cache: SingleFlightCache[str, str] = SingleFlightCache(10)
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "loaded"

    loader = threading.Thread(target=cache.get, args=("a", slow))
    loader.start()
    assert started.wait(5)
    cache.offer("a", lambda: "offered")  # returns at once: another caller is loading "a"
    cache.offer("b", lambda: "offered")
    release.set()
    loader.join(5)
    assert (cache.get("a", lambda: "never"), cache.get("b", lambda: "never"), cache.loads) == ("loaded", "offered", 2)
    cache.offer("c", lambda: int("not a number"))  # nobody asked: not raised, kept as get keeps a failure
    with pytest.raises(ValueError):
        cache.get("c", lambda: "never")


def test_an_image_decoded_before_is_prepared_without_a_decode_and_kept_apart(
        pictures: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The caption scorer's image (a service answered on it) is sent undecoded; the entry it leaves is not the one
    that crops rely on having been decoded in full."""
    one, _ = pictures
    decodes: list[str] = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda image: decodes.append("decode") or load(image))
    source = ImageSource(settings_from_mapping({}))
    trusted = source.prepared(1, str(one), None, decoded_before=True)
    assert decodes == [] and trusted == prepare_image(one.read_bytes(), decoded_before=True)
    decodes.clear()
    assert source.prepared(1, str(one), None) == trusted  # validated in full: its own entry, decoded
    assert decodes == ["decode"] and source.prepared_images.loads == 2


def test_an_image_decoded_before_uses_the_fully_validated_entry_this_process_has(pictures: tuple[Path, Path]) -> None:
    one, _ = pictures
    source = ImageSource(settings_from_mapping({}))
    validated = source.prepared(1, str(one), None)
    assert source.prepared(1, str(one), None, decoded_before=True) is validated
    assert source.prepared_images.loads == 1


def test_a_permanent_failure_is_kept_for_a_while_then_loaded_again() -> None:
    now = [0.0]
    cache: SingleFlightCache[str, str] = SingleFlightCache(10, failure_ttl_s=30, clock=lambda: now[0])
    outcome: list[Callable[[], str]] = [lambda: int("missing")]  # a file not there yet: a permanent failure
    with pytest.raises(ValueError):
        cache.get("a", lambda: outcome[0]())
    outcome[0] = lambda: "restored"
    now[0] = 29.0  # the tasks of one image, coming together, share the failure
    with pytest.raises(ValueError):
        cache.get("a", lambda: outcome[0]())
    now[0] = 30.0  # later (the image submitted again once put right) it is read afresh; it was kept for good
    assert cache.get("a", lambda: outcome[0]()) == "restored"
    assert cache.loads == 2


def test_an_image_file_put_right_is_read_again(tmp_path: Path) -> None:
    # A file missing when its tasks ran, restored, and its image submitted again: it once failed with "image file
    # not found" until the worker restarted.
    source = ImageSource(settings_from_mapping({}))
    source.prepared_images.failure_ttl_s = 0  # (30 s in a worker)
    path = tmp_path / "late.jpg"
    with pytest.raises(BadImage, match="image file not found"):
        source.prepared(1, str(path), None)
    Image.new("RGB", (64, 48), "teal").save(path)
    assert source.prepared(1, str(path), None).data == path.read_bytes()


def test_an_image_over_the_services_request_limit_is_sent_re_encoded_with_its_pixels_kept(tmp_path: Path) -> None:
    # The services of df57b25 refuse a request over 8 MiB (spec §2.7), so a large phone photo sent as it is came
    # back HTTP 413 from every service. Lower JPEG qualities are tried in turn; the pixels stay (boxes are in them).
    import io

    original = tmp_path / "big.jpg"
    noise = Image.effect_noise((512, 512), 60).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG", quality=100)
    original.write_bytes(buffer.getvalue())  # about 390 KB; at quality 90 about 190 KB, at 80 about 150 KB
    limit = 160_000
    settings = settings_from_mapping({"WINDMILL_SERVICE_MAX_BYTES": str(limit + 64 * 1024)})
    for first_use in ("prepared", "pixels"):  # a service sends it, or the postprocess role cuts crops from it first
        source = ImageSource(settings)
        if first_use == "pixels":
            assert source.pixels(1, str(original), None).size == (512, 512)
        sent = source.prepared(1, str(original), None)
        assert len(sent.data) <= limit < original.stat().st_size, first_use
        assert (sent.width, sent.height) == (512, 512) and sent.format == "JPEG"
    too_small = ImageSource(settings_from_mapping({"WINDMILL_SERVICE_MAX_BYTES": str(100_000 + 64 * 1024)}))
    with pytest.raises(BadImage, match=r"even as a JPEG of quality 70, over the 98 KiB the services take"):
        too_small.prepared(1, str(original), None)


def test_a_file_replaced_under_its_name_is_read_afresh_not_served_from_the_cache(tmp_path: Path) -> None:
    # Its entry was keyed by the image's row alone: a blue file copied over a red one kept the red bytes (and their
    # colors) for as long as the process ran.
    source = ImageSource(settings_from_mapping({}))
    path = tmp_path / "x.jpg"
    Image.new("RGB", (64, 48), "red").save(path)
    red = source.prepared(1, str(path), None).data
    assert source.pixels(1, str(path), None).getpixel((5, 5))[0] > 200
    Image.new("RGB", (64, 48), "blue").save(path)
    later = path.stat().st_mtime_ns + 1_000_000_000  # a file's clock ticks coarsely: a replacement comes later
    os.utime(path, ns=(later, later))
    assert source.prepared(1, str(path), None).data == path.read_bytes() != red
    assert source.pixels(1, str(path), None).getpixel((5, 5))[2] > 200
    crop = source.crop(1, str(path), None, {"x": 0, "y": 0, "width": 32, "height": 24})
    assert crop.image.to_rgb().getpixel((5, 5))[2] > 200


def test_a_file_registered_while_it_was_written_is_read_again_once_complete(tmp_path: Path) -> None:
    # `images watch` can take a file before its writer is done: its truncation was kept 30 s as the image's failure,
    # and the tasks queued again once it settled failed the same way.
    whole = tmp_path / "whole.jpg"
    Image.effect_noise((128, 96), 40).convert("RGB").save(whole, quality=90)
    data = whole.read_bytes()
    path = tmp_path / "arriving.jpg"
    path.write_bytes(data[: len(data) // 2])
    source = ImageSource(settings_from_mapping({}))
    with pytest.raises(BadImage, match="truncated"):
        source.prepared(1, str(path), None)
    with path.open("ab") as rest:
        rest.write(data[len(data) // 2:])
    assert source.prepared(1, str(path), None).data == data
