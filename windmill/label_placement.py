"""Where the labels of drawn boxes go, so that no label covers another: pure geometry, no pixels.

Each label tries, in order: above its box, inside its top edge, below it, inside its bottom edge (left-aligned,
then right-aligned); among those that are free it takes the one that crosses the fewest other boxes' outlines.
When all are taken (boxes sharing a corner, nested boxes, a crowd) it moves away from its box in steps of its own
height, and as a last resort takes the free place of the picture nearest to its box. A label that finds no free
place anywhere (more labels than the picture can hold) is left out; its box is still drawn.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

Edges = tuple[int, int, int, int]  # a box: x1, y1, x2, y2, inclusive pixel edges
Rect = tuple[int, int, int, int]  # a label: left, top, right, bottom; right and bottom exclusive
Size = tuple[int, int]  # width, height

# How far a label may move away from its box, in label heights, before the search covers the whole picture.
MAX_STEPS = 8


def place_labels(boxes: Sequence[Edges], sizes: Sequence[Size], image_size: Size,
                 taken: Sequence[Rect] = ()) -> list[Rect | None]:
    """A rectangle of the given size for each box's label, inside the picture and overlapping no other label nor
    the `taken` areas (a legend); None where none is free. Smaller boxes choose first: they have fewer places."""
    placed: list[Rect] = list(taken)
    found: list[Rect | None] = [None] * len(boxes)
    for index in sorted(range(len(boxes)), key=lambda i: (_area(boxes[i]), boxes[i], i)):
        others = [box for number, box in enumerate(boxes) if number != index]
        rect = _place(boxes[index], sizes[index], image_size, placed, others)
        if rect is not None:
            placed.append(rect)
            found[index] = rect
    return found


def overlaps(a: Rect, b: Rect) -> bool:
    """Whether two rectangles share at least one pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place(box: Edges, size: Size, image_size: Size, placed: Sequence[Rect], others: Sequence[Edges]) -> Rect | None:
    free = [rect for rect in _beside(box, size, image_size) if not any(overlaps(rect, other) for other in placed)]
    if free:
        # The first of the fewest crossings: sorted() is stable, so ties keep the order of preference.
        return sorted(free, key=lambda rect: sum(_crosses(rect, other) for other in others))[0]
    for rect in _further(box, size, image_size):
        if not any(overlaps(rect, other) for other in placed):
            return rect
    return None


def _beside(box: Edges, size: Size, image_size: Size) -> list[Rect]:
    """The eight places next to the box, in order of preference, that lie inside the picture."""
    x1, y1, x2, y2 = box
    width, height = size
    tops = (y1 - height, y1, y2 + 1, y2 + 1 - height)  # above, inside the top, below, inside the bottom
    places = [_fitted(left, top, size, image_size) for left in (x1, x2 + 1 - width) for top in tops]
    return list(dict.fromkeys(rect for rect in places if rect is not None))


def _further(box: Edges, size: Size, image_size: Size) -> Iterator[Rect]:
    """Places ever further from the box: stacked above it, inside it and below it, then the whole picture by
    distance from the box's top-left corner."""
    x1, y1, x2, y2 = box
    width, height = size
    for step in range(1, MAX_STEPS + 1):
        for left in (x1, x2 + 1 - width):
            for top in (y1 - height * (step + 1), y1 + height * step, y2 + 1 + height * step):
                rect = _fitted(left, top, size, image_size)
                if rect is not None:
                    yield rect
    columns = range(0, max(image_size[0] - width, 0) + 1, max(width // 4, 1))
    rows = range(0, max(image_size[1] - height, 0) + 1, max(height // 2, 1))
    grid = [(left, top) for left in columns for top in rows]
    grid.sort(key=lambda place: ((place[0] - x1) ** 2 + (place[1] - y1 + height) ** 2, place))
    for left, top in grid:
        rect = _fitted(left, top, size, image_size)
        if rect is not None:
            yield rect


def _fitted(left: int, top: int, size: Size, image_size: Size) -> Rect | None:
    """The label at (left, top), slid sideways into the picture; None when it does not fit vertically."""
    width, height = size
    if top < 0 or top + height > image_size[1]:
        return None
    left = max(0, min(left, image_size[0] - width))
    return (left, top, left + width, top + height)


def _crosses(rect: Rect, box: Edges) -> bool:
    """Whether the label hides part of another box's outline (it overlaps the box without lying inside it)."""
    inside = (box[0], box[1], box[2] + 1, box[3] + 1)
    within = box[0] < rect[0] and box[1] < rect[1] and rect[2] < box[2] + 1 and rect[3] < box[3] + 1
    return overlaps(rect, inside) and not within


def _area(box: Edges) -> int:
    return (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
