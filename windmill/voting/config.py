"""Voting thresholds, and one switch per reference bug: fixed by default, reference behaviour on request."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from windmill.emoji import normalize_emoji

# The reference's display names (§8.2); every other service votes under its own name.
REFERENCE_DISPLAY_NAMES = (("yolov8", "yolo"), ("nsfw2", "nsfw"), ("ollama", "llama"), ("inception_v3", "inception"))


@dataclass(frozen=True)
class VotingConfig:
    """Every number of the V3 vote, defaulting to the reference values, plus the bug-fix switches.

    `VotingConfig()` fixes the reference's marked bugs; `VotingConfig.reference()` reproduces them, so the two
    can be compared on the same image.
    """

    min_voters: int = 2  # an emoji is listed when this many distinct voters agree
    min_box_detections: int = 2  # a merged box is a spatial vote when this many services saw it
    semantic_bonus_from: int = 2  # content bonus = semantic services − 1, from this many on
    classification_bonus_from: int = 2  # classification bonus = classifiers − 1, from this many on
    caption_confidence: float = 0.75  # recorded on caption-mapped votes; never scored
    special_confidence: float = 1.0  # special detections without a confidence of their own
    face_bonus: int = 1
    pose_bonus: int = 1
    nsfw_with_person_bonus: int = 1
    nsfw_without_person_penalty: int = 1
    display_names: tuple[tuple[str, str], ...] = REFERENCE_DISPLAY_NAMES
    spatial_voter: str = "merged_boxes"  # the pseudo-service under which merged boxes vote (a voter, as upstream)
    non_voting_services: tuple[str, ...] = ("caption_score",)  # and their `<name>_<x>` variants

    # Bug fixes (True) or reference behaviour (False), one switch each.
    normalize_emoji: bool = True  # group 🏞️/🏞 and 👩/🧑 together (windmill.emoji)
    full_image_without_predictions: bool = True  # keep full_image votes of a service with empty predictions
    full_image_beside_boxed_vote: bool = True  # keep classification evidence when the service also boxed it
    person_checks_from_boxes: bool = True  # face/pose curation and special.face from person-box crops
    boxes_carry_cluster_id: bool = True  # bounding_boxes name their cluster, labels and detections
    ties_by_emoji: bool = True  # equal (votes, weight) rank by emoji, not by which vote came first

    @classmethod
    def reference(cls, **overrides: Any) -> VotingConfig:
        """The reference (ba7f5a8) behaviour, bugs included: for parity checks against its outputs."""
        fixed_off = {
            "normalize_emoji": False,
            "full_image_without_predictions": False,
            "full_image_beside_boxed_vote": False,
            "person_checks_from_boxes": False,
            "boxes_carry_cluster_id": False,
            "ties_by_emoji": False,
        }
        return replace(cls(), **{**fixed_off, **overrides})

    def display_name(self, service: str) -> str:
        for name, display in self.display_names:
            if name == service:
                return display
        return service

    def votes_for(self, service: str) -> bool:
        """Caption-score answers describe a caption, not the image: they never vote."""
        return not any(service == name or service.startswith(f"{name}_") for name in self.non_voting_services)

    def emoji_key(self, emoji: Any) -> str:
        """The grouping key: the normalised emoji, or (reference) the raw string."""
        if not emoji or not isinstance(emoji, str):
            return ""
        return _normalized(emoji) if self.normalize_emoji else emoji


# The same few hundred emoji strings come back on every image: normalise each once.
_normalized = lru_cache(maxsize=4096)(normalize_emoji)
