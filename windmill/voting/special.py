"""The special, non-competing detections: text (OCR), face and nsfw, reported beside the vote."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from windmill.voting.config import VotingConfig
from windmill.voting.curation import FACE, NSFW, PersonChecks
from windmill.voting.model import as_list, as_object

TEXT = "💬"
NOT_DETECTED: dict[str, Any] = {"detected": False}


def special_detections(
    answers: Mapping[str, Mapping[str, Any]], checks: PersonChecks, config: VotingConfig
) -> dict[str, dict[str, Any]]:
    """`answers` maps each service to the data of its latest success row."""
    return {
        "text": _text(answers.get("ocr"), config),
        "face": _face(answers.get("face"), checks, config),
        "nsfw": _nsfw(answers.get("nsfw2"), config),
    }


def _text(answer: Mapping[str, Any] | None, config: VotingConfig) -> dict[str, Any]:
    for prediction in _predictions(answer):
        if prediction.get("has_text"):
            confidence = _confidence(prediction.get("confidence"), config)
            return {"emoji": TEXT, "detected": True, "confidence": confidence, "content": prediction.get("text")}
    return dict(NOT_DETECTED)


def _nsfw(answer: Mapping[str, Any] | None, config: VotingConfig) -> dict[str, Any]:
    for prediction in _predictions(answer):
        if config.emoji_key(prediction.get("emoji")) == NSFW:
            return {"emoji": NSFW, "detected": True, "confidence": _confidence(prediction.get("confidence"), config)}
    return dict(NOT_DETECTED)


def _face(answer: Mapping[str, Any] | None, checks: PersonChecks, config: VotingConfig) -> dict[str, Any]:
    """The first face found in a person box (with whether a pose was found in the same box); else, as upstream,
    the first 🙂 of a whole-image face answer."""
    if checks.faces:
        finding = checks.faces[0]
        return {
            "emoji": FACE,
            "detected": True,
            "confidence": _confidence(finding.prediction.get("confidence"), config),
            "pose": any(box.merged_id == finding.box.merged_id for box in checks.poses),
            "cluster_id": finding.box.cluster_id,
        }
    for prediction in _predictions(answer):
        if config.emoji_key(prediction.get("emoji")) == FACE:
            found = {
                "emoji": FACE,
                "detected": True,
                "confidence": _confidence(prediction.get("confidence"), config),
                "pose": prediction.get("pose"),
            }
            if config.person_checks_from_boxes:
                found["cluster_id"] = None
            return found
    return dict(NOT_DETECTED)


def _predictions(answer: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    if not answer:
        return []
    return [prediction for raw in as_list(answer.get("predictions")) if (prediction := as_object(raw)) is not None]


def _confidence(value: Any, config: VotingConfig) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return config.special_confidence
    return float(value)
