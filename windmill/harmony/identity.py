"""Box identity across recomputes: which newly merged boxes are the stored ones again, so that a box that only
moved by a few pixels keeps its row (and its colors/face/pose answers) instead of being replaced and analysed
again. Pure: plain tuples in, plain dicts out."""

from __future__ import annotations

from collections.abc import Sequence

from .geometry import overlap

# Boxes of one class overlapping at least this much are the same object seen again: a recompute with one more
# detector moves a weighted box by a few pixels (IoU ≈ 0.9), a different object rarely overlaps this much.
SAME_BOX_IOU = 0.85

Box = tuple[str, tuple[int, int, int, int]]  # class key, (x, y, width, height)


def match_boxes(stored: Sequence[tuple[int, Box]], fresh: Sequence[Box], *, same_box_iou: float = SAME_BOX_IOU
                ) -> dict[int, int]:
    """fresh index → stored id for each fresh box that is a stored box again (same class, IoU ≥ threshold),
    pairing the most overlapping first; each stored box is matched at most once."""
    pairs = []
    for fresh_index, (fresh_class, fresh_box) in enumerate(fresh):
        for stored_id, (stored_class, stored_box) in stored:
            if stored_class == fresh_class:
                iou, _ = overlap(stored_box, fresh_box)
                if iou >= same_box_iou:
                    pairs.append((-iou, fresh_index, stored_id))
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for _, fresh_index, stored_id in sorted(pairs):
        if fresh_index not in matched and stored_id not in taken:
            matched[fresh_index] = stored_id
            taken.add(stored_id)
    return matched
