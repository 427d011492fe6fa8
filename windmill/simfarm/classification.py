"""Whole-image classification: CLIP's ranked labels (backend /analyze, `full_image`) and Xception's.

Candidates come from the sidecar (scene `labels`, then object labels by size); their scores fall off
with rank, spread per image, and leave part of the softmax mass to the thousands of other labels, so
CLIP confidences look like CLIP's (0.3 at best, a long tail down to 0.01).
"""

from __future__ import annotations

import math
from typing import Any

from windmill.simfarm import lexicon
from windmill.simfarm.annotations import Sidecar
from windmill.simfarm.determinism import unit

CLIP_THRESHOLD, CLIP_MAX = 0.01, 10
XCEPTION_THRESHOLD, XCEPTION_MAX = 0.15, 3


def _candidates(sidecar: Sidecar, attribute: str, *, objects_first: bool = False) -> list[str]:
    """Scene labels and object names (largest object first), deduplicated case-insensitively."""
    by_size = sorted(sidecar.objects, key=lambda obj: -(obj.bbox[2] * obj.bbox[3]))
    object_names = [getattr(obj, attribute) for obj in by_size]
    names = [*object_names, *sidecar.labels] if objects_first else [*sidecar.labels, *object_names]
    seen: dict[str, str] = {}
    for name in names:
        if name:
            seen.setdefault(name.lower(), name)
    return list(seen.values())


def clip_ranking(sidecar: Sidecar | None, digest: str) -> list[tuple[str, float]]:
    """(label with spaces, softmax confidence), best first, as the CLIP backend ranks them."""
    if sidecar is None:
        return []
    labels = _candidates(sidecar, "clip")
    weights = [math.exp(-0.5 * rank) * (0.75 + 0.5 * unit(digest, "clip", label)) for rank, label in enumerate(labels)]
    mass = sum(weights) * 1.6  # the other labels of the 1,733 share the rest
    scored = sorted(((label, w / mass) for label, w in zip(labels, weights, strict=True)), key=lambda p: -p[1])
    return [(label, round(score, 3)) for label, score in scored if score >= CLIP_THRESHOLD][:CLIP_MAX]


def clip_backend_predictions(sidecar: Sidecar | None, digest: str) -> list[dict[str, Any]]:
    """CLIP `/analyze` (§3.3): `emoji` only when the label (spaces → `_`) maps."""
    predictions = []
    for label, confidence in clip_ranking(sidecar, digest):
        prediction: dict[str, Any] = {"label": label, "confidence": confidence}
        emoji = lexicon.emoji_underscored(label)
        if emoji:
            prediction["emoji"] = emoji
        predictions.append(prediction)
    return predictions


def clip_full_image(sidecar: Sidecar | None, digest: str) -> list[dict[str, Any]]:
    """CLIP_detection's `full_image`: every CLIP prediction, labels lower-cased with `_`, emoji or ""."""
    entries = []
    for label, confidence in clip_ranking(sidecar, digest):
        name = label.lower().replace(" ", "_")
        entries.append({"label": name, "emoji": lexicon.emoji_underscored(name) or "", "confidence": confidence})
    return entries


def xception_full_image(sidecar: Sidecar | None, digest: str) -> list[dict[str, Any]]:
    """xception_detection's `full_image`: ImageNet-style labels over 0.15, first per emoji (§3.6)."""
    if sidecar is None:
        return []
    # ImageNet has classes for things, not scenes: the objects' labels rank first.
    labels = [name.lower().replace(" ", "_") for name in _candidates(sidecar, "imagenet", objects_first=True)]
    entries: list[dict[str, Any]] = []
    seen_emoji: set[str] = set()
    confidence = 0.3 + 0.55 * unit(digest, "xception", "top")
    for rank, label in enumerate(labels):
        if rank:
            confidence *= 0.3 + 0.4 * unit(digest, "xception", label)
        if confidence < XCEPTION_THRESHOLD or len(entries) == XCEPTION_MAX:
            break
        emoji = lexicon.emoji_underscored(label, singular=True) or ""
        if emoji in seen_emoji:
            continue
        seen_emoji.add(emoji)
        entries.append({"label": label, "emoji": emoji, "confidence": round(confidence, 3)})
    return entries
