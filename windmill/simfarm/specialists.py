"""The specialists that always answer one prediction: OCR (§3.14) and NSFW2 (§3.15)."""

from __future__ import annotations

import re
from typing import Any

from windmill.simfarm import lexicon
from windmill.simfarm.annotations import Sidecar
from windmill.simfarm.determinism import stream

OCR_EMOJI = "💬"
NSFW_EMOJI = "🔞"
MAX_OCR_WORDS = 20
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([,.;:!?])")


def ocr_prediction(sidecar: Sidecar | None, digest: str) -> dict[str, Any]:
    """Text lines from the sidecar, read back with a little box noise; no top-level confidence (df57b25)."""
    rng = stream(digest, "ocr")
    regions = []
    for line in sidecar.text if sidecar else ():
        x, y, w, h = line.bbox
        dx, dy = rng.gauss(0, 0.02) * w, rng.gauss(0, 0.05) * h
        regions.append({
            "text": line.text,
            "confidence": round(rng.uniform(0.82, 0.995), 3),
            "bbox": {"x": round(x + dx), "y": round(y + dy), "width": max(1, round(w * rng.uniform(0.97, 1.03))),
                     "height": max(1, round(h * rng.uniform(0.95, 1.05)))},
        })
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(str(region["text"]) for region in regions)).strip()
    has_text = len(text) >= 3
    mappings: list[dict[str, str]] = []
    for word in list(dict.fromkeys(lexicon.content_words(text)))[:MAX_OCR_WORDS]:
        emoji = lexicon.emoji_for_word(word)
        if emoji:
            mappings.append({"word": word, "emoji": emoji})
    return {
        "text": text,
        "has_text": has_text,
        "emoji": OCR_EMOJI if has_text else "",
        "text_regions": regions,
        "emoji_mappings": mappings,
    }


def nsfw_prediction(sidecar: Sidecar | None, digest: str, threshold_percent: float = 50.0) -> dict[str, Any]:
    """The verdict and the confidence *in the verdict* (p if flagged, else 1 − p)."""
    rng = stream(digest, "nsfw2")
    flagged_truth = bool(sidecar and sidecar.nsfw)
    probability = rng.uniform(0.72, 0.99) if flagged_truth else rng.uniform(0.002, 0.09)
    nsfw = probability * 100 > threshold_percent
    return {
        "confidence": round(probability if nsfw else 1 - probability, 3),
        "emoji": NSFW_EMOJI if nsfw else "",
        "nsfw": nsfw,
    }
