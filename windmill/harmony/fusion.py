"""One box and one score per cluster: confidence-weighted edges (default) or the reference's union envelope,
and the fused score that ranks the boxes.

"union" is min x1, min y1, max x2, max y2 (§7.8). It grows with every service that adds a looser
box (§13.12); fractional edges round outwards so that it still covers every box.
"weighted" makes each edge the confidence-weighted mean of the cluster's edges, as weighted boxes
fusion does, so one loose box moves the result in proportion to its confidence. A cluster whose
confidences are all 0 weighs its boxes equally. Edges round half up. Only the boxes that agree shape it
(`agreeing_core`): a box that joined the cluster by containment or through a chain, overlapping the
cluster's best-supported box by no more than the clustering threshold (a hallucinated wide box around a
well-seen object, a part of it), still votes for the object but does not drag its box, as weighted boxes
fusion only averages boxes that match the fused one.
Either way the result is integer pixels (the contract's box shape, §2.10) and at least 1 px wide.

The score ranks the boxes by the evidence for them: with n agreeing services (one detection each) of N
detectors whose answers were read, and c_i their confidences,

    score = (n + Σ c_i) / (2 N)  =  ½ · n / N  +  ½ · Σ c_i / N

the mean of the share of detectors that agree and weighted boxes fusion's score (Solovyev et al., 2021;
ensemble-boxes' conf_type "avg": the mean confidence rescaled by min(n, N) / N, which is Σ c_i / N when a
service counts once). Each agreeing detector adds between 1/(2N) and 1/N: half for reporting the box at all
(it passed that detector's own threshold), half in proportion to its confidence. So a box four detectors saw
at 0.6 outranks one a single detector saw at 0.9, a detector that answered without seeing the object counts
against it, and detectors whose confidences live on different scales (one says 0.9 to everything) weigh by
their vote as much as by their number; the score is in [0, 1], 1 when every detector saw the box at 1.0.
On the benchmark's synthetic scenes (windmill.bench.harmony) the vote half raises AP50 over WBF's score alone
whether the detectors' confidences are calibrated alike or not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .geometry import overlaps
from .runs import run_sizes, run_starts


def fuse(edges: np.ndarray, confidences: np.ndarray, fusion: str) -> tuple[int, int, int, int]:
    """(x, y, width, height) of one cluster from its k×4 edges (x1, y1, x2, y2) and k confidences."""
    x, y, width, height = fuse_clusters(edges, confidences, np.array([0]), fusion)[0].tolist()
    return x, y, width, height


def fuse_clusters(edges: np.ndarray, confidences: np.ndarray, starts: np.ndarray, fusion: str,
                  core: np.ndarray | None = None) -> np.ndarray:
    """m×4 integer (x, y, width, height), one row per cluster.

    The clusters' rows lie back to back in `edges` and `confidences`; `starts` holds where each
    begins. `core` (weighted fusion only) marks the rows that shape their cluster's box, at least one
    per cluster; None: all. All clusters are fused in a few numpy calls: per-cluster calls would cost
    more than the arithmetic.
    """
    if fusion == "union":
        low = np.floor(np.minimum.reduceat(edges[:, :2], starts, axis=0))
        high = np.ceil(np.maximum.reduceat(edges[:, 2:], starts, axis=0))
    elif fusion == "weighted":
        counted = np.ones(len(confidences)) if core is None else core.astype(float)
        weights = confidences * counted
        totals = np.add.reduceat(weights, starts)
        sizes = np.add.reduceat(counted, starts)
        weighted = np.add.reduceat(edges * weights[:, None], starts, axis=0)
        plain = np.add.reduceat(edges * counted[:, None], starts, axis=0)
        zero = totals <= 0
        means = np.where(zero[:, None], plain / sizes[:, None], weighted / np.where(zero, 1.0, totals)[:, None])
        # Rounded to 1e-6 first so that an exact half (104.5) is not lost to float noise (104.4999…).
        rounded = np.floor(np.round(means, 6) + 0.5)
        low, high = rounded[:, :2], rounded[:, 2:]
    else:
        raise ValueError(f"unknown fusion {fusion!r}")
    boxes = np.empty((len(starts), 4), dtype=np.int64)
    boxes[:, :2] = low
    boxes[:, 2:] = np.maximum(high - low, 1)
    return boxes


def agreeing_core(edges: np.ndarray, confidences: np.ndarray, starts: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Which rows shape their cluster's box (clusters laid out as for fuse_clusters): the anchor, the box whose
    agreeing boxes (IoU above the threshold, itself included) carry the most confidence (then the most
    confident, then the first), and every box that agrees with it. Most clusters agree throughout: all rows.
    """
    count = len(confidences)
    sizes = run_sizes(starts, count)
    cluster = np.repeat(np.arange(len(starts)), sizes)
    # Every pair of one cluster, by the gap between its rows: a cluster holds one box per service, a handful.
    firsts = [np.flatnonzero(cluster[gap:] == cluster[:-gap]) for gap in range(1, int(sizes.max()))]
    if not firsts:
        return np.ones(count, dtype=bool)
    rows = np.concatenate(firsts)
    cols = np.concatenate([first + gap for gap, first in enumerate(firsts, 1)])
    agree = overlaps(edges, rows, cols)[0] > iou_threshold
    if agree.all():
        return np.ones(count, dtype=bool)
    rows, cols = rows[agree], cols[agree]
    support = (confidences + np.bincount(rows, confidences[cols], count) + np.bincount(cols, confidences[rows], count))
    order = np.lexsort((np.arange(count), -confidences, -support, cluster))
    anchors = order[run_starts(cluster[order])]
    anchor_of = anchors[cluster]
    core: np.ndarray = np.arange(count) == anchor_of
    core[cols[rows == anchor_of[rows]]] = True
    core[rows[cols == anchor_of[cols]]] = True
    return core


def fuse_scores(confidences: np.ndarray, starts: np.ndarray, answered: int) -> np.ndarray:
    """Score of each cluster, (n + Σ c_i) / (2 N) (see the module's docstring).

    The clusters' confidences (in [0, 1]) lie back to back, one per service, starting at `starts`; `answered`
    is N, the number of detector services whose answers were read (at least the services of any one cluster).
    """
    votes = run_sizes(starts, len(confidences))
    return (votes + np.add.reduceat(confidences, starts)) / (2 * max(answered, 1))


def fused_score(confidences: Sequence[float], answered: int) -> float:
    """The score of one cluster from its services' confidences, for rows stored before scores were."""
    if not confidences:
        return 0.0
    return float(fuse_scores(np.asarray(confidences, dtype=float), np.array([0]), max(answered, len(confidences)))[0])


def stored_score(merged_data: Mapping[str, Any]) -> float:
    """The score of a stored box (its merged_data): the one harmony stored, or, for a row stored before boxes had
    one, the same formula from its detections' confidences and the number of answers its merge read."""
    score = merged_data.get("score")
    if isinstance(score, int | float) and not isinstance(score, bool):
        return float(score)
    confidences = [float(d["confidence"]) for d in merged_data.get("detections") or []
                   if isinstance(d, Mapping) and isinstance(d.get("confidence"), int | float)
                   and not isinstance(d.get("confidence"), bool)]
    return fused_score(confidences, len(merged_data.get("source_result_ids") or []))
