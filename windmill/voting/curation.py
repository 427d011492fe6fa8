"""Step 5 of the V3 vote: ±1 curation of the ranked list by face, pose and person context (not re-sorted).

Upstream looked for face and pose among the image's *results*, where they never are: the face and pose
services only ever see crops of person boxes, and their answers land in `postprocessing`. Here a face or
pose found in a crop of one of this image's person boxes is the evidence (`person_checks_from_boxes`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from windmill.emoji import PERSON, is_person
from windmill.voting.config import VotingConfig
from windmill.voting.extract import SUCCESS
from windmill.voting.model import MergedBox, PostprocessingRow, as_list, as_object
from windmill.voting.weights import Weighed

FACE = "🙂"
NSFW = "🔞"
FACE_SERVICE = "face"
POSE_SERVICE = "pose"


@dataclass(frozen=True, slots=True)
class FaceFinding:
    """A face found in the crop of a person box: the box and the first face of the answer."""

    box: MergedBox
    prediction: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PersonChecks:
    """What the face and pose services found in this image's person boxes, in merged_id order."""

    faces: tuple[FaceFinding, ...] = ()
    poses: tuple[MergedBox, ...] = ()


def person_checks(
    boxes: Iterable[MergedBox], postprocessing: Iterable[PostprocessingRow], config: VotingConfig
) -> PersonChecks:
    """Faces and poses found on person boxes: the latest success face/pose row of each person box of this
    image (rows of replaced boxes, failed calls and empty answers prove nothing)."""
    if not config.person_checks_from_boxes:
        return PersonChecks()
    people = {box.merged_id: box for box in boxes if is_person(box.emoji)}
    latest: dict[tuple[int, str], PostprocessingRow] = {}
    for row in postprocessing:
        if row.status != SUCCESS or row.service not in (FACE_SERVICE, POSE_SERVICE) or row.merged_box_id not in people:
            continue
        slot = (row.merged_box_id, row.service)
        held = latest.get(slot)
        if held is None or row.postprocessing_id > held.postprocessing_id:
            latest[slot] = row
    faces: list[FaceFinding] = []
    poses: list[MergedBox] = []
    for box_id in sorted(people):
        face = _first_prediction(latest.get((box_id, FACE_SERVICE)))
        if face is not None:
            faces.append(FaceFinding(people[box_id], face))
        if _first_prediction(latest.get((box_id, POSE_SERVICE))) is not None:
            poses.append(people[box_id])
    return PersonChecks(tuple(faces), tuple(poses))


@dataclass(frozen=True, slots=True)
class Curated:
    """A listed emoji after curation: the adjustment and why."""

    weighed: Weighed
    adjustment: int
    validation: tuple[str, ...]

    @property
    def evidence_weight(self) -> int:
        return max(0, self.weighed.evidence_weight + self.adjustment)

    @property
    def final_score(self) -> int:
        return max(0, self.weighed.final_score + self.adjustment)


def curate(listed: list[Weighed], checks: PersonChecks, config: VotingConfig) -> list[Curated]:
    """Person +1 when a face confirms it, +1 when a pose does; 🔞 +1 beside a listed person, −1 without one.

    The reference rules stay too (🙂 listed; `pose` among a listed emoji's specialists), so the fixed mode only
    adds evidence; in reference mode they are the only rules, and the face and pose ones can never fire.
    """
    present = {item.evidence.emoji for item in listed}
    face_seen = bool(checks.faces) or FACE in present
    pose_seen = bool(checks.poses) or any("pose" in item.evidence.specialized for item in listed)
    curated = []
    for item in listed:
        adjustment = 0
        validation: list[str] = []
        if item.evidence.emoji == PERSON:
            if face_seen:
                adjustment += config.face_bonus
                validation.append("face_confirmed")
            if pose_seen:
                adjustment += config.pose_bonus
                validation.append("pose_confirmed")
        elif item.evidence.emoji == NSFW:
            if PERSON in present:
                adjustment += config.nsfw_with_person_bonus
                validation.append("human_context_confirmed")
            else:
                adjustment -= config.nsfw_without_person_penalty
                validation.append("suspicious_no_humans")
        curated.append(Curated(item, adjustment, tuple(validation)))
    return curated


def _first_prediction(row: PostprocessingRow | None) -> Mapping[str, Any] | None:
    if row is None:
        return None
    data = as_object(row.data) or {}
    for raw in as_list(data.get("predictions")):
        prediction = as_object(raw)
        if prediction is not None:
            return prediction
    return None
