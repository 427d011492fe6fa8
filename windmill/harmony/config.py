"""Every threshold and switch of harmonization in one frozen value, so a run can be named and repeated."""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

Fusion = Literal["weighted", "union"]
FUSIONS: tuple[str, ...] = ("weighted", "union")


@dataclass(frozen=True, slots=True)
class HarmonyConfig:
    """Defaults are the improved algorithm; `HarmonyConfig.reference()` gives the reference's numbers.

    iou_threshold: two boxes of one class link when IoU is strictly greater (reference: 0.3).
    containment_threshold: ... or when intersection / smaller area is at least this; None disables
        (upstream 346451a used 0.8; the reference had no such rule).
    min_services: a cluster that this many distinct services agree on is kept whatever its confidence.
    single_service_min_confidence: a cluster with fewer services survives only if its best
        confidence reaches this (reference: 0.85; 0.0 keeps every box, as upstream 4a60a06 did).
    fusion: "weighted" = confidence-weighted mean of each edge; "union" = the reference's envelope.
    split_crowds: when one service has two separate boxes in one cluster, split the cluster around
        them instead of keeping only the best one (the reference's crowd weakness, §13.12).
    emoji_from_labels: a box without emoji takes the emoji that another box of the same image gives
        the same label (yolov8 has no emoji for "dining table", detectron2 has one).
    """

    iou_threshold: float = 0.3
    containment_threshold: float | None = 0.8
    min_services: int = 2
    single_service_min_confidence: float = 0.85
    fusion: Fusion = "weighted"
    split_crowds: bool = True
    emoji_from_labels: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.iou_threshold, int | float) and 0.0 <= self.iou_threshold < 1.0):
            raise ValueError(f"iou_threshold must be in [0, 1), got {self.iou_threshold!r}")
        containment = self.containment_threshold
        if containment is not None and not (isinstance(containment, int | float) and 0.0 < containment <= 1.0):
            raise ValueError(f"containment_threshold must be in (0, 1] or None, got {containment!r}")
        if not (isinstance(self.min_services, int) and self.min_services >= 1):
            raise ValueError(f"min_services must be an integer >= 1, got {self.min_services!r}")
        single = self.single_service_min_confidence
        if not (isinstance(single, int | float) and math.isfinite(single)):
            raise ValueError(f"single_service_min_confidence must be a number, got {single!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")

    @classmethod
    def reference(cls) -> HarmonyConfig:
        """The reference merger's thresholds and union box, for parity checks.

        Grouping (emoji normalisation, label fallback) and union-find clustering stay on: they are
        what makes the result independent of input order, which the reference never was.
        """
        return cls(
            iou_threshold=0.3,
            containment_threshold=None,
            min_services=2,
            single_service_min_confidence=0.85,
            fusion="union",
            split_crowds=False,
        )

    def with_changes(self, **changes: Any) -> HarmonyConfig:
        return replace(self, **changes)

    @property
    def algorithm(self) -> str:
        """Name stored in merged_data, so rows made by different settings can be told apart."""
        return f"union_find_{self.fusion}_v1"

    def params(self) -> dict[str, Any]:
        return dict(_params(self))  # a copy: the caller may change it


@functools.lru_cache(maxsize=16)
def _params(config: HarmonyConfig) -> dict[str, Any]:
    """The settings as a dict, made once per configuration: every merged box records them, and `asdict` copies
    field by field (about 7 µs a box)."""
    return asdict(config)
