"""Step 4 of the V3 vote: the weight formula with its three bonuses, inclusion and ranking.

    spatial_bonus        = max(0, max_detection_count − 1)      with spatial evidence, else 0
    content_bonus        = semantic services − 1                 from `semantic_bonus_from` services on
    classification_bonus = classifying services − 1             from `classification_bonus_from` on
    evidence_weight      = max(0, votes + the three bonuses)
    final_score          = votes + evidence_weight
    included             ⇔ votes ≥ min_voters

Confidences take no part, as upstream. Ranking: votes desc, then evidence_weight desc, then the emoji
(reference: the order of first votes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from windmill.voting.config import VotingConfig
from windmill.voting.evidence import Evidence


@dataclass(frozen=True, slots=True)
class Weighed:
    """An emoji's evidence with its weight terms, before curation."""

    evidence: Evidence
    spatial_bonus: int
    content_bonus: int
    classification_bonus: int
    evidence_weight: int
    included: bool

    @property
    def final_score(self) -> int:
        return self.evidence.total_votes + self.evidence_weight


def weigh(evidence: Evidence, config: VotingConfig) -> Weighed:
    votes = evidence.total_votes
    spatial_bonus = max(0, evidence.spatial.max_detection_count - 1) if evidence.spatial else 0
    content_bonus = _bonus(evidence.semantic_count, config.semantic_bonus_from)
    classification_bonus = _bonus(evidence.classification_count, config.classification_bonus_from)
    weight = max(0, votes + spatial_bonus + content_bonus + classification_bonus)
    return Weighed(evidence, spatial_bonus, content_bonus, classification_bonus, weight, votes >= config.min_voters)


def rank(weighed: Iterable[Weighed], config: VotingConfig) -> list[Weighed]:
    """Every emoji in rank order; ties go by emoji (a stable order whatever the input order), or, in reference
    mode, by first vote."""

    def key(item: Weighed) -> tuple[int, int, str | int]:
        tie = item.evidence.emoji if config.ties_by_emoji else item.evidence.first_seen
        return -item.evidence.total_votes, -item.evidence_weight, tie

    return sorted(weighed, key=key)


def _bonus(count: int, start: int) -> int:
    return count - 1 if count >= start else 0
