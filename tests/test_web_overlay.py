"""The image page's shapes (windmill.web.overlay, pure): tags of merged boxes never cover each other, pose landmarks
stored as fractions of the image land on its pixels, unusable shapes are skipped."""

from __future__ import annotations

import pytest

from windmill.web.overlay import SHOWN_PX, Rect, build_overlay, caption_font, dot_radius, place_tags


def overlapping(rects: tuple[Rect, ...], font: float) -> list[tuple[int, int]]:
    line = font * 1.25
    boxes = [(r.tag_x, r.tag_y - font, r.tag_x + 0.6 * font * (len(r.caption) + 1), r.tag_y - font + line)
             for r in rects]
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes))
            if boxes[i][0] < boxes[j][2] and boxes[j][0] < boxes[i][2] and boxes[i][1] < boxes[j][3]
            and boxes[j][1] < boxes[i][3]]


@pytest.mark.parametrize("layout", [
    [(10, 0, 300, 400), (12, 0, 280, 380), (14, 2, 260, 300)],  # nested, all at the top edge
    [(100, 100, 50, 50), (100, 100, 80, 80)],  # sharing a corner
    [(480, 200, 30, 30), (470, 205, 40, 40)],  # at the right edge
    [(0, 50, 100, 100), (60, 50, 100, 100), (120, 50, 100, 100)],  # side by side, long captions
])
def test_tags_of_merged_boxes_never_cover_each_other(layout: list[tuple[int, int, int, int]]) -> None:
    rects = tuple(Rect(x, y, w, h, caption="space_shuttle ×3", emoji="🚀") for x, y, w, h in layout)
    placed = place_tags(rects, (512, 512), 16)
    assert overlapping(placed, 16) == []
    assert all(r.tag_x >= 0 and r.tag_y - 16 >= 0 for r in placed)


def test_faces_and_poses_land_on_the_image_pixels() -> None:
    record = {
        "merged_boxes": [{"merged_data": {"merged_bbox": {"x": 10, "y": 20, "width": 100, "height": 200},
                                          "labels": ["person"], "emoji": "🧑", "detection_count": 2}},
                         {"merged_data": {"merged_bbox": {"x": 1, "y": 1, "width": -5, "height": 3}}}],
        "ml_results": {"yolov8": [{"status": "error", "result_id": 9, "data": {}},
                                  {"status": "success", "result_id": 3, "data": {"predictions": [
                                      {"label": "person", "confidence": 0.9,
                                       "bbox": {"x": 12, "y": 22, "width": 90, "height": 190}}]}}]},
        "postprocessing_results": {"1": {
            "face": {"status": "success", "data": {"predictions": [
                {"bbox": {"x": 40, "y": 30, "width": 20, "height": 24}, "keypoints": {"nose_tip": [50, 44]}}]}},
            "pose": {"status": "success", "data": {"predictions": [{"landmarks": {
                "left_shoulder": {"x": 0.1, "y": 0.25, "visibility": 0.9},
                "left_elbow": {"x": 0.2, "y": 0.5, "visibility": 0.9},
                "left_wrist": {"x": 0.3, "y": 0.75, "visibility": 0.1}}}]}}}},
    }
    overlay = build_overlay(record, (400, 200), ["yolov8", "rtdetr"])
    assert [(r.x, r.y, r.width, r.height) for r in overlay.merged.rects] == [(10, 20, 100, 200)]
    assert overlay.merged.rects[0].caption == "person ×2"
    [yolo] = overlay.detectors
    assert (yolo.name, yolo.count) == ("yolov8", 1)  # the latest *successful* answer, rtdetr never answered
    assert overlay.faces.count == 1 and overlay.faces.points == ((50.0, 44.0),)
    assert sorted(overlay.poses.points) == [(40.0, 50.0), (80.0, 100.0)]  # the wrist is not visible enough
    assert overlay.poses.lines == ((40.0, 50.0, 80.0, 100.0),)


def test_odd_shapes_of_a_stored_answer_draw_what_they_can_and_never_fail() -> None:
    # An answer is stored as it came: a face's keypoints as a list once made the image page answer 500.
    face = {"bbox": {"x": 40, "y": 30, "width": 20, "height": 24}}
    answers = [
        {"predictions": [{**face, "keypoints": [[50, 44], {"x": 52, "y": 46}, "nose", [1, 2, 3]]}]},
        {"predictions": [{**face, "keypoints": "nose_tip"}, {**face, "keypoints": 7}, "a face", None]},
        {"predictions": 5}, {"predictions": {"bbox": [1, 2, 3, 4]}}, {"predictions": "face"},
    ]
    record = {"postprocessing_results": {
        str(box): {"face": {"status": "success", "data": data}, "pose": {"status": "success", "data": data}}
        for box, data in enumerate(answers)} | {"9": ["not", "a", "row"], "10": {"face": "success"}}}
    overlay = build_overlay(record, (400, 200), [])
    assert overlay.faces.points == ((50.0, 44.0), (52.0, 46.0))
    assert overlay.faces.count == 3 and overlay.poses.points == ()


@pytest.mark.parametrize("size", [(128, 128), (3000, 200), (640, 480), (4000, 3000), (6000, 4000)])
def test_captions_and_dots_keep_their_size_on_the_screen_whatever_the_image_size(size: tuple[int, int]) -> None:
    # The viewer shows the picture about SHOWN_PX wide: a caption of 12 image pixels on a 128-pixel image was drawn
    # 94 pixels tall and covered it.
    on_screen = SHOWN_PX / max(size)
    assert 12 <= caption_font(size) * on_screen <= 24.1
    assert 2 <= dot_radius(size) * on_screen <= 8
