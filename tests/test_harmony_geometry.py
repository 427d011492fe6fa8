"""Overlap measures, box fusion and connected components of harmony, as tables of hand-computed cases."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from windmill.harmony import overlap
from windmill.harmony.clustering import connected_components
from windmill.harmony.fusion import agreeing_core, fuse
from windmill.harmony.geometry import overlaps
from windmill.harmony.runs import run_sizes, run_starts


@pytest.mark.parametrize(
    ("a", "b", "iou", "containment"),
    [
        pytest.param((0, 0, 10, 10), (0, 0, 10, 10), 1.0, 1.0, id="identical"),
        pytest.param((0, 0, 10, 10), (20, 20, 5, 5), 0.0, 0.0, id="disjoint"),
        # The reference: ix1 >= ix2 gives IoU 0, so boxes that share an edge don't overlap.
        pytest.param((0, 0, 10, 10), (10, 0, 10, 10), 0.0, 0.0, id="touching-edge"),
        # I = 5*10 = 50, U = 100 + 100 - 50 = 150; containment 50 / 100.
        pytest.param((0, 0, 10, 10), (5, 0, 10, 10), 1 / 3, 0.5, id="half-shifted"),
        # I = 20*20 = 400, U = 10000 + 400 - 400; the small box is wholly inside.
        pytest.param((0, 0, 100, 100), (10, 10, 20, 20), 0.04, 1.0, id="contained"),
        # §7.12 detectron2 vs rtdetr person: I = 190*410 = 77900, U = 86100 + 79800 - 77900 = 88000.
        pytest.param((95, 45, 210, 410), (110, 40, 190, 420), 77900 / 88000, 77900 / 79800, id="ref-7.12-d2-rt"),
        # §7.12 detectron2 vs yolov8 person: yolov8's box is inside, I = 80000, U = 86100.
        pytest.param((95, 45, 210, 410), (100, 50, 200, 400), 80000 / 86100, 1.0, id="ref-7.12-d2-yo"),
        # §7.12 dogs: I = 140*110 = 15400, U = 15400 + 18000 - 15400 = 18000.
        pytest.param((360, 310, 140, 110), (350, 300, 150, 120), 15400 / 18000, 1.0, id="ref-7.12-dogs"),
        # §7.6 detectron2 vs rtdetr: I = 5000, U = 15000.
        pytest.param((100, 0, 100, 100), (50, 0, 100, 100), 1 / 3, 0.5, id="ref-7.6-neighbours"),
        pytest.param((100, 0, 100, 100), (0, 0, 100, 100), 0.0, 0.0, id="ref-7.6-ends"),
        # I = 6*1, U = 13 + 13 - 6 = 20: exactly 0.3.
        pytest.param((0, 0, 13, 1), (7, 0, 13, 1), 0.3, 6 / 13, id="exactly-0.3"),
    ],
)
def test_overlap_gives_iou_and_containment(a, b, iou, containment):
    assert overlap(a, b) == pytest.approx((iou, containment))
    assert overlap(b, a) == pytest.approx((iou, containment))



@pytest.mark.parametrize("integral", [True, False], ids=["pixels", "fractions"])
def test_overlap_of_one_pair_is_bit_for_bit_the_batch_overlaps(integral):
    # The merger's box matching uses `overlap`, clustering `overlaps`: one threshold must decide alike in both.
    rng = random.Random(19)
    def box():
        coordinate = (lambda: rng.randint(0, 60)) if integral else (lambda: rng.uniform(0, 60))
        return (coordinate(), coordinate(), coordinate() + 1, coordinate() + 1)  # width and height > 0
    pairs = [(box(), box()) for _ in range(3000)]
    edges = np.array([[x, y, x + w, y + h] for pair in pairs for x, y, w, h in pair], dtype=float)
    iou, containment = overlaps(edges, np.arange(0, len(edges), 2), np.arange(1, len(edges), 2))
    expected = list(zip(iou.tolist(), containment.tolist(), strict=True))
    assert [overlap(a, b) for a, b in pairs] == expected
    assert sum(0 < pair[0] < 1 for pair in expected) > 500, "too few partly overlapping pairs to tell"

@pytest.mark.parametrize(
    ("edges", "confidences", "weighted", "union"),
    [
        # Equal weights: the mean of each edge. Union: min x1, y1 and max x2, y2.
        pytest.param([(0, 0, 10, 10), (10, 10, 20, 20)], [0.5, 0.5], (5, 5, 10, 10), (0, 0, 20, 20), id="equal"),
        # 3:1 weights: x1 = 0.75*0 + 0.25*40 = 10, x2 = 0.75*100 + 0.25*140 = 110.
        pytest.param(
            [(0, 0, 100, 100), (40, 0, 140, 100)], [0.75, 0.25], (10, 0, 100, 100), (0, 0, 140, 100), id="3-to-1"
        ),
        # All confidences 0: the boxes weigh equally rather than dividing by zero.
        pytest.param([(0, 0, 10, 10), (10, 0, 30, 10)], [0.0, 0.0], (5, 0, 15, 10), (0, 0, 30, 10), id="zero-weights"),
        # Mean edges 0.5 and 1.5 round half up to 1 and 2.
        pytest.param([(0, 0, 1, 1), (1, 1, 2, 2)], [0.5, 0.5], (1, 1, 1, 1), (0, 0, 2, 2), id="half-up"),
        # Fractional edges: the union rounds outwards (floor 0.5 → 0, ceil 10.2 → 11).
        pytest.param([(0.5, 0.5, 10.2, 10.2)], [0.9], (1, 1, 9, 9), (0, 0, 11, 11), id="fractional"),
        # A sub-pixel box keeps 1 px of width and height after rounding.
        pytest.param([(0.0, 0.0, 0.4, 0.4)], [0.9], (0, 0, 1, 1), (0, 0, 1, 1), id="sub-pixel"),
        # §7.12 people, union: (95,40)–(305,460).
        pytest.param(
            [(95, 45, 305, 455), (110, 40, 300, 460), (100, 50, 300, 450)],
            [0.99, 0.95, 0.92],
            # x1 = (95*.99 + 110*.95 + 100*.92) / 2.86 = 290.55 / 2.86 = 101.59 → 102
            # y1 = (45*.99 + 40*.95 + 50*.92) / 2.86 = 128.55 / 2.86 = 44.95 → 45
            # x2 = (305*.99 + 300*.95 + 300*.92) / 2.86 = 862.95 / 2.86 = 301.73 → 302
            # y2 = (455*.99 + 460*.95 + 450*.92) / 2.86 = 1301.45 / 2.86 = 455.05 → 455
            (102, 45, 200, 410),
            (95, 40, 210, 420),
            id="ref-7.12-people",
        ),
    ],
)
def test_fusion_weighted_and_union(edges, confidences, weighted, union):
    edges_array, confidence_array = np.array(edges, dtype=float), np.array(confidences, dtype=float)
    assert fuse(edges_array, confidence_array, "weighted") == weighted
    assert fuse(edges_array, confidence_array, "union") == union


# Clusters laid out back to back, as fuse_clusters takes them: (edges, confidences) per cluster → core rows.
SMALL, NEAR, WIDE, FAR = (10, 10, 30, 30), (11, 10, 31, 30), (0, 0, 100, 100), (60, 60, 90, 90)


@pytest.mark.parametrize(("clusters", "core"), [
    pytest.param([([SMALL], [0.5])], [True], id="alone"),
    pytest.param([([SMALL, NEAR], [0.5, 0.5])], [True, True], id="all-agree"),
    # WIDE holds SMALL and NEAR (IoU 0.04): the two that agree carry 1.0 against its 0.9.
    pytest.param([([SMALL, NEAR, WIDE], [0.5, 0.5, 0.9])], [True, True, False], id="wide-outvoted"),
    # Alone against one: the more confident box is the anchor.
    pytest.param([([SMALL, WIDE], [0.5, 0.9])], [False, True], id="pair-confidence"),
    pytest.param([([SMALL, WIDE], [0.5, 0.5])], [True, False], id="pair-tie-first"),
    # Each cluster has its own anchor. In the second no two boxes agree and all weigh alike: the first, WIDE.
    pytest.param([([SMALL, NEAR], [0.2, 0.2]), ([WIDE, SMALL, FAR], [0.4, 0.4, 0.4])],
                 [True, True, True, False, False], id="per-cluster"),
])
def test_only_the_boxes_that_agree_with_the_best_supported_one_shape_the_cluster(clusters, core):
    edges = np.array([box for boxes, _ in clusters for box in boxes], dtype=float)
    confidences = np.array([c for _, scores in clusters for c in scores], dtype=float)
    starts = np.cumsum([0] + [len(boxes) for boxes, _ in clusters[:-1]])
    assert agreeing_core(edges, confidences, starts, 0.3).tolist() == core


def test_fusion_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(np.array([(0.0, 0.0, 1.0, 1.0)]), np.array([1.0]), "median")


def _components_by_union_find(count, edges):
    parent = list(range(count))

    def root(node):
        while parent[node] != node:
            node = parent[node]
        return node

    for a, b in edges:
        parent[root(a)] = root(b)
    groups = {}
    for node in range(count):
        groups.setdefault(root(node), set()).add(node)
    return sorted(sorted(group) for group in groups.values())


def _as_groups(labels):
    groups = {}
    for node, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(node)
    assert all(label == min(group) for label, group in groups.items()), "a component is named by its smallest node"
    return sorted(groups.values())


@pytest.mark.parametrize("seed", range(20))
def test_connected_components_match_a_plain_union_find(seed):
    rng = random.Random(seed)
    count = rng.randint(1, 60)
    edges = [tuple(sorted(rng.sample(range(count), 2))) for _ in range(rng.randint(0, count))] if count > 1 else []
    rows = np.array([a for a, _ in edges], dtype=np.intp)
    cols = np.array([b for _, b in edges], dtype=np.intp)
    assert _as_groups(connected_components(count, rows, cols)) == _components_by_union_find(count, edges)
    shuffled = list(edges)
    rng.shuffle(shuffled)
    rows_shuffled = np.array([a for a, _ in shuffled], dtype=np.intp)
    cols_shuffled = np.array([b for _, b in shuffled], dtype=np.intp)
    assert np.array_equal(
        connected_components(count, rows_shuffled, cols_shuffled), connected_components(count, rows, cols)
    )


def test_connected_components_join_a_long_chain_in_any_node_order():
    # A path through 300 nodes visited in a scrambled order: the slowest case for label propagation.
    nodes = list(range(300))
    random.Random(7).shuffle(nodes)
    edges = [tuple(sorted(pair)) for pair in itertools.pairwise(nodes)]
    rows = np.array([a for a, _ in edges])
    cols = np.array([b for _, b in edges])
    assert connected_components(300, rows, cols).tolist() == [0] * 300


@pytest.mark.parametrize("seed", range(20))
def test_runs_start_and_last_as_the_numpy_formulas_they_replace(seed):
    rng = np.random.default_rng(seed)
    clusters = np.sort(rng.integers(0, 1 + seed, size=seed * 3))  # 0 elements for seed 0, one run for seed 1
    starts = run_starts(clusters)
    expected_starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]])
    assert starts.tolist() == expected_starts.tolist() and starts.dtype == expected_starts.dtype
    sizes = run_sizes(starts, len(clusters))
    expected_sizes = np.diff(np.append(starts, len(clusters)))
    assert sizes.tolist() == expected_sizes.tolist() and sizes.dtype == expected_sizes.dtype
