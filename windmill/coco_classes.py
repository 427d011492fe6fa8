"""COCO's 80 object classes and their category ids, which run 1…90 with ten unused: a COCO file Windmill writes (the
export, the samples' ground truth) numbers its categories as real COCO files do, whichever images it holds; and the
name a label goes by as a category."""

from __future__ import annotations

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

# The ids COCO left unused; the others go to the classes in order.
_UNUSED_IDS = frozenset({12, 26, 29, 30, 45, 66, 68, 69, 71, 83})
COCO_CATEGORY_IDS: dict[str, int] = dict(
    zip(COCO_CLASSES, (i for i in range(1, 91) if i not in _UNUSED_IDS), strict=True))


def category_name(label: str) -> str:
    """A label as a category name: lowercase, underscores as spaces, runs of whitespace as one space, none at either
    end. Detectors and classifiers spell one class differently (Xception writes `dining_table`, another `Dining
    Table`); as one name they are one category, and a COCO class's is COCO's own (`dining table`)."""
    return " ".join(label.replace("_", " ").lower().split())
