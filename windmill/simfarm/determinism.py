"""Deterministic chance: every simulated choice is a pure function of names (image digest, service, …).

Seeds come from BLAKE2b rather than `hash()`, which Python salts per process.
"""

from __future__ import annotations

import hashlib
import random


def _seed(parts: tuple[object, ...]) -> int:
    text = "\x1f".join(str(part) for part in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")


def stream(*parts: object) -> random.Random:
    """A random stream of its own for these names: the same names always draw the same numbers."""
    return random.Random(_seed(parts))


def unit(*parts: object) -> float:
    """One uniform draw in [0, 1) for these names."""
    return _seed(parts) / 2**64
