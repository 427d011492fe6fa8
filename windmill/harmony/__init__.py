"""Harmony: the detector answers of one image → one merged box per object the detectors agree on.

Pure: plain data in, plain data out; imports only the stdlib, numpy and windmill.emoji. Which
services count as detectors (service_type "spatial") is the catalog's business, not this package's.

The names that need numpy load on first use (PEP 562): the settings read HarmonyConfig, and every command reads
the settings, so `windmill-cli submit` or `status` would otherwise import numpy at start for nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import HarmonyConfig
from .extract import Detection, DetectorResult

if TYPE_CHECKING:
    from .fusion import stored_score
    from .geometry import overlap
    from .pipeline import Harmonization, MergedBox, harmonize, harmonize_with_rejected

_ON_FIRST_USE = {
    "stored_score": ".fusion", "overlap": ".geometry", "Harmonization": ".pipeline", "MergedBox": ".pipeline",
    "harmonize": ".pipeline", "harmonize_with_rejected": ".pipeline",
}

__all__ = [
    "Detection", "DetectorResult", "Harmonization", "HarmonyConfig", "MergedBox", "harmonize",
    "harmonize_with_rejected", "overlap", "stored_score",
]


def __getattr__(name: str) -> Any:
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_ON_FIRST_USE[name], __name__), name)
    globals()[name] = value
    return value
