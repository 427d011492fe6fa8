"""The V3 consensus of one image: rows in, `consensus_data` out (the reference's shape, §8.8)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from windmill.voting.config import VotingConfig
from windmill.voting.curation import Curated, curate, person_checks
from windmill.voting.evidence import Evidence, group_votes
from windmill.voting.extract import evidence_type, latest_success_rows, service_votes, spatial_votes
from windmill.voting.model import MergedBox, MergedBoxRow, PostprocessingRow, ServiceResult, Vote, as_object
from windmill.voting.special import special_detections
from windmill.voting.weights import Weighed, rank, weigh

CONSENSUS_ALGORITHM = "v3_voting_full_port"
DEFAULT_CONFIG = VotingConfig()


def compute_consensus(
    results: Iterable[ServiceResult],
    merged_boxes: Iterable[MergedBoxRow] = (),
    postprocessing: Iterable[PostprocessingRow] = (),
    *,
    service_types: Mapping[str, Sequence[str]],
    config: VotingConfig = DEFAULT_CONFIG,
) -> dict[str, Any]:
    """The consensus of one image from all its current rows.

    `results`: every results row of the image (any status, duplicates welcome: only the latest success row of
    each service counts). `merged_boxes`: the image's current merged boxes. `postprocessing`: its
    postprocessing rows (face/pose rows of person boxes are read; the others are ignored). `service_types`:
    service name → its service_type items, from the catalog.
    """
    rows, superseded = latest_success_rows(results)
    answers = {row.service: as_object(row.data) or {} for row in rows}
    votes: list[Vote] = []
    for row in rows:
        if config.votes_for(row.service):
            kind = evidence_type(row.service, service_types)
            votes.extend(service_votes(row.service, answers[row.service], kind, config))
    boxes = sorted((MergedBox.from_row(row, config.emoji_key) for row in merged_boxes), key=lambda b: b.merged_id)
    votes.extend(spatial_votes(boxes, config))

    ranked = rank((weigh(evidence, config) for evidence in group_votes(votes)), config)
    listed = [item for item in ranked if item.included]
    checks = person_checks(boxes, postprocessing, config)
    curated = curate(listed, checks, config)

    return {
        "services_count": len(rows),
        "services_list": [row.service for row in rows],
        "total_processing_time": round(sum((_processing_time(row, answers[row.service]) for row in rows), 0.0), 3),
        "latest_result_time": max(row.created for row in rows).isoformat() if rows else None,
        "consensus_algorithm": CONSENSUS_ALGORITHM,
        "votes": {"consensus": [_item(entry, config) for entry in curated]},
        "special": special_detections(answers, checks, config),
        "debug": {
            "detection_count": len(votes),
            "emoji_groups": len(ranked),
            "result_ids": sorted(row.result_id for row in rows),
            "superseded_result_ids": superseded,
            "face_boxes": [finding.box.cluster_id for finding in checks.faces],
            "pose_boxes": [box.cluster_id for box in checks.poses],
            "groups": _debug_groups(ranked, {entry.weighed.evidence.emoji: entry for entry in curated}),
        },
    }


def _item(entry: Curated, config: VotingConfig) -> dict[str, Any]:
    """One listed emoji in the reference's `votes.consensus[]` shape."""
    evidence = entry.weighed.evidence
    spatial = evidence.spatial
    item: dict[str, Any] = {
        "emoji": evidence.emoji,
        "votes": evidence.total_votes,
        "evidence_weight": round(entry.evidence_weight, 2),
        "final_score": round(entry.final_score, 2),
        "instances": {"count": evidence.instance_count, "type": "spatial" if spatial else "non_spatial"},
        "evidence": {
            "spatial": {
                "detection_count": spatial.max_detection_count,
                "avg_confidence": round(spatial.avg_confidence, 3),
                "instance_count": len(spatial.boxes),
            }
            if spatial
            else None,
            "semantic": {
                "service_count": evidence.semantic_count,
                "words": list(evidence.semantic_words),
                "sources": list(evidence.semantic_sources),
            }
            if evidence.semantic_sources
            else None,
            "classification": {
                "service_count": evidence.classification_count,
                "sources": list(evidence.classification_sources),
            }
            if evidence.classification_sources
            else None,
            "specialized": list(evidence.specialized) if evidence.specialized else None,
        },
        "services": list(evidence.services),
    }
    if spatial:
        item["bounding_boxes"] = [_bounding_box(box, config) for box in spatial.boxes]
    if entry.validation:
        item["validation"] = list(entry.validation)
    if evidence.shiny:
        item["shiny"] = True
    return item


def _bounding_box(box: MergedBox, config: VotingConfig) -> dict[str, Any]:
    if not config.boxes_carry_cluster_id:  # reference: the box records lost their identity
        return {
            "cluster_id": None,
            "merged_bbox": dict(box.merged_bbox),
            "emoji": box.emoji,
            "label": box.emoji,
            "detection_count": box.detection_count,
            "avg_confidence": box.avg_confidence,
            "detections": [],
        }
    return {
        "cluster_id": box.cluster_id,
        "merged_id": box.merged_id,
        "merged_bbox": dict(box.merged_bbox),
        "emoji": box.emoji,
        "label": box.label or box.emoji,
        "detection_count": box.detection_count,
        "avg_confidence": box.avg_confidence,
        "detections": [dict(detection) for detection in box.detections],
    }


def _debug_groups(ranked: list[Weighed], curated: Mapping[str, Curated]) -> list[dict[str, Any]]:
    """Every emoji group, listed or not, in rank order, with the terms of its weight: why it ranks where it does."""
    groups = []
    for item in ranked:
        evidence: Evidence = item.evidence
        entry = curated.get(evidence.emoji)
        groups.append(
            {
                "emoji": evidence.emoji,
                "services": list(evidence.services),
                "votes": evidence.total_votes,
                "spatial_bonus": item.spatial_bonus,
                "content_bonus": item.content_bonus,
                "classification_bonus": item.classification_bonus,
                "curation": entry.adjustment if entry else 0,
                "evidence_weight": entry.evidence_weight if entry else item.evidence_weight,
                "final_score": entry.final_score if entry else item.final_score,
                "included": item.included,
            }
        )
    return groups


def _processing_time(row: ServiceResult, answer: Mapping[str, Any]) -> float:
    """The row's processing_time, else the time the service reported in its answer, else 0."""
    if row.processing_time is not None:
        return float(row.processing_time)
    metadata = answer.get("metadata")
    reported = metadata.get("processing_time") if isinstance(metadata, Mapping) else None
    if isinstance(reported, int | float) and not isinstance(reported, bool):
        return float(reported)
    return 0.0
