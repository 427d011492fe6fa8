"""`windmill-cli eval`: COCO mAP of the merged boxes and of each detector on the images of the collection
that a COCO annotations file describes (matched by file name), optionally with the boxes the democratic filter
turned down as low-ranked candidates. The scoring itself is windmill.coco_eval."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg

from windmill.coco_eval import (
    GroundTruth,
    Prediction,
    SourcePredictions,
    parse_ground_truth,
    require_evaluator,
    score_sources,
)
from windmill.db.queries import query
from windmill.errors import WindmillError
from windmill.harmony import DetectorResult, HarmonyConfig, harmonize_with_rejected, stored_score
from windmill.harmony.extract import extract_detections
from windmill.monitor import format_table

MERGED = "merged"
WITH_REJECTED = "merged+rejected"


def load_coco_annotations(path: str | os.PathLike[str]) -> GroundTruth:
    """Read and check a COCO annotations file; unreadable or malformed files are user errors."""
    shown = Path(path).name
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise WindmillError(f"cannot read {os.fspath(path)}: {error.strerror or error}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WindmillError(f"{shown} is not valid JSON: {error}") from None
    return parse_ground_truth(document, shown)


def evaluate_collection(conn: psycopg.Connection, truth: GroundTruth, *, group: str | None = None,
                        rejected_by: HarmonyConfig | None = None) -> list[dict[str, Any]]:
    """Rows of coco_eval.score_sources: "merged" first, then each detector.

    A detector is scored on the latest successful answer it gave for each matched image; the merged boxes,
    ranked by their fused score, on the images whose boxes were computed. With `rejected_by` (the settings
    the merger runs with), a "merged+rejected" row follows "merged": the stored boxes and, as further
    candidates, the clusters the democratic filter turned down, recomputed from the very answers each
    image's last merge read. Nothing is stored: users and the vote see the stored boxes only.
    """
    require_evaluator()  # before any query: a missing package is the first thing to say
    matched: dict[int, str] = dict(conn.execute(query("eval_images"),
                                                {"filenames": sorted(truth.by_filename), "group": group}))
    if not matched:
        where = f" of group {group!r}" if group else ""
        raise WindmillError(f"none of the {len(truth.images)} images of the annotations is in the collection{where} "
                            "(images are matched by file name)")
    to_truth = {image_id: truth.by_filename[filename] for image_id, filename in matched.items()}
    params = {"image_ids": sorted(to_truth)}
    merged_rows = conn.execute(query("eval_merged_boxes"), params).fetchall()
    sources = {MERGED: merged_predictions(merged_rows, to_truth)}
    if rejected_by is not None:
        inputs = conn.execute(query("eval_merge_inputs"), params).fetchall()
        sources[WITH_REJECTED] = merged_predictions([*merged_rows, *rejected_rows(inputs, rejected_by)], to_truth)
    detectors = detector_predictions(conn.execute(query("eval_detector_results"), params), to_truth)
    return score_sources(truth, {**sources, **dict(sorted(detectors.items()))})


def rejected_rows(answers: Iterable[Sequence[Any]], config: HarmonyConfig) -> list[tuple[int, dict[str, Any]]]:
    """(image_id, merged_data) of the clusters the democratic filter turned down, from (image_id, result_id,
    service, data) answer rows: the merger's own harmonization, so the rule has one home."""
    by_image: dict[int, list[DetectorResult]] = defaultdict(list)
    for image_id, result_id, service, data in answers:
        by_image[image_id].append(DetectorResult(result_id, service, data))
    return [(image_id, box.to_merged_data()) for image_id, results in by_image.items()
            for box in harmonize_with_rejected(results, config).rejected]


def merged_predictions(rows: Iterable[Sequence[Any]], to_truth: Mapping[int, int]) -> SourcePredictions:
    """(image_id, merged_data or None) rows → predictions; an image with a None row has no boxes."""
    images: set[int] = set()
    found: list[tuple[int, str, Prediction]] = []
    for image_id, data in rows:
        images.add(to_truth[image_id])
        if not isinstance(data, dict):
            continue
        box = data.get("merged_bbox") or {}
        try:
            bbox = (float(box["x"]), float(box["y"]), float(box["width"]), float(box["height"]))
        except (KeyError, TypeError, ValueError):
            continue
        # Each detection's label is a vote; rows from before labels were kept per detection have only `labels`.
        votes = [str(d["label"]) for d in data.get("detections") or [] if isinstance(d, dict) and d.get("label")]
        labels = tuple(votes or [str(label) for label in data.get("labels") or []])
        found.append((image_id, str(data.get("cluster_id", "")), Prediction(
            to_truth[image_id], labels, str(data.get("emoji") or ""), stored_score(data), bbox)))
    found.sort(key=lambda item: item[:2])
    return SourcePredictions(frozenset(images), tuple(prediction for *_key, prediction in found))


def detector_predictions(rows: Iterable[Sequence[Any]], to_truth: Mapping[int, int]
                         ) -> dict[str, SourcePredictions]:
    """(image_id, result_id, service, data) answer rows → predictions per service, boxes read as
    harmonization reads them (malformed boxes skipped)."""
    images: dict[str, set[int]] = defaultdict(set)
    found: dict[str, list[Prediction]] = defaultdict(list)
    for image_id, result_id, service, data in rows:
        images[service].add(to_truth[image_id])
        detections, _ids = extract_detections([DetectorResult(result_id, service, data)])
        found[service].extend(
            Prediction(to_truth[image_id], (d.label,), d.emoji, d.confidence, (d.x1, d.y1, d.x2 - d.x1, d.y2 - d.y1))
            for d in detections)
    return {service: SourcePredictions(frozenset(images[service]), tuple(found[service])) for service in images}


def format_eval_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as an aligned table, AP and F1 values to three decimals ("-": no ground truth to score against);
    `at_score` is the threshold of the best F1."""
    figures = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "best_F1": "best_F1", "F1_threshold": "at_score"}
    shown = [{**row, **{name: "-" if row[key] is None else f"{row[key]:.3f}" for key, name in figures.items()}}
             for row in rows]
    return format_table(shown, ["source", "images", "predictions", "unmatched", *figures.values()])
