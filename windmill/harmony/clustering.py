"""Clusters of linked boxes: connected components (transitive, order-free) and the crowd split.

Indices refer to detections in the canonical order (see pipeline), so every tie below is broken
by content, never by the order in which services answered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np


def class_pairs(spans: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Every pair i < j of detections that share a class; each class is a run [start, stop)."""
    parts = [(_upper_pairs(stop - start), start) for start, stop in spans if stop - start > 1]
    if not parts:
        empty = np.empty(0, dtype=np.intp)
        return empty, empty
    rows = np.concatenate([pairs[0] + start for pairs, start in parts])
    cols = np.concatenate([pairs[1] + start for pairs, start in parts])
    return rows, cols


@lru_cache(maxsize=512)
def _upper_pairs(size: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.triu_indices(size, 1)
    rows.flags.writeable = cols.flags.writeable = False
    return rows, cols


def connected_components(count: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Component of each node of the graph with edges (rows[k], cols[k]), named by its smallest node.

    Transitive: A~B and B~C put A, B and C together even if A and C don't overlap. The components
    are those of union-find over the linked pairs, computed by vectorised label propagation instead
    of a Python loop per pair: every edge pulls both ends to the smaller label, then labels jump to
    their label's label; at the fixed point each component carries its smallest index, whatever the
    edge order.
    """
    labels = np.arange(count)
    while len(rows):
        low = np.minimum(labels[rows], labels[cols])
        pulled = labels.copy()
        np.minimum.at(pulled, rows, low)
        np.minimum.at(pulled, cols, low)
        pulled = pulled[pulled]
        if np.array_equal(pulled, labels):
            break
        labels = pulled
    return labels


def split_crowd(
    members: Sequence[int],
    services: Sequence[str],
    confidences: Sequence[float],
    centres: Sequence[Sequence[float]],
    iou: Mapping[tuple[int, int], float],
    iou_threshold: float,
) -> list[list[int]]:
    """Parts of one cluster in which a service saw several separate objects.

    Detectors de-duplicate their own boxes of a class (IoU > 0.3), so two boxes of one service with
    IoU at or below the threshold are two real objects, side by side or one in front of the other,
    that a chain or a containment joined; keeping one box per service would lose all but one of
    them (§13.12, a crowd). Boxes of one service with IoU above it are one object seen twice
    (two labels with one emoji). The service with the most separate objects anchors the split:
    each of its objects seeds a part and every other box joins the seed it overlaps most (then the
    nearest centre). Not recursive: the democratic filter still keeps one box per service per part.

    `members` are sorted indices; `iou` holds the cluster's overlapping pairs (i, j) with i < j.
    Plain Python: a cluster is a handful of boxes.
    """
    objects: dict[str, list[list[int]]] = {}
    for member in members:
        groups = objects.setdefault(services[member], [])
        joined = [group for group in groups if any(iou.get((other, member), 0.0) > iou_threshold for other in group)]
        merged = [member]
        for group in joined:
            merged.extend(group)
            groups.remove(group)
        groups.append(sorted(merged))

    def anchor_rank(service: str) -> tuple[int, float, str]:
        loudness = sum(max(confidences[m] for m in group) for group in objects[service])
        return (-len(objects[service]), -loudness, service)

    anchor = min(objects, key=anchor_rank)
    if len(objects[anchor]) == 1:
        return [list(members)]

    anchor_objects = sorted(objects[anchor])
    seeds = [max(group, key=lambda m: (confidences[m], -m)) for group in anchor_objects]
    parts = [list(group) for group in anchor_objects]
    for member in members:
        if services[member] == anchor:
            continue
        x, y = centres[member]

        def closeness(k: int, member: int = member, x: float = x, y: float = y) -> tuple[float, float, int]:
            seed = seeds[k]
            overlap = iou.get((min(seed, member), max(seed, member)), 0.0)
            return (-overlap, (centres[seed][0] - x) ** 2 + (centres[seed][1] - y) ** 2, k)

        parts[min(range(len(seeds)), key=closeness)].append(member)
    return [sorted(part) for part in parts]
