"""Pillow's median cut (`Image.quantize(colors, Quantize.MEDIANCUT)`, no k-means) as colour groups, on the image's
distinct colours with numpy: the same groups, several times cheaper.

The colors service's palette is a median cut of a 64×64 thumbnail. Pillow computes it in C, but per pixel through
hash tables and linked lists (about 0.7 µs a pixel): it was half of the stand-in's CPU per request. Every step of
Pillow's algorithm (src/libImaging/Quant.c, QuantHeap.c) depends only on the distinct colours and their pixel
counts, so this module runs the same steps on those, in the same order and with the same ties:

1. boxes of colours are split in the order a binary heap on pixel counts gives them out (Pillow's heap, ties
   included); a box of one colour is taken out and left whole;
2. a box is cut across the channel of the largest range weighted 77/150/29 (the first channel wins a tie), at the
   value where the pixel count, from the highest value down, first passes half: that value and above on one side;
   when nothing is left below it, the lowest value goes to the other side;
3. the leaves, left before right, are the palette; an entry is its pixels' mean, rounded half up;
4. each colour goes to its box's entry unless another entry is strictly nearer (squared RGB distance); among the
   nearest, the first in the box entry's list of entries by distance (then index) wins, as Pillow's search does.

Images of more than 65,536 distinct colours make Pillow merge colours by dropping low bits first; those go to
Pillow itself (the stand-in's thumbnails hold at most 4,096 pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
from PIL import Image

RGB = tuple[int, int, int]
_MAX_DISTINCT = 65_536  # Pillow's MAX_HASH_ENTRIES: beyond it the colours are coarsened first
_AXIS_WEIGHTS = (77, 150, 29)  # luminance weights Pillow gives the channels' ranges when choosing the cut


@dataclass
class _Box:
    channels: np.ndarray  # (3, n) uint8: the box's distinct colours, a row per channel
    counts: np.ndarray  # (2, n) float64: pixels of each of those colours, and their indexes among all distinct ones
    pixels: int  # how many pixels the box holds
    children: tuple[_Box, _Box] | None = field(default=None)


def median_cut_groups(image: Image.Image, colors: int) -> list[tuple[int, RGB]]:
    """(pixel count, palette colour) of every palette entry that some pixel maps to, in palette order: what
    `image.quantize(colors, Image.Quantize.MEDIANCUT)` gives with `getcolors` and `getpalette`. `image` is RGB."""
    # Few numpy calls on whole arrays: each lets the GIL go, and with the server's threads all answering, each
    # release costs a thread switch. A pixel as one 32-bit word (RGBX) is one conversion; the order of the distinct
    # colours does not matter to the result.
    packed = np.frombuffer(image.convert("RGBX").tobytes(), dtype=np.uint32)
    distinct, counts = np.unique(packed, return_counts=True)
    if len(distinct) > _MAX_DISTINCT:
        return _pillow_groups(image, colors)
    channels = np.ascontiguousarray(distinct.view(np.uint8).reshape(-1, 4)[:, :3].T)
    # bincount's weights are doubles (the counts stay exact); the indexes travel in the same table.
    table = np.stack([counts, np.arange(len(distinct))]).astype(np.float64)
    leaves = _leaves(_split_boxes(channels, table, len(packed), colors))
    box_of = np.empty(len(distinct), dtype=np.intp)
    for index, leaf in enumerate(leaves):
        box_of[leaf.counts[1].astype(np.intp)] = index
    palette = _palette(leaves)
    mapped = _nearest_entries(channels, box_of, palette)
    used = np.bincount(mapped, weights=table[0], minlength=len(leaves))
    return [(int(used[index]), cast(RGB, tuple(int(channel) for channel in palette[:, index])))
            for index in range(len(leaves)) if used[index] > 0]


def _pillow_groups(image: Image.Image, colors: int) -> list[tuple[int, RGB]]:
    quantized = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT)
    palette = quantized.getpalette() or []
    counts = cast(list[tuple[int, int]], quantized.getcolors(colors) or [])
    return [(count, (palette[3 * i], palette[3 * i + 1], palette[3 * i + 2]))
            for count, i in sorted(counts, key=lambda pair: pair[1])]


def _split_boxes(channels: np.ndarray, table: np.ndarray, pixels: int, colors: int) -> _Box:
    """The tree of boxes after Pillow's `colors - 1` rounds of taking the most populous box out and cutting it."""
    root = _Box(channels, table, pixels)
    heap: list[_Box | None] = [None]  # 1-based, as QuantHeap.c
    _heap_add(heap, root)
    for _ in range(colors - 1):
        while True:
            box = _heap_remove(heap)
            if box is None:
                return root
            spans = box.channels.max(axis=1) - box.channels.min(axis=1)
            if spans.any():  # a box of one colour (volume 1) is dropped from the heap, uncut
                break
        box.children = _cut(box, spans)
        _heap_add(heap, box.children[0])
        _heap_add(heap, box.children[1])
    return root


def _cut(box: _Box, spans: np.ndarray) -> tuple[_Box, _Box]:
    weighted = [int(spans[axis]) * _AXIS_WEIGHTS[axis] for axis in range(3)]
    axis = 0
    for candidate in (1, 2):
        if weighted[axis] < weighted[candidate]:
            axis = candidate
    values = box.channels[axis]
    # Pixels per channel value, from 255 down: the cut is at the value where the running count passes half.
    running = np.cumsum(np.bincount(values, weights=box.counts[0], minlength=256)[::-1])
    crossing = int(np.argmax(running * 2 > box.pixels))
    upper = values >= 255 - crossing
    upper_pixels = int(running[crossing])
    if upper_pixels == box.pixels:  # nothing below the cut: the lowest value goes to the other side
        lowest = int(values.min())
        upper = values != lowest
        upper_pixels = int(running[254 - lowest]) if lowest < 255 else 0
    # Index arrays and take: boolean indexing of a 2-D array costs several times as much.
    above, below = np.flatnonzero(upper), np.flatnonzero(~upper)
    return (_Box(box.channels.take(above, axis=1), box.counts.take(above, axis=1), upper_pixels),
            _Box(box.channels.take(below, axis=1), box.counts.take(below, axis=1), box.pixels - upper_pixels))


def _heap_add(heap: list[_Box | None], box: _Box) -> None:
    heap.append(None)
    k = len(heap) - 1
    while k != 1:
        parent = cast(_Box, heap[k // 2])
        if box.pixels - parent.pixels <= 0:
            break
        heap[k] = parent
        k >>= 1
    heap[k] = box


def _heap_remove(heap: list[_Box | None]) -> _Box | None:
    if len(heap) == 1:
        return None
    top = heap[1]
    last = cast(_Box, heap.pop())
    count = len(heap) - 1
    k = 1
    while k * 2 <= count:
        child = k * 2
        if child < count and cast(_Box, heap[child]).pixels - cast(_Box, heap[child + 1]).pixels < 0:
            child += 1
        if last.pixels - cast(_Box, heap[child]).pixels > 0:
            break
        heap[k] = heap[child]
        k = child
    if count:
        heap[k] = last
    return top


def _leaves(root: _Box) -> list[_Box]:
    """The uncut boxes with colours, left before right: the palette's order."""
    leaves, stack = [], [root]
    while stack:
        box = stack.pop()
        if box.children is not None:
            stack.extend(reversed(box.children))
        elif box.pixels:
            leaves.append(box)
    return leaves


def _palette(leaves: list[_Box]) -> np.ndarray:
    """(3, entries): each box's mean colour over its pixels, as Pillow rounds it: (int)(.5 + sum / count) in
    doubles (the sums are exact in a double)."""
    sums = np.stack([leaf.channels @ leaf.counts[0] for leaf in leaves], axis=1)
    return np.trunc(0.5 + sums / np.array([leaf.pixels for leaf in leaves], dtype=np.float64)).astype(np.int32)


def _nearest_entries(channels: np.ndarray, box_of: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Pillow's map_image_pixels_from_median_box: start from the box's entry; look at the entries no farther than
    twice the distance to it, in order of their distance from it (then index); move only to a strictly nearer one.

    Any entry strictly nearer than the box's own is within that radius (triangle inequality), so the search ends
    at the nearest of all entries; among equally near ones, at the first in the own entry's order.
    """
    # Squared distances less the colour's own |u|², which no comparison within a row needs: |p|² - 2 u·p. Every
    # term is an integer below 2²⁴ in magnitude, so float32 holds them exactly and one matrix product makes them.
    entries_f = palette.astype(np.float32)
    distances = channels.T.astype(np.float32) @ (-2 * entries_f) + np.square(entries_f).sum(axis=0)
    own = distances[np.arange(len(box_of)), box_of]
    nearest = distances.min(axis=1)
    moved = np.flatnonzero(nearest < own)
    if not len(moved):
        return box_of
    entries = palette.shape[1]
    between = sum(np.square(row[:, None] - row[None, :]) for row in palette)
    order = np.argsort(between, axis=1, kind="stable")  # ties by index, as Pillow's qsort comparator
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(entries), (entries, entries)), axis=1)
    tied = distances[moved] == nearest[moved, None]
    mapped = box_of.copy()
    mapped[moved] = np.where(tied, rank[box_of[moved]], entries).argmin(axis=1)  # an entry's index
    return mapped
