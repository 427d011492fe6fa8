"""Overlap of boxes with numpy: a 250-box image has up to 31k pairs, too many for a Python loop.

Only pairs within a class are measured (clustering.class_pairs lists them). Boxes are rows of
edges (x1, y1, x2, y2). Boxes that only touch have intersection 0, as in the reference (§7.5:
`ix1 >= ix2` gives IoU 0).
"""

from __future__ import annotations

import numpy as np


def overlaps(edges: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and containment of the pairs (rows[k], cols[k]), as two 1-D arrays.

    Most pairs of an image don't intersect: only those that do get the divisions.
    """
    x1, y1, x2, y2 = (np.ascontiguousarray(column) for column in edges.T)
    inter_w = np.minimum(x2[rows], x2[cols]) - np.maximum(x1[rows], x1[cols])
    hit = np.flatnonzero(inter_w > 0)
    rows, cols = rows[hit], cols[hit]
    inter_h = np.minimum(y2[rows], y2[cols]) - np.maximum(y1[rows], y1[cols])
    inter = inter_w[hit] * np.maximum(inter_h, 0.0)
    area = (x2 - x1) * (y2 - y1)
    area_a, area_b = area[rows], area[cols]
    iou = np.zeros(len(inter_w))
    containment = np.zeros(len(inter_w))
    # Boxes come validated (width, height > 0), so union and smaller area are positive.
    iou[hit] = inter / (area_a + area_b - inter)
    containment[hit] = inter / np.minimum(area_a, area_b)
    return iou, containment


def overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> tuple[float, float]:
    """IoU and containment of two boxes given as (x, y, width, height): `overlaps`'s arithmetic on one pair, in
    plain floats (the merger matches every fresh box against every stored one, and numpy's set-up for a single pair
    cost twenty times the sums). Bit for bit what `overlaps` gives (tests/test_harmony_geometry.py)."""
    ax1, ay1, ax2, ay2 = float(a[0]), float(a[1]), float(a[0] + a[2]), float(a[1] + a[3])
    bx1, by1, bx2, by2 = float(b[0]), float(b[1]), float(b[0] + b[2]), float(b[1] + b[3])
    inter_w = min(ax2, bx2) - max(ax1, bx1)
    if not inter_w > 0:
        return 0.0, 0.0
    inter = inter_w * max(min(ay2, by2) - max(ay1, by1), 0.0)
    area_a, area_b = (ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1)
    return inter / (area_a + area_b - inter), inter / min(area_a, area_b)


def linked(
    iou: np.ndarray, containment: np.ndarray, iou_threshold: float, containment_threshold: float | None
) -> np.ndarray:
    """Which pairs belong together: IoU strictly above the threshold (as the reference), or, when
    the containment rule is on, one box mostly inside the other (upstream 346451a)."""
    together = iou > iou_threshold
    if containment_threshold is not None:
        together |= containment >= containment_threshold
    return together
