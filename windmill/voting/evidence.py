"""Steps 2 and 3 of the V3 vote: group the votes by emoji and sum up the evidence behind each emoji."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from windmill.voting.model import MergedBox, Vote


@dataclass(frozen=True, slots=True)
class SpatialEvidence:
    """The merged boxes (each agreed by several detectors) that carry the emoji."""

    boxes: tuple[MergedBox, ...]

    @property
    def service_count(self) -> int:
        return sum(box.detection_count for box in self.boxes)

    @property
    def max_detection_count(self) -> int:
        return max(box.detection_count for box in self.boxes)

    @property
    def avg_confidence(self) -> float:
        return sum(box.avg_confidence for box in self.boxes) / len(self.boxes)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Everything voted for one emoji; `first_seen` is the index of its first vote (the reference tie-break)."""

    emoji: str
    first_seen: int
    votes: tuple[Vote, ...]
    services: tuple[str, ...]  # distinct voters, sorted; the spatial pseudo-voter counts, as upstream
    spatial: SpatialEvidence | None
    semantic_words: tuple[str, ...]
    semantic_sources: tuple[str, ...]
    classification_sources: tuple[str, ...]
    specialized: tuple[str, ...]  # lower-cased display names of the specialist voters, sorted
    shiny: bool

    @property
    def total_votes(self) -> int:
        return len(self.services)

    @property
    def semantic_count(self) -> int:
        return len(self.semantic_sources)

    @property
    def classification_count(self) -> int:
        return len(self.classification_sources)

    @property
    def instance_count(self) -> int:
        """Merged boxes behind the emoji; 1 for an emoji seen without a box (the reference's non_spatial)."""
        return len(self.spatial.boxes) if self.spatial else 1


def group_votes(votes: Iterable[Vote]) -> list[Evidence]:
    """One Evidence per emoji, in first-vote order (the ranking decides the final order)."""
    groups: dict[str, list[Vote]] = {}
    for vote in votes:
        groups.setdefault(vote.emoji, []).append(vote)
    order = {emoji: index for index, emoji in enumerate(groups)}
    return [_evidence(emoji, order[emoji], group) for emoji, group in groups.items()]


def _evidence(emoji: str, first_seen: int, votes: list[Vote]) -> Evidence:
    boxes: list[MergedBox] = []
    words: list[str] = []
    semantic: dict[str, None] = {}
    classification: dict[str, None] = {}
    specialized: set[str] = set()
    for vote in votes:
        if vote.box is not None:
            boxes.append(vote.box)
        kind = vote.evidence_type
        if kind == "semantic":
            semantic[vote.service] = None
            word = vote.context.get("word")
            if word:
                words.append(str(word))
        elif kind == "classification":
            classification[vote.service] = None
        elif kind == "specialized":
            specialized.add(vote.service.lower())
    boxes.sort(key=lambda box: box.merged_id)
    return Evidence(
        emoji=emoji,
        first_seen=first_seen,
        votes=tuple(votes),
        services=tuple(sorted({vote.service for vote in votes})),
        spatial=SpatialEvidence(tuple(boxes)) if boxes else None,
        semantic_words=tuple(words),
        semantic_sources=tuple(semantic),
        classification_sources=tuple(classification),
        specialized=tuple(sorted(specialized)),
        shiny=any(vote.shiny for vote in votes),
    )
