"""COCO box evaluation of our predictions against ground truth, without I/O: the annotations document,
label → category matching, AP / AP@0.5 / AP@0.75 from the COCO evaluator (pycocotools, an optional
dependency: `pip install 'windmill-pipeline[coco]'`) and the best F1 at IoU 0.5 over score thresholds, from the
evaluator's own matches."""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import redirect_stdout
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, TypeGuard

import numpy as np

from windmill.coco_classes import category_name
from windmill.emoji import normalize_emoji
from windmill.errors import MissingExtra, WindmillError

AP_DECIMALS = 4

# Names detectors and classifiers commonly give COCO's objects. Applied only when the target is one of
# the annotation file's categories, and only after an exact (case- and separator-insensitive) match failed.
SYNONYMS: dict[str, str] = {
    "aeroplane": "airplane", "airliner": "airplane", "plane": "airplane",
    "motorbike": "motorcycle", "bike": "bicycle",
    "sofa": "couch", "studio couch": "couch",
    "tvmonitor": "tv", "tv monitor": "tv", "television": "tv",
    "diningtable": "dining table", "table": "dining table",
    "cellphone": "cell phone", "mobile phone": "cell phone", "smartphone": "cell phone",
    "pottedplant": "potted plant", "houseplant": "potted plant",
    "hair dryer": "hair drier", "hairdryer": "hair drier",
    "doughnut": "donut", "ball": "sports ball", "remote control": "remote", "computer mouse": "mouse",
    "wineglass": "wine glass", "mug": "cup", "coffee mug": "cup", "teddy": "teddy bear",
    "fridge": "refrigerator", "racket": "tennis racket",
    "man": "person", "woman": "person", "child": "person", "boy": "person", "girl": "person",
}


def name_key(name: str) -> str:
    """Matching key of a label or category name: "Dining_Table" and "dining table" are one name (the export's
    category name), and so is "dining-table" when matched against ground truth."""
    return category_name(name.replace("-", " "))


def image_basename(file_name: str) -> str:
    """COCO file names may carry a directory ("val2017/0001.jpg"); our images are matched on the name."""
    return PureWindowsPath(PurePosixPath(file_name).name).name


# ------------------------------------------------------------------------------------------------
# Ground truth


@dataclass(frozen=True)
class GroundTruth:
    """A validated COCO annotations document: images by id, categories by id, boxes [x, y, w, h]."""

    images: dict[int, dict[str, Any]]
    categories: dict[int, str]
    annotations: list[dict[str, Any]]
    by_filename: dict[str, int]

    def as_coco_dataset(self) -> dict[str, Any]:
        return {
            "images": list(self.images.values()),
            "categories": [{"id": cid, "name": name} for cid, name in self.categories.items()],
            "annotations": self.annotations,
        }


def parse_ground_truth(document: Any, where: str = "annotations") -> GroundTruth:
    """Check the parts box evaluation needs; every error names the file and the entry.

    Missing `area`, `iscrowd` and annotation ids are filled in (area = w × h), since files made by
    hand or by other tools often lack them. Two images with the same file name: the first is kept.
    """
    if not isinstance(document, dict):
        raise WindmillError(f"{where}: a COCO annotations file holds a JSON object")
    images: dict[int, dict[str, Any]] = {}
    by_filename: dict[str, int] = {}
    for i, image in enumerate(_list(document, "images", where)):
        if not isinstance(image, dict) or not _is_id(image.get("id")) or not isinstance(image.get("file_name"), str):
            raise WindmillError(f"{where}: images[{i}] needs an integer id and a file_name")
        images[image["id"]] = {key: image[key] for key in ("id", "file_name", "width", "height") if key in image}
        by_filename.setdefault(image_basename(image["file_name"]), image["id"])
    categories: dict[int, str] = {}
    for i, category in enumerate(_list(document, "categories", where)):
        if not isinstance(category, dict) or not _is_id(category.get("id")) or not isinstance(
                category.get("name"), str):
            raise WindmillError(f"{where}: categories[{i}] needs an integer id and a name")
        categories[category["id"]] = category["name"]
    annotations = []
    for i, annotation in enumerate(_list(document, "annotations", where)):
        annotations.append(_annotation(annotation, i, where, images, categories))
    return GroundTruth(images, categories, annotations, by_filename)


def _list(document: dict[str, Any], key: str, where: str) -> list[Any]:
    value = document.get(key)
    if not isinstance(value, list):
        raise WindmillError(f"{where}: '{key}' must be a list")
    return value


def _is_id(value: object) -> bool:
    return type(value) is int


def _annotation(entry: Any, index: int, where: str, images: Mapping[int, Any],
                categories: Mapping[int, str]) -> dict[str, Any]:
    place = f"{where}: annotations[{index}]"
    if not isinstance(entry, dict):
        raise WindmillError(f"{place} must be an object")
    if entry.get("image_id") not in images:
        raise WindmillError(f"{place} refers to image {entry.get('image_id')!r}, which is not in images")
    if entry.get("category_id") not in categories:
        raise WindmillError(f"{place} refers to category {entry.get('category_id')!r}, which is not in categories")
    bbox = entry.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_finite(v) for v in bbox) and bbox[2] > 0
            and bbox[3] > 0):
        raise WindmillError(f"{place}: bbox must be [x, y, width, height] with a positive width and height")
    box = [float(v) for v in bbox]
    area = entry.get("area")
    return {
        "id": entry["id"] if _is_id(entry.get("id")) else index + 1,
        "image_id": entry["image_id"],
        "category_id": entry["category_id"],
        "bbox": box,
        "area": float(area) if _finite(area) else box[2] * box[3],
        "iscrowd": 1 if entry.get("iscrowd") else 0,
    }


def _finite(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------------------
# Labels → categories


@dataclass(frozen=True)
class CategoryMatcher:
    """Labels (and, failing those, emoji) → a COCO category id of the annotation file."""

    by_name: dict[str, int]
    by_emoji: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_categories(cls, categories: Mapping[int, str]) -> CategoryMatcher:
        by_name: dict[str, int] = {}
        for cid, name in sorted(categories.items()):
            by_name.setdefault(name_key(name), cid)
        for synonym, target in SYNONYMS.items():
            if target in by_name and synonym not in by_name:
                by_name[synonym] = by_name[target]
        return cls(by_name)

    def category_of_label(self, label: str) -> int | None:
        return self.by_name.get(name_key(label)) if label else None

    def category_of(self, labels: Sequence[str], emoji: str = "") -> int | None:
        """The category most labels name (a tie goes to the smallest id); else the emoji's learnt one."""
        votes = Counter(cid for cid in map(self.category_of_label, labels) if cid is not None)
        if votes:
            return min(votes, key=lambda cid: (-votes[cid], cid))
        return self.by_emoji.get(normalize_emoji(emoji)) if emoji else None

    def learning_emoji(self, pairs: Iterable[tuple[str, str]]) -> CategoryMatcher:
        """A matcher that also maps each emoji to the category its labelled boxes mostly name.

        A classifier's box ("espresso" ☕) often has no COCO name while a detector's box of the same
        emoji does ("cup" ☕): the evidence of the evaluated answers themselves links the two.
        """
        votes: Counter[tuple[str, int]] = Counter()
        for label, emoji in pairs:
            cid = self.category_of_label(label)
            key = normalize_emoji(emoji)
            if cid is not None and key:
                votes[key, cid] += 1
        learnt: dict[str, int] = {}
        for (key, cid), _count in sorted(votes.items(), key=lambda item: (-item[1], item[0][1])):
            learnt.setdefault(key, cid)
        return replace(self, by_emoji=learnt)


# ------------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class Prediction:
    """One predicted box on a ground-truth image; `labels` may repeat (each repeat is a vote)."""

    image_id: int
    labels: tuple[str, ...]
    emoji: str
    confidence: float
    bbox: tuple[float, float, float, float]  # x, y, width, height


@dataclass(frozen=True)
class SourcePredictions:
    """What one source (the merged boxes, or one detector) said about the images it has answered."""

    image_ids: frozenset[int]
    predictions: tuple[Prediction, ...]


def require_evaluator() -> tuple[Any, Any]:
    """pycocotools' COCO and COCOeval classes, or a user error saying how to install them."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MissingExtra("COCO evaluation", "pycocotools", "coco") from None
    return COCO, COCOeval


def score_sources(truth: GroundTruth, sources: Mapping[str, SourcePredictions]) -> list[dict[str, Any]]:
    """One row per source, in the given order: {source, images, predictions, unmatched, AP, AP50, AP75,
    best_F1, F1_threshold, F1_precision, F1_recall}.

    Each source is scored on the images it has answered (an image still waiting for a detector does not
    count against it). `predictions` counts the boxes scored, `unmatched` those whose label names no
    category of the file (left out). AP is None when those images hold no ground-truth box. best_F1 is
    the F1 at IoU 0.5 of the boxes whose score reaches F1_threshold, the threshold that makes it best
    (one threshold for all classes, as a user would pick it), with the precision and recall there.
    """
    coco_class, evaluator_class = require_evaluator()
    matcher = CategoryMatcher.for_categories(truth.categories).learning_emoji(
        (label, p.emoji) for source in sources.values() for p in source.predictions for label in p.labels)
    ground = _coco(coco_class, truth.as_coco_dataset())
    rows = []
    for name, source in sources.items():
        detections, unmatched = _detections(source.predictions, matcher)
        evaluator = _evaluated(coco_class, evaluator_class, truth, ground, source.image_ids, detections)
        ap, ap50, ap75 = _average_precision(evaluator)
        rows.append({"source": name, "images": len(source.image_ids), "predictions": len(detections),
                     "unmatched": unmatched, "AP": ap, "AP50": ap50, "AP75": ap75, **_best_f1(evaluator)})
    return rows


def _detections(predictions: Iterable[Prediction], matcher: CategoryMatcher) -> tuple[list[dict[str, Any]], int]:
    detections: list[dict[str, Any]] = []
    unmatched = 0
    for prediction in predictions:
        cid = matcher.category_of(prediction.labels, prediction.emoji)
        if cid is None:
            unmatched += 1
            continue
        x, y, width, height = prediction.bbox
        detections.append({"id": len(detections) + 1, "image_id": prediction.image_id, "category_id": cid,
                           "bbox": [x, y, width, height], "area": width * height, "score": prediction.confidence,
                           "iscrowd": 0})
    return detections, unmatched


def _evaluated(coco_class: Any, evaluator_class: Any, truth: GroundTruth, ground: Any,
               image_ids: frozenset[int], detections: list[dict[str, Any]]) -> Any:
    """The COCO evaluator run over the source's images; None when those images hold no ground-truth box."""
    if not image_ids or not any(a["image_id"] in image_ids for a in truth.annotations):
        return None
    # Built directly rather than with COCO.loadRes, which refuses an empty list of detections.
    predicted = _coco(coco_class, {**truth.as_coco_dataset(), "annotations": detections})
    evaluator = evaluator_class(ground, predicted, "bbox")
    evaluator.params.imgIds = sorted(image_ids)
    with redirect_stdout(io.StringIO()):  # the evaluator narrates every step on stdout
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _average_precision(evaluator: Any) -> tuple[float | None, float | None, float | None]:
    """AP@[.5:.95], AP@.5 and AP@.75 over all areas, at most 100 boxes per image (COCO's definitions)."""
    if evaluator is None:
        return None, None, None
    # Four decimals: the evaluator's sums leave 0.9999999999999999 where the answer is 1.
    ap, ap50, ap75 = (None if value < 0 else round(float(value), AP_DECIMALS) for value in evaluator.stats[:3])
    return ap, ap50, ap75


def _best_f1(evaluator: Any) -> dict[str, float | None]:
    """The best F1 at IoU 0.5 over score thresholds, from the evaluator's matches (all areas, ≤ 100 boxes per
    image and class): the same matching as AP50, pooled over the classes and cut at one threshold."""
    best: dict[str, float | None] = {"best_F1": None, "F1_threshold": None, "F1_precision": None, "F1_recall": None}
    if evaluator is None:
        return best
    all_areas = list(evaluator.params.areaRng[0])
    scores, hits = [], []
    truths = 0
    for image in evaluator.evalImgs:
        if image is None or list(image["aRng"]) != all_areas:
            continue
        counted = ~np.asarray(image["dtIgnore"][0], dtype=bool)  # a box matched to a crowd region counts for nothing
        scores.append(np.asarray(image["dtScores"], dtype=float)[counted])
        hits.append(np.asarray(image["dtMatches"][0])[counted] > 0)
        truths += int(np.count_nonzero(np.asarray(image["gtIgnore"]) == 0))
    if not truths:
        return best
    score = np.concatenate(scores) if scores else np.empty(0)
    order = np.argsort(-score, kind="mergesort")
    score, true_positives = score[order], np.cumsum(np.concatenate(hits)[order] if hits else np.empty(0))
    # A threshold keeps every box of its score: only the last box of a run of equal scores is a cut.
    cuts = np.flatnonzero(np.r_[score[1:] != score[:-1], True]) if len(score) else np.empty(0, dtype=int)
    if not len(cuts):
        return {**best, "best_F1": 0.0}
    kept = cuts + 1
    f1 = 2 * true_positives[cuts] / (kept + truths)
    at = int(np.argmax(f1))  # the first best: the highest threshold that reaches it
    return {"best_F1": round(float(f1[at]), AP_DECIMALS), "F1_threshold": round(float(score[cuts[at]]), AP_DECIMALS),
            "F1_precision": round(float(true_positives[cuts[at]] / kept[at]), AP_DECIMALS),
            "F1_recall": round(float(true_positives[cuts[at]] / truths), AP_DECIMALS)}


def _coco(coco_class: Any, dataset: dict[str, Any]) -> Any:
    coco = coco_class()
    coco.dataset = dataset
    with redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco

