"""The name of a merged box, as everything that shows or hands one on calls it: the tag drawn on the picture, the
COCO category and CSV label of `export`, and the box's label in the consensus. Pure: merged_data in, a name out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any


def box_label(box: Mapping[str, Any]) -> str:
    """The name of a merged box (merged_data): the label most of its detections gave (the tag, the COCO category
    of `export`); else its first listed label, else its cluster's class."""
    labels = [str(d.get("label")) for d in box.get("detections") or [] if isinstance(d, dict) and d.get("label")]
    label = Counter(labels).most_common(1)[0][0] if labels else ""
    if not label:
        listed = [str(item) for item in box.get("labels") or [] if item]
        label = listed[0] if listed else str(box.get("cluster_id") or "object").rsplit("_", 1)[0]
    return label
