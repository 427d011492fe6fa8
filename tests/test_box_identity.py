"""Box identity across recomputes (pure): a box that moved a little is the stored box again; anything else is new."""

from __future__ import annotations

import pytest

from windmill.harmony.identity import match_boxes

PERSON = "🧑"
DOG = "🐕"


@pytest.mark.parametrize(
    ("stored", "fresh", "expected"),
    [
        # One more detector nudged the box by 3 px: IoU (97·100)/(103·100) ≈ 0.94 → the same box.
        ([(7, (PERSON, (100, 100, 100, 100)))], [(PERSON, (103, 100, 100, 100))], {0: 7}),
        # Moved by a third of its width: IoU 0.5 → a new box.
        ([(7, (PERSON, (100, 100, 90, 90)))], [(PERSON, (130, 100, 90, 90))], {}),
        # Same place, other class → new.
        ([(7, (PERSON, (0, 0, 50, 50)))], [(DOG, (0, 0, 50, 50))], {}),
        # Two stored, two fresh: each pairs with its own, never twice.
        ([(1, (PERSON, (0, 0, 100, 100))), (2, (PERSON, (300, 0, 100, 100)))],
         [(PERSON, (302, 0, 100, 100)), (PERSON, (1, 1, 100, 100))], {0: 2, 1: 1}),
        # Two fresh boxes on one stored box: the more overlapping keeps it, the other is new.
        ([(5, (PERSON, (0, 0, 100, 100)))], [(PERSON, (4, 0, 100, 100)), (PERSON, (1, 0, 100, 100))], {1: 5}),
        ([], [(PERSON, (0, 0, 10, 10))], {}),
        ([(3, (PERSON, (0, 0, 10, 10)))], [], {}),
    ],
)
def test_match_boxes(stored, fresh, expected) -> None:
    assert match_boxes(stored, fresh) == expected
