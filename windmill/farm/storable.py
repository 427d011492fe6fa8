"""An answer made fit for jsonb, which holds what JSON can say but not all of it: no NaN or infinity, no NUL
character, no lone surrogate (not UTF-8), and no integer beyond 64 bits (orjson, which writes the jsonb here:
windmill/db/jsonb.py). What jsonb refuses would fail the answer's write on every attempt, and the task would end
with no row."""

from __future__ import annotations

import math
from typing import Any

import orjson

from windmill.db.jsonb import dumps as jsonb_text

_INT64 = range(-(2**63), 2**63)


class NotWritable(ValueError):
    """The jsonb writer refuses the value (what is said is why)."""


def storable(value: Any, where: str, notes: list[str]) -> Any:
    """The value fit for jsonb: non-finite floats and integers beyond 64 bits become null, NUL characters vanish, a
    lone surrogate becomes U+FFFD (in a copy, noting the numbers). Most answers have none of them: checking costs a
    third of copying (which names every node's path for the notes), so a value that passes the check is kept as it
    is."""
    if _fit_for_jsonb(value):
        return value
    return _storable_copy(value, where, notes)


def fit_as_read_by_orjson(text: bytes) -> bool:
    """Whether the value orjson read from this JSON text holds nothing storable() would change, so that the walk
    checking it can be spared (it cost 40 µs for a detector's answer and 150 for a pose answer, where this costs
    well under one). orjson refuses NaN and infinity (the literals, and numbers past a double's range) and lone
    surrogates; JSON's keys are strings; parse_answer_json leaves a run of 20 digits (an integer beyond 64 bits) to
    json. Only a NUL character comes through, and in JSON text only as the escape \\u0000 (a raw control character
    is not JSON): a text holding that escape, even as an escaped backslash's letters, is walked. (One difference
    from the walk: an integer of 19 digits past 2^63, which orjson reads exactly and writes, is kept where the walk
    would null it.)"""
    return b"\\u0000" not in text


def check_writable(value: Any) -> None:
    """Raise NotWritable when the jsonb writer refuses `value` although it passed storable(): orjson writes 255
    levels of nesting at most, where the walk reaches about a thousand and orjson reads 1,024 (a non-finite float a
    normalisation computed is written as null, as storable() makes it). One serialisation: about a tenth of the
    walk's cost."""
    try:
        jsonb_text(value)
    except orjson.JSONEncodeError as problem:
        reason = "nested too deeply" if "recursion" in str(problem).lower() else str(problem)
        raise NotWritable(f"not storable as jsonb: {reason}") from None


def _fit_for_jsonb(value: Any) -> bool:
    """Nothing in `value` needs _storable_copy: only JSON types (str keys), no non-finite float, no NUL, no lone
    surrogate (a "\\ud800" escape: not UTF-8), no integer beyond 64 bits (orjson writes the jsonb)."""
    kind = type(value)
    if kind is str:
        return _fit_text(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _fit_text(key) or not _fit_for_jsonb(item):
                return False
        return True
    if kind is list:
        return all(map(_fit_for_jsonb, value))
    if kind is float:
        return math.isfinite(value)
    if kind is int:
        return value in _INT64
    return kind is bool or value is None


def _fit_text(text: str) -> bool:
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _storable_copy(value: Any, where: str, notes: list[str]) -> Any:
    """A deep copy fit for jsonb: non-finite floats become null, NUL characters vanish."""
    if isinstance(value, dict):
        return {_strip_nul(str(key)): _storable_copy(item, f"{where}.{key}", notes) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_storable_copy(item, f"{where}[{index}]", notes) for index, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        notes.append(f"{where}: {value} replaced by null")
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT64:
        notes.append(f"{where}: an integer of {len(str(abs(value)))} digits replaced by null")
        return None
    if isinstance(value, str):
        return _strip_nul(value)
    return value


def _strip_nul(text: str) -> str:
    """Without NUL characters, and with a lone surrogate (not UTF-8: jsonb cannot hold it) as U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if _fit_text(text):
        return text
    return "".join("\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char for char in text)
