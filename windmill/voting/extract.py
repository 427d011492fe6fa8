"""Step 1 of the V3 vote: which rows count, and the votes each service's answer and each merged box casts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from windmill.voting.config import VotingConfig
from windmill.voting.model import MergedBox, ServiceResult, Vote, as_list, as_object

SUCCESS = "success"


def latest_success_rows(results: Iterable[ServiceResult]) -> tuple[list[ServiceResult], list[int]]:
    """The latest success row per service (by created, then result_id), sorted by service, and the ids of the
    success rows they supersede: retries and resubmissions must never vote, or be counted, twice."""
    latest: dict[str, ServiceResult] = {}
    superseded: list[int] = []
    for row in results:
        if row.status != SUCCESS:
            continue
        held = latest.get(row.service)
        if held is None:
            latest[row.service] = row
        elif (row.created, row.result_id) > (held.created, held.result_id):
            superseded.append(held.result_id)
            latest[row.service] = row
        else:
            superseded.append(row.result_id)
    return [latest[name] for name in sorted(latest)], sorted(superseded)


def evidence_type(service: str, service_types: Mapping[str, Sequence[str]]) -> str:
    """The first item of the service's service_type, as upstream; a service missing from it is `other`."""
    types = service_types.get(service)
    if isinstance(types, str):  # the catalog file's own spelling: "spatial,classification"
        types = [part.strip() for part in types.split(",") if part.strip()]
    return types[0] if types else "other"


def service_votes(service: str, answer: Mapping[str, Any], kind: str, config: VotingConfig) -> list[Vote]:
    """The votes of one service's answer: at most one per emoji from its predictions (caption word mappings
    win over the prediction's own emoji), then its full_image labels as classification votes."""
    predictions = as_list(answer.get("predictions"))
    full_image = as_list(answer.get("full_image"))
    if not predictions and not config.full_image_without_predictions:
        return []  # reference: an empty predictions list silenced the service's full_image too
    display = config.display_name(service)
    key = config.emoji_key
    votes: list[Vote] = []
    seen: set[str] = set()
    for raw in predictions:
        prediction = as_object(raw)
        if prediction is None:
            continue
        mappings = as_list(prediction.get("emoji_mappings"))
        if mappings:
            for mapping in mappings:
                if not isinstance(mapping, Mapping):
                    continue
                emoji = key(mapping.get("emoji"))
                if emoji and emoji not in seen:
                    seen.add(emoji)
                    context = {"word": mapping.get("word"), "source": "caption_mapping"}
                    votes.append(
                        Vote(emoji, display, kind, config.caption_confidence, context, bool(mapping.get("shiny")))
                    )
            continue
        emoji = key(prediction.get("emoji"))
        if emoji and emoji not in seen and prediction.get("type") != "color_analysis":
            seen.add(emoji)
            confidence = _confidence(prediction.get("confidence"), config.caption_confidence)
            context = _prediction_context(service, prediction)
            votes.append(Vote(emoji, display, kind, confidence, context, bool(prediction.get("shiny"))))
    # Reference: a full_image label was lost when the service had already voted the emoji with a box.
    classified = set() if config.full_image_beside_boxed_vote else seen
    for raw in full_image:
        item = as_object(raw)
        if item is None:
            continue
        emoji = key(item.get("emoji"))
        if emoji and emoji not in classified:
            classified.add(emoji)
            confidence = _confidence(item.get("confidence"), config.caption_confidence)
            context = {"source": "full_image_classification", "label": item.get("label")}
            votes.append(Vote(emoji, display, "classification", confidence, context, bool(item.get("shiny"))))
    return votes


def spatial_votes(boxes: Iterable[MergedBox], config: VotingConfig) -> list[Vote]:
    """One spatial vote per merged box that at least `min_box_detections` services agree on."""
    return [
        Vote(
            box.emoji,
            config.spatial_voter,
            "spatial",
            box.avg_confidence,
            {"source": "merged_box", "cluster_id": box.cluster_id, "merged_id": box.merged_id},
            False,
            box,
        )
        for box in boxes
        if box.emoji and box.detection_count >= config.min_box_detections
    ]


def _confidence(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return float(value)


def _prediction_context(service: str, prediction: Mapping[str, Any]) -> dict[str, Any]:
    """What a specialist adds to its vote, as upstream recorded it."""
    if service == "face":
        return {"pose": prediction.get("pose")}
    if service == "nsfw2":
        return {"nsfw_confidence": prediction.get("confidence")}
    if service == "ocr":
        return {"text_detected": prediction.get("has_text"), "text_content": prediction.get("text")}
    return {}
