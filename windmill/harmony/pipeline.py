"""Detector results of one image → merged boxes: group, cluster, filter, fuse, number.

The output depends only on the set of detections, never on the order of results or predictions:
detections are put in a canonical order first, and every later tie is broken by that order.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np

from windmill.emoji import normalize_emoji

from .clustering import class_pairs, connected_components, split_crowd
from .config import HarmonyConfig
from .democracy import elected, one_per_service
from .extract import Detection, DetectorResult, extract_detections, label_key
from .fusion import agreeing_core, fuse_clusters, fuse_scores
from .geometry import linked, overlaps
from .runs import run_starts

# Prefix of cluster ids for boxes with neither emoji nor label.
UNNAMED = "object"
# One more decimal than avg_confidence: fewer ties when ranking thousands of boxes.
SCORE_DECIMALS = 4
_LABEL = itemgetter(2)
_CONFIDENCE = itemgetter(4)
_LABEL_AND_EMOJI = itemgetter(2, 3)
_CONFIDENCE_AND_EDGES = itemgetter(4, 5, 6, 7, 8)


@dataclass(frozen=True, slots=True)
class MergedBox:
    """One object that the detectors agree on.

    `emoji` is the normalised emoji of the class ("" when the class is a label: `label_class`).
    `detections` holds one detection per contributing service, ordered by service name. `score` ranks
    the box: (n + Σ confidences) / 2N, n its services, N the detectors that answered (fusion.fuse_scores).
    """

    cluster_id: str
    emoji: str
    label_class: str
    labels: tuple[str, ...]
    bbox: tuple[int, int, int, int]
    avg_confidence: float
    score: float
    detections: tuple[Detection, ...]
    source_result_ids: tuple[int, ...]
    config: HarmonyConfig

    @property
    def detection_count(self) -> int:
        return len(self.detections)

    @property
    def contributing_services(self) -> tuple[str, ...]:
        return tuple(detection.service for detection in self.detections)

    @property
    def merged_bbox(self) -> dict[str, int]:
        x, y, width, height = self.bbox
        return {"x": x, "y": y, "width": width, "height": height}

    def box_key(self) -> str:
        """Digest of what downstream work depends on: class, box and contributing services.

        Equal keys across two harmonizations of an image mean the same box from the same services,
        so crops and postprocessing of the old box still hold; cluster_id can't tell that, since
        numbering shifts when a box appears. Confidences and result ids are left out on purpose.
        """
        payload = json.dumps(
            [self.emoji, self.label_class, list(self.bbox), list(self.contributing_services)],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()

    def to_merged_data(self) -> dict[str, Any]:
        """The reference's merged_data row (§7.9) with deterministic list orders, plus each detection's
        label, box and result id, and the parameters the box was made with."""
        return {
            "cluster_id": self.cluster_id,
            "emoji": self.emoji,
            "labels": list(self.labels),
            "merged_bbox": self.merged_bbox,
            "detection_count": self.detection_count,
            "avg_confidence": self.avg_confidence,
            "score": self.score,
            "contributing_services": list(self.contributing_services),
            "detections": [
                {
                    "service": detection.service,
                    "confidence": detection.confidence,
                    "label": detection.label,
                    "bbox": detection.bbox,
                    "result_id": detection.result_id,
                }
                for detection in self.detections
            ],
            "harmonization_algorithm": self.config.algorithm,
            "harmonization_params": self.config.params(),
            "source_result_ids": list(self.source_result_ids),
        }


def harmonize(
    results: Iterable[DetectorResult],
    config: HarmonyConfig | None = None,
    *,
    image_size: tuple[int, int] | None = None,
) -> list[MergedBox]:
    """Merged boxes of one image from the latest result of each detector service.

    Boxes come out ordered by cluster_id prefix (emoji or label), then left to right, top to bottom;
    cluster ids are `<emoji>_<n>` (`<label>_<n>` for a class without emoji), numbered 1.. in that
    order without gaps, so they are unique within the image.
    """
    return _harmonize(results, config, image_size, with_rejected=False).boxes


def harmonize_with_rejected(
    results: Iterable[DetectorResult],
    config: HarmonyConfig | None = None,
    *,
    image_size: tuple[int, int] | None = None,
) -> Harmonization:
    """`harmonize`'s boxes, and the clusters its democratic filter turned down, fused and scored alike.

    The rejected ones are evidence for evaluation only (AP at low precision counts them); they are
    numbered `<prefix>_rejected_<n>` so they never pass for a stored box.
    """
    return _harmonize(results, config, image_size, with_rejected=True)


@dataclass(frozen=True, slots=True)
class Harmonization:
    """The boxes a merge stores, and the clusters the democratic filter turned down (evaluation only)."""

    boxes: list[MergedBox]
    rejected: list[MergedBox]


def _harmonize(
    results: Iterable[DetectorResult], config: HarmonyConfig | None, image_size: tuple[int, int] | None,
    *, with_rejected: bool,
) -> Harmonization:
    config = config or HarmonyConfig()
    results = list(results)
    found, result_ids = extract_detections(results, image_size)
    if not found:
        return Harmonization([], [])
    classes, detections, service_ids, edges, confidences = _canonical_order(
        _classes(found, config.emoji_from_labels), found
    )

    # Cluster: link pairs of one class, take connected components, split crowds.
    rows, cols = class_pairs(_class_spans(classes))
    iou, containment = overlaps(edges, rows, cols)
    together = linked(iou, containment, config.iou_threshold, config.containment_threshold)
    clusters = connected_components(len(detections), rows[together], cols[together])
    if config.split_crowds:
        services = [detection.service for detection in detections]
        clusters = _split_crowds(
            clusters, services, service_ids, confidences, edges, (rows, cols, iou), config.iou_threshold
        )

    # Vote: one detection per service per cluster, then the quorum or the loud single voice.
    voices = one_per_service(clusters, service_ids, confidences)
    won = elected(clusters[voices], confidences[voices], config.min_services, config.single_service_min_confidence)
    # The score's denominator: every detector whose answer was read, whether it saw anything or not.
    answered = len({str(result.service) for result in results})
    named = _Naming(classes, detections, edges, confidences, clusters, tuple(result_ids), answered, config)
    return Harmonization(named.boxes(voices[won], ""), named.boxes(voices[~won], "_rejected") if with_rejected else [])


@dataclass(frozen=True, slots=True)
class _Naming:
    """What fusing and numbering a selection of voices needs: the canonical detections and their clusters."""

    classes: list[tuple[str, str]]
    detections: list[Detection]
    edges: np.ndarray
    confidences: np.ndarray
    clusters: np.ndarray
    result_ids: tuple[int, ...]
    answered: int
    config: HarmonyConfig

    def boxes(self, voices: np.ndarray, suffix: str) -> list[MergedBox]:
        """Fuse every cluster of these voices (grouped by cluster, one per service) at once, then name and number."""
        if not len(voices):
            return []
        starts = run_starts(self.clusters[voices])
        confidences = self.confidences[voices]
        edges = self.edges[voices]
        core = agreeing_core(edges, confidences, starts, self.config.iou_threshold) \
            if self.config.fusion == "weighted" else None
        boxes = fuse_clusters(edges, confidences, starts, self.config.fusion, core).tolist()
        scores = fuse_scores(confidences, starts, self.answered).tolist()
        members = voices.tolist()
        bounds = [*starts.tolist(), len(members)]
        drafts = []
        for start, stop, box, score in zip(bounds, bounds[1:], boxes, scores, strict=False):
            emoji, label_class = self.classes[members[start]]
            prefix = (emoji or label_class or UNNAMED) + suffix
            drafts.append((prefix, emoji, label_class, *box, score, members[start:stop]))
        drafts.sort()
        return _merged_boxes(drafts, self.detections, self.result_ids, self.config)


def _canonical_order(
    classes: list[tuple[str, str]], detections: list[Detection]
) -> tuple[list[tuple[str, str]], list[Detection], np.ndarray, np.ndarray, np.ndarray]:
    """Sorted by class, then by content: classes, detections, service ranks, edges and confidences.

    Every later tie is broken by position in this order, which is what makes the output independent
    of the order of results and predictions. Numbers are sorted with one numpy lexsort (sorting
    tuples in Python costs more than all the rest); only exact numeric ties, which are rare, fall
    back to sorting the full tuples.
    """
    services = [detection[0] for detection in detections]
    service_rank = {service: rank for rank, service in enumerate(sorted(set(services)))}
    class_rank = {klass: rank for rank, klass in enumerate(sorted(set(classes)))}
    service_ids = np.array([service_rank[service] for service in services])
    class_ids = np.array([class_rank[klass] for klass in classes])
    numbers = np.array(list(map(_CONFIDENCE_AND_EDGES, detections)), dtype=float)  # confidence, x1, y1, x2, y2
    keys = np.empty((len(detections), 7))  # filled column by column: np.column_stack's set-up cost more
    keys[:, 0], keys[:, 1], keys[:, 2:6], keys[:, 6] = class_ids, service_ids, numbers[:, 1:], -numbers[:, 0]
    order = np.lexsort(keys.T[::-1])  # lexsort sorts by its last key first
    ordered = keys[order]
    if (ordered[1:] == ordered[:-1]).all(axis=1).any():
        order = np.array(sorted(range(len(detections)), key=lambda i: (classes[i], detections[i])))
    listed = order.tolist()
    return (
        [classes[i] for i in listed],
        [detections[i] for i in listed],
        service_ids[order],
        np.ascontiguousarray(numbers[order, 1:]),
        numbers[order, 0],
    )


def _split_crowds(
    clusters: np.ndarray,
    services: list[str],
    service_ids: np.ndarray,
    confidences: np.ndarray,
    edges: np.ndarray,
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
    iou_threshold: float,
) -> np.ndarray:
    """Relabel the clusters in which one service has several boxes (see split_crowd).

    Each part is named by its smallest index, which no other cluster uses. `pairs` are the
    within-class pairs (rows, cols, IoU) already computed for clustering.
    """
    width = int(service_ids.max()) + 1
    voices = np.bincount(np.unique(clusters * width + service_ids) // width, minlength=len(clusters))
    crowded = np.bincount(clusters, minlength=len(clusters)) > voices
    if not crowded.any():
        return clusters
    rows, cols, iou = pairs
    inside = (clusters[rows] == clusters[cols]) & crowded[clusters[rows]] & (iou > 0)
    rows, cols, iou = rows[inside], cols[inside], iou[inside]
    overlap = dict(zip(zip(rows.tolist(), cols.tolist(), strict=True), iou.tolist(), strict=True))
    centres = ((edges[:, :2] + edges[:, 2:]) / 2).tolist()
    confidence_list = confidences.tolist()
    clusters = clusters.copy()
    for label in np.flatnonzero(crowded).tolist():
        members = np.flatnonzero(clusters == label).tolist()
        for part in split_crowd(members, services, confidence_list, centres, overlap, iou_threshold):
            clusters[part] = part[0]
    return clusters


def _merged_boxes(
    drafts: list[tuple[Any, ...]], detections: list[Detection], result_ids: tuple[int, ...], config: HarmonyConfig
) -> list[MergedBox]:
    merged = []
    numbers: dict[str, int] = {}
    for prefix, emoji, label_class, x, y, width, height, score, members in drafts:
        number = numbers[prefix] = numbers.get(prefix, 0) + 1
        chosen = tuple(map(detections.__getitem__, members))
        merged.append(
            MergedBox(
                f"{prefix}_{number}",
                emoji,
                label_class,
                tuple(sorted(set(map(_LABEL, chosen)))),
                (x, y, width, height),
                round(sum(map(_CONFIDENCE, chosen)) / len(chosen), 3),
                round(score, SCORE_DECIMALS),
                chosen,
                result_ids,
                config,
            )
        )
    return merged


def _classes(detections: list[Detection], emoji_from_labels: bool) -> list[tuple[str, str]]:
    """Grouping class of each detection: (normalised emoji, "") or, without emoji, ("", label key).

    With `emoji_from_labels`, a box without emoji whose label another box of the image maps to an
    emoji joins that emoji's class (the most frequent mapping; a tie goes to the smallest emoji).
    Worked out once per distinct (label, emoji) pair: an image has hundreds of boxes but few pairs.
    """
    pairs = list(map(_LABEL_AND_EMOJI, detections))
    counts = Counter(pairs)
    normal = {pair: (label_key(pair[0]), normalize_emoji(pair[1])) for pair in counts}
    borrowed: dict[str, str] = {}
    if emoji_from_labels:
        votes: Counter[tuple[str, str]] = Counter()
        for pair, count in counts.items():
            label, emoji = normal[pair]
            if label and emoji:
                votes[label, emoji] += count
        for (label, emoji), _count in sorted(votes.items(), key=lambda item: (-item[1], item[0][1])):
            borrowed.setdefault(label, emoji)
    classes: dict[tuple[str, str], tuple[str, str]] = {}
    for pair, (label, emoji) in normal.items():
        if emoji:
            classes[pair] = (emoji, "")
        elif label in borrowed:
            classes[pair] = (borrowed[label], "")
        else:
            classes[pair] = ("", label)
    return [classes[pair] for pair in pairs]


def _class_spans(classes: list[tuple[str, str]]) -> list[tuple[int, int]]:
    """[start, stop) of each run of one class in the canonical order."""
    spans = []
    start = 0
    for index in range(1, len(classes) + 1):
        if index == len(classes) or classes[index] != classes[start]:
            spans.append((start, index))
            start = index
    return spans
