"""Voting: the V3 emoji consensus of one image from all its service answers and merged boxes (pure, no I/O).

The reference's algorithm (spec/reference-behaviour.md §8), with its marked bugs fixed on purpose;
`VotingConfig.reference()` switches each fix back off for parity checks. Fixed here:

- full_image classification votes of a service whose `predictions` list is empty are kept (upstream dropped them).
- full_image classification evidence is kept when the same service also voted that emoji with a box (still one
  vote per service per emoji; upstream lost the classification).
- face and pose confirmation read the face/pose postprocessing rows of this image's person boxes (upstream read
  them from `results`, where they never are, so the rules could never fire); `special.face` likewise.
- `bounding_boxes` carry their `cluster_id`, `merged_id`, first label and detections (upstream: null, emoji, []).
- every list has a deterministic order: services sorted, boxes by merged_id, ties ranked by emoji (upstream:
  set order, and first-vote order on ties).
- `total_processing_time` is really summed: the row's processing_time, else the answer's
  `metadata.processing_time` (upstream summed NULLs: always 0).
- duplicate result rows are never counted twice: only the latest success row per service (by created, then
  result_id) votes and counts in services_count/services_list/total_processing_time.
- emoji are grouped by `windmill.emoji.normalize_emoji` (🏞️ = 🏞, 👩 = 🧑), as harmony groups them.
"""

from windmill.voting.config import VotingConfig
from windmill.voting.consensus import CONSENSUS_ALGORITHM, compute_consensus
from windmill.voting.extract import latest_success_rows, service_votes, spatial_votes
from windmill.voting.model import MergedBox, MergedBoxRow, PostprocessingRow, ServiceResult, Vote

__all__ = [
    "CONSENSUS_ALGORITHM",
    "MergedBox",
    "MergedBoxRow",
    "PostprocessingRow",
    "ServiceResult",
    "Vote",
    "VotingConfig",
    "compute_consensus",
    "latest_success_rows",
    "service_votes",
    "spatial_votes",
]
