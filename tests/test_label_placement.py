"""Labels of drawn boxes never cover one another: on the sample pictures (their annotated objects, and the boxes
harmonized from the stand-in detectors' answers, as the demo draws them) and on adversarial layouts (boxes
sharing a corner, identical and nested boxes, boxes at the picture's edges, a crowd); and each tag stands out
from a light or a dark picture."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from windmill.harmony import DetectorResult, harmonize
from windmill.label_placement import Rect, overlaps, place_labels
from windmill.render import (
    DARK_TAG,
    LIGHT_TAG,
    MERGED_COLOUR,
    FontChoice,
    contrast_ratio,
    label_rectangles,
    render_boxes,
    system_fonts,
    tag_colours,
)
from windmill.simfarm.annotations import load_sidecar, sidecar_path_for
from windmill.simfarm.detections import coco_predictions, two_stage_predictions

SAMPLES = Path(__file__).resolve().parent.parent / "windmill" / "samples"
PICTURES = sorted(SAMPLES.glob("*.jpg"))
FONTS = {"builtin": FontChoice(), "system": system_fonts()}


def merged(x: int, y: int, width: int, height: int, label: str = "person", count: int = 3) -> dict[str, Any]:
    return {"emoji": "", "labels": [label], "detection_count": count,
            "merged_bbox": {"x": x, "y": y, "width": width, "height": height}}


def annotated_boxes(picture: Path) -> list[dict[str, Any]]:
    """Every annotated object of the sample as a merged box (the flag and the staircase span the picture)."""
    sidecar = json.loads(sidecar_path_for(picture).read_text(encoding="utf-8"))
    return [{**merged(*obj["bbox"], label=obj["label"]), "emoji": obj.get("emoji", "")} for obj in sidecar["objects"]]


def harmonized_boxes(picture: Path) -> list[dict[str, Any]]:
    """The merged boxes of the five stand-in detectors' answers about the sample: what the demo draws."""
    sidecar = load_sidecar(sidecar_path_for(picture))
    digest = hashlib.sha256(picture.read_bytes()).hexdigest()
    with Image.open(picture) as image:
        width, height = image.size
    answers = {detector: coco_predictions(detector, sidecar, digest, width, height)
               for detector in ("yolov8", "rtdetr", "detectron2")}
    answers |= {detector: two_stage_predictions(detector, sidecar, digest, width, height)
                for detector in ("clip", "xception")}
    results = [DetectorResult(number, service, {"predictions": predictions})
               for number, (service, predictions) in enumerate(sorted(answers.items()), 1)]
    return [box.to_merged_data() for box in harmonize(results, image_size=(width, height))]


def assert_clear(spots: list[Rect | None], size: tuple[int, int], count: int) -> None:
    """Every label placed, inside the picture, none overlapping another."""
    assert len(spots) == count and None not in spots
    placed = [spot for spot in spots if spot is not None]
    for left, top, right, bottom in placed:
        assert 0 <= left < right <= size[0] and 0 <= top < bottom <= size[1]
    crossing = [(a, b) for a, b in itertools.combinations(placed, 2) if overlaps(a, b)]
    assert not crossing


@pytest.mark.parametrize("font", FONTS, ids=str)
@pytest.mark.parametrize("boxes_of", [annotated_boxes, harmonized_boxes], ids=["annotated", "harmonized"])
@pytest.mark.parametrize("picture", PICTURES, ids=lambda path: path.stem)
def test_labels_of_the_sample_pictures_never_overlap(picture: Path, boxes_of: Any, font: str) -> None:
    boxes = boxes_of(picture)
    with Image.open(picture) as image:
        size = image.size
    if boxes_of is harmonized_boxes and picture.stem != "rocket":
        assert boxes, "the stand-in detectors agree on something in every sample but the rocket"
    assert_clear(label_rectangles(size, boxes, fonts=FONTS[font]), size, len(boxes))


SIZE = (400, 300)
ADVERSARIAL = {
    # Two boxes whose top-left corners coincide: the reference's tags landed on one another.
    "shared-corner": [merged(50, 60, 200, 150), merged(50, 60, 120, 80, "dog")],
    "shared-bottom-right": [merged(50, 60, 200, 150), merged(130, 130, 120, 80)],
    "identical-three": [merged(80, 80, 150, 100, label) for label in ("cat", "dog", "person")],
    "nested": [merged(20 + 20 * k, 20 + 15 * k, 360 - 40 * k, 260 - 30 * k) for k in range(5)],
    "nested-same-corner": [merged(10, 10, 380 - 60 * k, 280 - 45 * k) for k in range(5)],
    "top-edge": [merged(0, 0, 120, 100), merged(130, 0, 120, 100), merged(260, 0, 140, 100)],
    "bottom-edge": [merged(0, 200, 200, 100), merged(150, 250, 250, 50)],
    "whole-picture": [merged(0, 0, 400, 300), merged(0, 0, 400, 300, "scene")],
    "right-edge-narrow": [merged(390, 10, 10, 280), merged(380, 10, 20, 280, "pole")],
    "crowd-in-a-row": [merged(8 + 48 * k, 100, 48, 120) for k in range(8)],
    "tiny-boxes-stacked": [merged(200, 150 + 3 * k, 4, 3, f"dot{k}") for k in range(6)],
}


@pytest.mark.parametrize("font", FONTS, ids=str)
@pytest.mark.parametrize("layout", ADVERSARIAL, ids=str)
def test_labels_of_adversarial_layouts_never_overlap(layout: str, font: str) -> None:
    boxes = ADVERSARIAL[layout]
    assert_clear(label_rectangles(SIZE, boxes, fonts=FONTS[font]), SIZE, len(boxes))


def test_a_label_goes_above_its_box_when_nothing_is_in_the_way() -> None:
    [spot] = place_labels([(50, 60, 249, 209)], [(70, 16)], SIZE)
    assert spot == (50, 44, 120, 60)


def test_two_boxes_sharing_a_corner_get_labels_apart_and_near_their_boxes() -> None:
    big, small = (50, 60, 249, 209), (50, 60, 169, 139)
    spots = place_labels([big, small], [(70, 16), (60, 16)], SIZE)
    assert spots[1] == (50, 44, 110, 60)  # the smaller box chooses first: above
    assert spots[0] is not None and not overlaps(spots[0], spots[1])
    assert spots[0] == (50, 210, 120, 226)  # below the big box: inside its top would hide the small box's edge


def test_a_label_avoids_the_legend() -> None:
    legend = (0, 250, 150, 300)
    [spot] = place_labels([(10, 230, 120, 299)], [(70, 16)], SIZE, [legend])
    assert spot is not None and not overlaps(spot, legend)


def test_labels_that_cannot_all_fit_are_left_out_not_piled_up() -> None:
    spots = place_labels([(0, 0, 19, 19)] * 4, [(20, 10)] * 4, (20, 20))
    assert sorted(spot is None for spot in spots) == [False, False, True, True]
    assert_clear([spot for spot in spots if spot is not None], (20, 20), 2)


# Every grey level and the colours a tag is likeliest to vanish into.
BACKGROUNDS = [(v, v, v) for v in range(0, 256, 15)] + [
    MERGED_COLOUR, (255, 255, 0), (250, 230, 60), (24, 24, 24), (0, 0, 128), (200, 30, 30), (30, 160, 60),
    (120, 110, 100)]


@pytest.mark.parametrize("background", BACKGROUNDS, ids=str)
def test_a_tag_stands_out_from_any_background_and_its_ink_from_the_tag(background: tuple[int, int, int]) -> None:
    fill, ink = tag_colours(background)
    assert contrast_ratio(fill, background) >= 3.5
    assert contrast_ratio(ink, fill) >= 10


@pytest.mark.parametrize(("background", "tag"), [((255, 255, 255), DARK_TAG), ((0, 0, 0), LIGHT_TAG),
                                                 (MERGED_COLOUR, DARK_TAG), ((20, 20, 60), LIGHT_TAG)])
def test_the_drawn_tag_takes_the_colour_that_stands_out(background: tuple[int, int, int],
                                                        tag: tuple[tuple[int, int, int], ...]) -> None:
    image = Image.new("RGB", SIZE, background)
    box = merged(50, 60, 200, 150)
    drawn = np.asarray(render_boxes(image, [box], fonts=FontChoice()))
    [(left, top, right, bottom)] = label_rectangles(SIZE, [box], fonts=FontChoice())
    patch = drawn[top:bottom, left:right].reshape(-1, 3)
    colours, counts = np.unique(patch, axis=0, return_counts=True)
    assert tuple(colours[counts.argmax()]) == tag[0]  # the tag's fill covers most of its rectangle
    assert (patch == tag[1]).all(axis=1).any()  # and its text is written in the ink
