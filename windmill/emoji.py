"""Emoji normalisation shared by harmonization and voting, so one object never splits into two groups."""

from __future__ import annotations

import unicodedata

# Variation selectors, Mongolian free variation selectors and the zero-width joiner: presentation only.
_PRESENTATION = {chr(c) for c in range(0xFE00, 0xFE10)} | {"\u180b", "\u180c", "\u180d"}
_ZWJ = "\u200d"
# Fitzpatrick skin-tone modifiers carry no object identity either.
_SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}

PERSON = "\U0001f9d1"  # 🧑
# Every emoji that depicts one human being counts as the person class.
_PERSON_ALIASES = {
    "\U0001f9d1",  # 🧑 person
    "\U0001f469",  # 👩 woman
    "\U0001f468",  # 👨 man
    "\U0001f9d2",  # 🧒 child
    "\U0001f466",  # 👦 boy
    "\U0001f467",  # 👧 girl
    "\U0001f474",  # 👴 old man
    "\U0001f475",  # 👵 old woman
    "\U0001f9d3",  # 🧓 older person
    "\U0001f464",  # 👤 bust in silhouette
    "\U0001f476",  # 👶 baby
    "\U0001f471",  # 👱 person: blond hair
    "\U0001f9cd",  # 🧍 person standing
    "\U0001f6b6",  # 🚶 person walking
    "\U0001f3c3",  # 🏃 person running
    "\U0001f9ce",  # 🧎 person kneeling
}


def normalize_emoji(emoji: str | None) -> str:
    """Canonical grouping key of an emoji: no selectors or skin tones; ZWJ sequences keep their first
    component when it is a person (👨‍🍳 → 🧑), otherwise they stay whole without joiners."""
    if not emoji:
        return ""
    text = unicodedata.normalize("NFC", emoji.strip())
    components = [
        "".join(ch for ch in part if ch not in _PRESENTATION and ch not in _SKIN_TONES)
        for part in text.split(_ZWJ)
    ]
    components = [part for part in components if part]
    if not components:
        return ""
    if components[0] in _PERSON_ALIASES:
        return PERSON
    return "".join(components)


def is_person(emoji: str | None) -> bool:
    return normalize_emoji(emoji) == PERSON
