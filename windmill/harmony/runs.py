"""Runs of equal values in an array grouped by value (clusters laid out back to back): where each run starts and
how long it is. Written with slices rather than np.r_, np.append and np.diff, whose Python-level set-up cost more
than the arithmetic on an image's few dozen detections, and which harmony ran several times per image."""

from __future__ import annotations

import numpy as np


def run_starts(values: np.ndarray) -> np.ndarray:
    """Index of the first element of each run of equal values (as np.flatnonzero(np.r_[True, a[1:] != a[:-1]]):
    an empty array gives [0])."""
    first = np.ones(max(len(values), 1), dtype=bool)
    np.not_equal(values[1:], values[:-1], out=first[1:])
    return np.flatnonzero(first)


def run_sizes(starts: np.ndarray, count: int) -> np.ndarray:
    """Length of each run, given its starts and the length of the whole array (as np.diff(np.append(starts,
    count)))."""
    bounds = np.empty(len(starts) + 1, dtype=starts.dtype)
    bounds[:-1] = starts
    bounds[-1] = count
    return bounds[1:] - bounds[:-1]
