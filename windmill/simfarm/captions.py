"""Captions (BLIP §3.1, ollama §3.2) from the sidecar, their emoji mappings, and caption scoring (§3.4)."""

from __future__ import annotations

from typing import Any

from windmill.simfarm import lexicon
from windmill.simfarm.annotations import Sidecar
from windmill.simfarm.determinism import unit

DEFAULT_PROMPT = "Briefly describe this image in a single short sentence."
DEFAULT_MODEL = "llava"
MAX_OLLAMA_CHARS = 4000


def _article(noun: str) -> str:
    return f"an {noun}" if noun[:1] in "aeiou" else f"a {noun}"


def _describe(sidecar: Sidecar) -> str | None:
    """A plain caption from the annotated objects, for sidecars that give none."""
    nouns = list(dict.fromkeys(obj.label for obj in sorted(sidecar.objects, key=lambda o: -(o.bbox[2] * o.bbox[3]))))
    if not nouns:
        return None
    if len(nouns) == 1:
        return f"a photo of {_article(nouns[0])}"
    return f"a photo of {_article(nouns[0])} and {_article(nouns[1])}"


def caption_text(service: str, sidecar: Sidecar | None, color_word: str) -> str:
    """The sidecar's caption for this service, else the other captioner's, else one made from what is known."""
    if sidecar is not None:
        other = "ollama" if service == "blip" else "blip"
        text = sidecar.captions.get(service) or sidecar.captions.get(other) or _describe(sidecar)
        if text:
            if service == "ollama" and text == sidecar.captions.get(other):
                text = text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")
            return text
    if service == "ollama":
        return f"The image is dominated by {color_word} tones, with no clear subject."
    return f"a photo with mostly {color_word} tones"


def emoji_mappings(text: str, *, lower_words: bool) -> list[dict[str, str]]:
    """One {word, emoji} per distinct token that maps (§3.1); ollama lower-cases the words."""
    mappings = []
    seen: set[str] = set()
    for token in lexicon.tokens_with_expressions(text):
        word = token.lower() if lower_words else token
        if word in seen:
            continue
        emoji = lexicon.emoji_for_word(token)
        if emoji:
            seen.add(word)
            mappings.append({"word": word, "emoji": emoji})
    return mappings


def blip_prediction(sidecar: Sidecar | None, color_word: str) -> dict[str, Any]:
    text = caption_text("blip", sidecar, color_word)
    return {"text": text, "emoji_mappings": emoji_mappings(text, lower_words=False)}


def ollama_prediction(sidecar: Sidecar | None, color_word: str) -> dict[str, Any]:
    text = caption_text("ollama", sidecar, color_word)
    if len(text) > MAX_OLLAMA_CHARS:
        text = text[:MAX_OLLAMA_CHARS] + "... [truncated]"
    prediction: dict[str, Any] = {"text": text}
    mappings = emoji_mappings(text, lower_words=True)
    if mappings:  # ollama omits an empty list; BLIP always sends it
        prediction["emoji_mappings"] = mappings
    return prediction


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


def _vocabulary(sidecar: Sidecar) -> set[str]:
    texts = [*sidecar.captions.values(), *sidecar.labels]
    for obj in sidecar.objects:
        texts += [obj.label, obj.clip, obj.imagenet or ""]
    words: set[str] = set()
    for text in texts:
        words.update(_singular(word) for word in lexicon.content_words(text.replace("_", " ")))
    return words


def similarity(caption: str, sidecar: Sidecar | None, digest: str) -> float:
    """A CLIP-like cosine score: 0.15–0.35, higher when the caption names what the image shows."""
    noise = unit(digest, "score", caption.lower()) - 0.5
    words = {_singular(word) for word in lexicon.content_words(caption)}
    if sidecar is None or not words:
        return round(0.17 + 0.03 * noise, 3)
    overlap = len(words & _vocabulary(sidecar)) / len(words)
    return round(0.17 + 0.15 * overlap + 0.02 * noise, 3)
