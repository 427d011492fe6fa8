"""Harmony: the detector answers of one image → one merged box per object the detectors agree on.

Pure: plain data in, plain data out; imports only the stdlib, numpy and windmill.emoji. Which
services count as detectors (service_type "spatial") is the catalog's business, not this package's.
"""

from .config import HarmonyConfig
from .extract import Detection, DetectorResult
from .fusion import stored_score
from .geometry import overlap
from .pipeline import Harmonization, MergedBox, harmonize, harmonize_with_rejected

__all__ = [
    "Detection", "DetectorResult", "Harmonization", "HarmonyConfig", "MergedBox", "harmonize",
    "harmonize_with_rejected", "overlap", "stored_score",
]
