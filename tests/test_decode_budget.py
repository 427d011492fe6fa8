"""The memory a process's image decodes share (windmill/images/budget.py): a decode reserves what it will take from
the image's header, waits while the other threads' decodes hold the budget, and an image whose decode alone takes
more than all of it is refused as a bad image, not attempted."""

from __future__ import annotations

import gc
import io
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.support.image_memory import generate, measure
from windmill.errors import ConfigError
from windmill.image_cache import ImageSource
from windmill.images import BadImage
from windmill.images.budget import DecodeBudget, decode_cost
from windmill.images.validate import prepare_image, prepare_image_and_pixels
from windmill.settings import settings_from_mapping

MIB = 1024 * 1024


def png(mode: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, "PNG")
    return buffer.getvalue()


def test_the_budget_is_a_setting_of_at_least_128_mib() -> None:
    assert settings_from_mapping({}).decode_budget_bytes == 1024 * MIB
    assert settings_from_mapping({"WINDMILL_DECODE_BUDGET_BYTES": "268435456"}).decode_budget_bytes == 256 * MIB
    for bad in ("1000", "0", "lots", "-5"):
        with pytest.raises(ConfigError, match=r"^WINDMILL_DECODE_BUDGET_BYTES must be a whole number between "
                                              r"134,217,728 and 1,099,511,627,776, not '"):
            settings_from_mapping({"WINDMILL_DECODE_BUDGET_BYTES": bad})


def test_an_image_whose_decode_takes_more_than_the_whole_budget_is_a_bad_image(tmp_path: Path) -> None:
    """4200 × 4200 RGBA: 4 bytes a pixel decoded and 4 flattened, 135 MiB, over the least budget (128 MiB). It is
    refused from its header, before a pixel is decoded, with the reason its error row gives."""
    file = tmp_path / "huge.png"
    file.write_bytes(generate("rgba_png", 4200, 4200))
    images = ImageSource(settings_from_mapping({"WINDMILL_DECODE_BUDGET_BYTES": str(128 * MIB)}))
    with pytest.raises(BadImage) as refused:
        images.prepared(1, str(file), None)
    assert refused.value.reason == ("image 4200×4200 RGBA PNG takes about 134.6 MiB to decode, over the 128 MiB a"
                                    " worker may hold for decoding (WINDMILL_DECODE_BUDGET_BYTES)")
    assert images.budget.held == 0


def test_a_decode_waits_for_the_share_another_holds_then_goes_on() -> None:
    budget = DecodeBudget(64 * MIB)
    data = png("RGBA", (2000, 2000))  # 4 + 4 bytes a pixel: 30.5 MiB
    other = budget.reserve(40 * MIB, lambda: "another image")  # a decode of another thread, under way
    outcome: list[object] = []
    waiting = threading.Thread(target=lambda: outcome.append(prepare_image(data, budget=budget)))
    waiting.start()
    deadline = time.monotonic() + 30
    while budget.waited == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert budget.waited == 1 and waiting.is_alive() and not outcome  # it waits: a slot, not an error
    other.release()
    waiting.join(30)
    assert len(outcome) == 1 and outcome[0].changes == ("RGBA alpha flattened over white",)
    assert budget.held == 0


def test_a_large_decode_is_not_overtaken_for_ever_by_small_ones() -> None:
    budget = DecodeBudget(100 * MIB)
    first = budget.reserve(60 * MIB, lambda: "a")
    order: list[str] = []

    def decode(name: str, cost: int) -> None:
        budget.reserve(cost, lambda: name).release()
        order.append(name)

    large = threading.Thread(target=decode, args=("large", 80 * MIB))
    large.start()
    while budget.waited < 1:
        time.sleep(0.01)
    small = threading.Thread(target=decode, args=("small", 10 * MIB))
    small.start()  # 60 + 10 fits, but the large one came first
    while budget.waited < 2:
        time.sleep(0.01)
    first.release()
    large.join(30)
    small.join(30)
    assert order == ["large", "small"] and budget.held == 0


def test_pixels_keep_their_share_until_they_are_dropped() -> None:
    budget = DecodeBudget(256 * MIB)
    _prepared, pixels = prepare_image_and_pixels(png("RGB", (1500, 1000)), budget=budget)
    assert budget.held == 1500 * 1000 * 4  # Pillow's RGB: 4 bytes a pixel
    del pixels
    gc.collect()
    assert budget.held == 0


def test_pixels_the_cache_keeps_give_their_share_back(tmp_path: Path) -> None:
    """The cache of decoded pixels is bounded by itself: pixels it keeps must not hold the budget, or a decode
    waiting for their share would wait for an eviction only a later decode makes."""
    file = tmp_path / "small.png"
    file.write_bytes(png("RGB", (300, 200)))
    images = ImageSource(settings_from_mapping({}))
    pixels = images.pixels(1, str(file), None)
    assert pixels.size == (300, 200) and images.budget.held == 0


def test_the_cost_of_a_decode_is_reckoned_from_the_header() -> None:
    assert decode_cost("RGB", (640, 480), image_format="JPEG", reduced=True) == 80 * 60 * 4
    assert decode_cost("RGBA", (100, 100), converted=True) == 100 * 100 * 8
    assert decode_cost("P", (100, 100), converted=True) == 100 * 100 * 5
    assert decode_cost("I;16", (100, 100), converted=True) == 100 * 100 * 6
    assert decode_cost("L", (100, 100), converted=True) == 100 * 100 * 2  # a grayscale rotation stays grayscale
    assert decode_cost("L", (100, 100), to_rgb=True) == 100 * 100 * 5


def test_a_decodes_memory_goes_back_to_the_system_when_it_ends_not_to_its_threads_arena(tmp_path: Path) -> None:
    """Four lanes preparing a 4000 × 4000 EXIF-rotated CMYK JPEG (128 MB at the peak) one at a time: Pillow's
    blocks of 16 MiB came from each thread's malloc arena and stayed there once freed (glibc keeps what is under
    32 MiB), so each lane that had decoded one kept its memory, 2.5 images' worth; blocks of 64 MiB are mapped
    for each image and unmapped when it goes."""
    file = tmp_path / "rotated-cmyk.jpg"
    file.write_bytes(generate("rotated_cmyk_jpeg", 4000, 4000))
    measured = measure("concurrent", file, threads=4, env={"WINDMILL_DECODE_BUDGET_BYTES": str(128 * MIB)})
    assert len(measured.get("outcomes", [])) == 4, measured
    one_image = 4000 * 4000 * 8
    assert measured["peak_growth"] <= one_image * 1.25, f"{measured['peak_growth'] / one_image:.2f} images"


def test_concurrent_decodes_of_huge_images_hold_one_at_a_time(tmp_path: Path) -> None:
    """Four service lanes preparing a 3000 × 3000 RGBA PNG at once (72 MB each at the peak), with the least budget
    (128 MiB): one at a time, the peak is one image's. Without a budget, the four overlapped (2 to 4 images)."""
    file = tmp_path / "rgba.png"
    file.write_bytes(generate("rgba_png", 3000, 3000))
    measured = measure("concurrent", file, threads=4, env={"WINDMILL_DECODE_BUDGET_BYTES": str(128 * MIB)})
    assert measured.get("outcomes") == ["RGBA alpha flattened over white"] * 4, measured
    one_image = 3000 * 3000 * 8
    assert measured["peak_growth"] <= one_image + 24 * MIB, f"{measured['peak_growth'] / one_image:.2f} images"


def test_an_ordinary_photos_check_is_not_held_up_by_a_huge_image_waiting() -> None:
    """A 640 × 480 JPEG sent as it is is checked at 1/8 scale (19 KB): such decodes are not counted, so they neither
    wait behind a huge image waiting for its share nor pay for the lock (4 µs of a 0.35 ms decode)."""
    budget = DecodeBudget(128 * MIB)
    first = budget.reserve(100 * MIB, lambda: "a huge image, decoding")
    large = threading.Thread(target=lambda: budget.reserve(100 * MIB, lambda: "another").release())
    large.start()
    while budget.waited < 1:
        time.sleep(0.01)
    small = decode_cost("RGB", (640, 480), image_format="JPEG", reduced=True)
    done = threading.Event()
    threading.Thread(target=lambda: (budget.reserve(small, lambda: "a photo").release(), done.set())).start()
    assert done.wait(30) and budget.waited == 1 and large.is_alive()
    first.release()
    large.join(30)
    assert budget.held == 0
